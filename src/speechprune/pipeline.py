"""The main job behind ``speechprune run``: (prune, export,) evaluate and benchmark, then write a short report.

Each stage writes into its own sub-folder of ``out`` and is skipped on a rerun when its result is already
there (evaluation resumes per utterance), so a killed run loses nothing already computed:

    out/prune/        the pruned model per step (with a recipe)
    out/onnx-int8/    the pruned model exported to ONNX Runtime, int8 (with a recipe, unless export is off)
    out/eval/<name>/  metrics.json + hypotheses.jsonl per evaluated model; <name>/ood/ the same on the
                      out-of-domain suite (english-ood), shown beside the in-domain figure in the report
    out/bench/        bench.json: every model side by side, plus faster-whisper int8 on the original files
    out/report.md, out/report.json
"""

from __future__ import annotations

import json
from pathlib import Path

from .bench.latency import BenchOptions, benchmark
from .data.datasets import load_dataset
from .errors import ConfigError
from .evaluate.backends import load_backend
from .evaluate.runner import evaluate_with_ood
from .io import atomic_write_json
from .models.decoding import DecodeOptions
from .report.summary import write_report


def main_job(model: str, data: str, split: str, threads: int, bench_utterances: int, out: Path,
             recipe: str | Path | None = None, export: bool = True, prune_device: str = "cpu",
             ood_per_source: int | None = None, numerics: str = "auto") -> Path:
    """Evaluate ``model`` (and, with ``recipe``, its pruned version, in PyTorch and, with ``export``, exported to
    ONNX Runtime int8) on ``data``/``split``; benchmark them side by side with faster-whisper int8 on the original
    files; returns the Markdown report's path. Every model is also scored on the out-of-domain suite (all of it, or
    the first ``ood_per_source`` of each source). ``prune_device`` is where pruning and recovery run; evaluation and
    timing run on the CPU, the PyTorch models in ``numerics`` (``auto``: what this CPU runs fastest per part, the same
    for evaluation and timing)."""
    import torch

    from .models.registry import BUNDLED_MODELS

    torch.set_num_threads(threads)
    out = Path(out)
    utts = load_dataset(data, split)
    options = DecodeOptions()
    dense = load_backend(model, "torch", name="torch", numerics=numerics)
    backends, metrics = [dense], {}
    metrics["torch"] = evaluate_with_ood(dense, utts, out / "eval" / "dense", model, data, split, options,
                                         ood_per_source=ood_per_source)
    if recipe is not None:
        from .prune.recipe import load_recipe
        from .prune.run import run_prune
        from .prune.runner import final_model_dir

        r = load_recipe(recipe)
        if (out / "prune" / "model.txt").exists():
            before = json.loads((out / "prune" / "prune.json").read_text(encoding="utf-8"))
            if not _same_recipe(before.get("recipe"), r) or before.get("model") != model:
                raise ConfigError("holds a model pruned with another recipe or model; use another --out", out)
        else:
            run_prune(model, r, out / "prune", device=prune_device)
        pruned = load_backend(str(final_model_dir(out / "prune")), "torch", name="torch-pruned", numerics=numerics)
        backends.append(pruned)
        metrics["torch-pruned"] = evaluate_with_ood(pruned, utts, out / "eval" / "pruned",
                                                    str(final_model_dir(out / "prune")), data, split, options,
                                                    ood_per_source=ood_per_source)
        if export:
            from .export.onnx import MANIFEST, export_onnx

            onnx_dir = out / "onnx-int8"
            if not (onnx_dir / MANIFEST).exists():
                export_onnx(final_model_dir(out / "prune"), onnx_dir, quantize="auto", overwrite=True)
            exported = load_backend(str(onnx_dir), "onnx", threads=threads, name="onnx-int8-pruned")
            backends.append(exported)
            metrics[exported.name] = evaluate_with_ood(exported, utts, out / "eval" / "onnx-int8-pruned",
                                                       str(onnx_dir), data, split, options,
                                                       ood_per_source=ood_per_source)

    bench_path = out / "bench" / "bench.json"
    settings = {"model": model, "data": data, "split": split, "recipe": str(recipe) if recipe else None,
                "threads": threads, "bench_utterances": bench_utterances,
                "backend_names": [b.name for b in backends],
                "numerics": {b.name: {part: c["dtype"] for part, c in b.numerics.items()} for b in backends}}
    record = json.loads(bench_path.read_text(encoding="utf-8")) if bench_path.exists() else {}
    if model in BUNDLED_MODELS:  # the peer: the original CTranslate2 files through faster-whisper, scored too
        peer = load_backend(model, "faster-whisper", compute_type="int8", threads=threads)
        metrics[peer.name] = evaluate_with_ood(peer, utts, out / "eval" / peer.name, model, data, split, options,
                                               ood_per_source=ood_per_source)
    if record.get("settings") != settings:  # none yet, or made with other settings: time again
        if model in BUNDLED_MODELS:
            backends.append(peer)
        record = benchmark(backends, utts, options, BenchOptions(max_utterances=bench_utterances), threads=threads)
        record.update(settings, settings=settings)
        atomic_write_json(bench_path, record)
    name = Path(recipe).name.removesuffix(".yaml").removesuffix(".yml") if recipe else None  # "tiny.en-fast": no stem
    title = f"speechprune: {model}{f' pruned with {name}' if name else ''} on {data} ({split})"
    return write_report(out, record, metrics, title=title)


def _same_recipe(stored, recipe) -> bool:
    """Whether a recipe recorded by an earlier run is ``recipe``, read through today's schema (so a field added
    since, with its default, does not make an old run look different)."""
    from .prune.recipe import parse_recipe

    try:
        return parse_recipe(stored) == recipe
    except Exception:
        return False
