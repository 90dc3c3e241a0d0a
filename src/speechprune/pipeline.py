"""The main job behind ``speechprune run``: evaluate and benchmark a model, then write a short report.

Later stages (prune, recover, export) plug in here; each stage writes into its own sub-folder of ``out`` and
is skipped on a rerun when its result is already there.
"""

from __future__ import annotations

import json
from pathlib import Path

from .bench.latency import BenchOptions, benchmark
from .data.datasets import load_dataset
from .evaluate.backends import load_backend
from .evaluate.decoding import DecodeOptions
from .evaluate.runner import evaluate
from .io import atomic_write_json
from .report.summary import write_report


def main_job(model: str, data: str, split: str, threads: int, bench_utterances: int, out: Path) -> Path:
    """Evaluate on ``data``/``split`` and benchmark against faster-whisper int8; returns the Markdown report."""
    import torch

    from .models.registry import BUNDLED_MODELS

    torch.set_num_threads(threads)
    out = Path(out)
    utts = load_dataset(data, split)
    options = DecodeOptions()
    torch_be = load_backend(model, "torch")
    settings = {"model": model, "data": data, "split": split, "limit": None, "backend": torch_be.name,
                "beam_size": options.beam_size, "language": None, "task": options.task}
    metrics = evaluate(torch_be, utts, out / "eval", options, settings=settings)

    bench_path = out / "bench" / "bench.json"
    if bench_path.exists():
        record = json.loads(bench_path.read_text(encoding="utf-8"))
    else:
        backends = [torch_be]
        if model in BUNDLED_MODELS:  # the peer: the original CTranslate2 files through faster-whisper
            backends.append(load_backend(model, "faster-whisper", compute_type="int8", threads=threads))
        record = benchmark(backends, utts, options, BenchOptions(max_utterances=bench_utterances), threads=threads)
        record.update(model=model, data=data, split=split)
        atomic_write_json(bench_path, record)
    return write_report(out, [{"name": model, "metrics": metrics, "bench": record}], title=f"speechprune: {model} on {data} ({split})")
