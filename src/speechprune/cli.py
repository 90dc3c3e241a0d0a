"""The ``speechprune`` command: a thin, typed table from commands to library functions.

Every command prints a one-line ``error: ...`` and exits with status 2 on bad input; no tracebacks.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import SpeechpruneError
from .scale.executor import EXECUTOR_HELP, RAY_ADDRESS_HELP, RAY_WORKERS_HELP

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make speech models smaller and faster, and prove what it cost in accuracy.")
console = Console(width=None if sys.stdout.isatty() else 120)

DEFAULT_MODEL = "whisper-tiny.en"
DEFAULT_DATA = "asterisk"
# the main job: tiny.en adapted to read length buckets (issue 18), the configuration that holds out of domain on a CPU;
# the structured cuts (whisper-tiny.en-onnx, -fast) recovered on 2 cores do not (issue 16, docs/design.md)
DEFAULT_RECIPE = "whisper-tiny.en-length"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", text).strip("_") or "x"


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise SpeechpruneError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def _executor(kind: str, address: str | None, workers: int | None, threads: int | None):
    """The ``scale.executor.Executor`` the options name (a Ray address that does not answer fails here, before any
    work); a local run sets this process's threads."""
    from .scale.executor import Executor, check_address

    where = Executor(kind, address=address, workers=workers, threads=threads or 1)
    if where.kind == "local":
        _set_threads(threads)
    elif address:
        check_address(address)
    return where


NUMERICS_HELP = ("the torch backend's dtypes: auto (each part in what this CPU runs fastest, checked against float32; "
                 "bench records the choice and why) | float32 | bfloat16 (refused where this CPU runs it slowly)")


def _backends(model: str, names: list[str], threads: int | None, device: str, exit_layer: int | None = None,
              numerics: str = "float32"):
    """``torch`` (in ``numerics``), ``onnx`` (MODEL: an ONNX export folder), ``faster-whisper`` (= int8) or
    ``faster-whisper-<compute type>`` (MODEL: a bundled name or a CTranslate2 export folder)."""
    from .evaluate.backends import load_backend

    out = []
    for name in names:
        if name.startswith("faster-whisper"):
            ct = name[len("faster-whisper-"):] if name != "faster-whisper" else "int8"
            out.append(load_backend(model, "faster-whisper", compute_type=ct, threads=threads or 0, device=device))
        else:
            out.append(load_backend(model, name, threads=threads or 0, device=device, exit_layer=exit_layer,
                                    numerics=numerics if name == "torch" else "float32"))
    return out


def _print_metrics(title: str, metrics: dict) -> None:
    t = Table(title=title)
    for col in ("WER %", "CER %", "utterances", "scored", "words", "failed", "runaway (their word errors)"):
        t.add_column(col, justify="right")
    loops = metrics["runaway"]
    t.add_row(f"{100 * metrics['wer']:.2f}", f"{100 * metrics['cer']:.2f}", str(metrics["n_utterances"]),
              str(metrics["n_scored"]), str(metrics["n_words"]), str(metrics["n_failed"]),
              f"{loops['utterances']} ({loops['word_errors']})")
    console.print(t)
    if "bleu" in metrics:
        console.print(f"BLEU {metrics['bleu']:.2f} on {metrics['n_translated']} translated utterances")
    for f in metrics["failed"][:10]:
        console.print(f"[yellow]skipped[/] {f['id']}: {f['error']}")


def _print_bench(record: dict) -> None:
    from .bench.environment import machine_line

    t = Table(title=f"latency per utterance ({record['backends'][record['backend']]['n_utterances']} utterances, "
                    f"{record['environment']['threads']} threads, medians)")
    for col in ("backend", "e2e ms", "p90 ms", "features ms", "encoder ms", "dec first ms", "dec ms/token",
                "RTF", "ratio"):
        t.add_column(col, justify="right")
    for name, r in record["backends"].items():
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        t.add_row(name, fmt(r["latency_ms_median"]), fmt(r["latency_ms_p90"]), fmt(r["features_ms_median"]),
                  fmt(r["encoder_ms_median"]), fmt(r["decoder_first_step_ms_median"]), fmt(r["decoder_ms_per_token"]),
                  f"{r['rtf_median']:.3f}", f"{record['latency_ratio'][name]:.2f}x")
    console.print(t)
    enc = "G per clip (median; the model reads only the clip)" if record["flops_encoder_breakdown"] is None else "G/window"
    console.print(f"FLOPs: encoder {record['flops_encoder'] / 1e9:.2f} {enc}, decoder first step "
                  f"{record['flops_decoder_first_step'] / 1e9:.2f} G, {record['flops_decoder_per_token'] / 1e6:.1f} M/token; "
                  f"params {record['params'] / 1e6:.2f} M; disk {record['disk_bytes'] / 1e6:.1f} MB; "
                  f"peak RSS {record['peak_rss_bytes'] / 2**20:.0f} MiB; other CPU load {record['other_cpu_load']:.2f}")
    console.print(f"machine: {machine_line(record['environment'])}")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(..., help="bundled model name (whisper-tiny.en, whisper-base), a model folder, or a "
                                          "language model folder (scored by perplexity)"),
    data: str = typer.Argument(..., help="bundled data set (asterisk, asterisk-multiword; out of domain: english-ood or "
                                         "one of its sources, e.g. drascula) or a JSONL manifest; for a language "
                                         "model: english-text, an audio set's transcripts or a text file"),
    split: Optional[str] = typer.Option(None, help="dev | test | all (bundled sets; default test)"),
    limit: Optional[int] = typer.Option(None, min=1, help="evaluate only the first N utterances (a language model: N "
                                                          "lines spread over the text)"),
    batch_size: int = typer.Option(8, min=1),
    beam: int = typer.Option(1, min=1, help="beam size; 1 = greedy"),
    backend: str = typer.Option("torch", help="torch | onnx (an exported folder) | faster-whisper | "
                                                  "faster-whisper-float32 (a bundled name or a ct2 export) | openvino "
                                                  "(OpenVINO GenAI, int8 weights; a bundled or dense Whisper)"),
    language: Optional[str] = typer.Option(None, help="language for utterances without one (default: detect / en)"),
    task: str = typer.Option("transcribe", help="transcribe | translate, for utterances without one"),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: torch's default)"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    out: Optional[Path] = typer.Option(None, help="output folder (default runs/eval/<model>_<data>_<split>...)"),
    ood: bool = typer.Option(True, help="also score the out-of-domain English suite (english-ood: other speakers "
                                        "and recordings) into OUT/ood, beside DATA; skipped when DATA is one of them"),
    ood_per_source: Optional[int] = typer.Option(None, min=1, help="score only the first N utterances of each "
                                                 "out-of-domain source (a quick look, not a result)"),
    exit_layer: Optional[int] = typer.Option(None, min=1, help="CTC models: read the encoder only up to this layer "
                                             "(through the shared head; layer pruning on demand)"),
    numerics: str = typer.Option("float32", help=NUMERICS_HELP),
    lm: Optional[Path] = typer.Option(None, help="shallow fusion with this language model folder (a Whisper model: "
                                                 "an LM over its tokens; a CTC model: a character LM); torch backend, "
                                                 "or onnx for an exported Whisper; "
                                                 "with --beam 1 it runs the beam search with one beam"),
    lm_weight: float = typer.Option(0.3, help="with --lm: the LM's weight lambda (>= 0; 0 = the plain search)"),
    lm_bonus: float = typer.Option(0.0, help="with --lm: a length bonus beta per emitted token (or character)"),
    gates: Optional[Path] = typer.Option(None, help="decode with the trained context-aware gates of this folder "
                                                    "(speechprune train, family: gates): torch backend, greedy, gated "
                                                    "blocks not computed; metrics get the skip share and the gates "
                                                    "per language and task"),
) -> None:
    """Decode a data set and score it: WER, CER (and BLEU for translations), and beside it the out-of-domain suite.
    Resumes an interrupted run. A language model folder is scored on text instead: perplexity (DATA: english-text,
    an audio set's transcripts or a text file)."""
    if _is_lm(model):
        _eval_lm(model, data, split, out, limit, device, threads)
        return
    from .data.datasets import load_dataset
    from .evaluate.runner import OOD_DATA, OOD_DIR, eval_settings, evaluate, evaluate_ood, wants_ood
    from .models.decoding import DecodeOptions

    _set_threads(threads)
    fusion = None
    if lm is not None:
        from .models.fusion import check_weights, load_fusion_lm
        from .models.registry import resolve_model

        check_weights(lm_weight, lm_bonus)
        if backend == "onnx":  # an exported Whisper: its tokenizer files and the output width its manifest records
            from .evaluate.onnx_backend import read_manifest

            fusion = load_fusion_lm(lm, model, device=device,
                                    exported_vocab_size=read_manifest(model)["config"]["vocab_size"])
        elif backend == "torch":
            fusion = load_fusion_lm(lm, resolve_model(model), device=device)
        else:
            raise SpeechpruneError(f"--lm fuses a language model on the torch and onnx backends, not {backend}")
    options = DecodeOptions(beam_size=beam, language=language, task=task, lm=fusion,
                            lm_weight=lm_weight if fusion else 0.0, lm_bonus=lm_bonus if fusion else 0.0)
    utts = load_dataset(data, split)
    if limit:
        utts = utts[:limit]
    if gates is not None:
        from .evaluate.backends import load_backend

        be = load_backend(model, backend, threads=threads or 0, device=device, exit_layer=exit_layer,
                          numerics=numerics, gates=gates)
    else:
        (be,) = _backends(model, [backend], threads, device, exit_layer, numerics)
    out = out or Path("runs/eval") / _slug(f"{Path(model).name}_{Path(data).stem}_{split or 'test'}_{be.name}_beam{beam}"
                                           + (f"_gates-{Path(gates).name}" if gates is not None else "")
                                           + (f"_n{limit}" if limit else "") + (f"_exit{exit_layer}" if exit_layer else "")
                                           + (f"_lm{lm_weight:g}_{lm_bonus:g}" if lm is not None else ""))
    settings = eval_settings(model, data, split, be.name, options, limit)
    if exit_layer:
        settings["exit_layer"] = exit_layer
    if numerics != "float32":
        settings["numerics"] = getattr(be, "numerics", None)
    if gates is not None:
        settings["gates"] = {"folder": str(gates), "context": be.trained.context, "modules": list(be.modules_gated)}
    metrics = evaluate(be, utts, out, options, batch_size=batch_size, settings=settings)
    _print_metrics(f"{model} on {data} ({split or 'test'})", metrics)
    if "gates" in metrics:
        g = metrics["gates"]
        console.print(f"gates: mean skip share {100 * g['skip_share']:.1f} % ("
                      + ", ".join(f"{k} {100 * v['skip_share']:.1f} %" for k, v in g["by_language_task"].items()) + ")")
    console.print(f"wrote {out}/metrics.json and {out}/hypotheses.jsonl")
    if ood and wants_ood(data):
        other = evaluate_ood(be, model, out / OOD_DIR, options, batch_size=batch_size, per_source=ood_per_source)
        _print_metrics(f"{model} on {OOD_DATA} (out of domain: speakers and recordings nothing trains on)", other)
        _print_sources(other)
        console.print(f"in domain ({data}) WER {100 * metrics['wer']:.2f} % | out of domain ({OOD_DATA}) WER "
                      f"{100 * other['wer']:.2f} % pooled, {100 * other.get('macro_wer', other['wer']):.2f} % mean of "
                      f"sources; wrote {out / OOD_DIR}/metrics.json")
    elif "by_source" in metrics:
        _print_sources(metrics)


def _is_lm(model: str) -> bool:
    from .errors import ModelError
    from .models.family import family_for_folder

    try:
        return Path(model).is_dir() and family_for_folder(model).name == "lm"
    except ModelError:  # an export folder (ONNX, CTranslate2): not a family's
        return False


def _eval_lm(model: str, text: str, split: Optional[str], out: Optional[Path], limit: Optional[int], device: str,
             threads: Optional[int]) -> None:
    from .evaluate.perplexity import evaluate_perplexity

    _set_threads(threads)
    part = split or ("all" if Path(text).is_file() else "test")
    out = out or Path("runs/eval") / _slug(f"{Path(model).name}_{Path(text).stem}_{part}_ppl"
                                           + (f"_n{limit}" if limit else ""))
    m = evaluate_perplexity(model, text, split, out, limit=limit, device=device)
    t = Table(title=f"{model} on {text} ({part}, {m['settings']['form']} text)")
    for col in ("PPL", "PPL seen", "PPL/word", "lines", "tokens", "OOV %", "tokens/s"):
        t.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    t.add_row(fmt(m["ppl"]), fmt(m["ppl_seen"]), fmt(m["ppl_word"]), str(m["lines"]), str(m["tokens"]),
              f"{100 * m['oov_share']:.2f}", f"{m['tokens_per_second'] or 0:.0f}")
    console.print(t)
    console.print(f"wrote {out}/metrics.json")


def _print_sources(metrics: dict) -> None:
    t = Table(title="out of domain, per source")
    for col in ("source", "WER %", "CER %", "utterances", "words"):
        t.add_column(col, justify="right")
    for name, m in metrics.get("by_source", {}).items():
        t.add_row(name, f"{100 * m['wer']:.2f}", f"{100 * m['cer']:.2f}", str(m["n_scored"]), str(m["n_words"]))
    console.print(t)


@app.command("train")
def train_cmd(
    recipe: str = typer.Argument(..., help="a training recipe (YAML) or the name of one in recipes/train"),
    out: Path = typer.Option(..., help="output folder: checkpoint, log.jsonl, model/, train.json (a rerun resumes)"),
    device: str = typer.Option("cpu", help="cpu | cuda"),
    threads: Optional[int] = typer.Option(None, help="CPU threads (default: torch's default)"),
    sparsity: Optional[float] = typer.Option(None, help="gate recipes: the target skip share in (0, 1), replacing "
                                                        "the recipe's"),
) -> None:
    """Train a CTC model (a Whisper encoder with a character head, or a Conformer from scratch) with intermediate
    CTC and LayerDrop as the recipe says; held-out WER/CER at every exit as it trains. A recipe with ``family: lm``
    trains a language model on text instead (dev perplexity as it trains); ``family: gates`` trains context-aware gates
    of a Whisper model toward a skip share (OUT/gates.safetensors, OUT/gates.json; eval --gates OUT runs them)."""
    from .prune.recipe import read_recipe_yaml
    from .train.ctc import train_ctc
    from .train.recipe import BUNDLED_TRAIN_RECIPES, GateTrainRecipe, LMTrainRecipe, parse_train_recipe

    _set_threads(threads)
    obj, source = read_recipe_yaml(recipe, BUNDLED_TRAIN_RECIPES)
    if sparsity is not None:
        if obj.get("family") != "gates":
            raise SpeechpruneError("--sparsity sets the target of a gate recipe (family: gates)")
        obj = {**obj, "sparsity": sparsity}
    parsed = parse_train_recipe(obj, source)
    if isinstance(parsed, LMTrainRecipe):
        _train_lm(parsed, out, device, source)
        return
    if isinstance(parsed, GateTrainRecipe):
        _train_gates(parsed, out, device, source)
        return
    record = train_ctc(parsed, out, device=device, source=source)
    if not record:  # a torchrun process other than rank 0: that one reports
        return
    t = Table(title=f"held-out clips ({record['data']['valid']}), greedy, by exit layer")
    for col in ("exit layer", "WER %", "CER %"):
        t.add_column(col, justify="right")
    for k, m in (record["valid"] or {}).items():
        t.add_row(k, f"{100 * m['wer']:.2f}", f"{100 * m['cer']:.2f}")
    console.print(t)
    console.print(f"{record['params'] / 1e6:.2f} M params, {record['data']['train']} training clips "
                  f"({record['data']['train_seconds'] / 60:.1f} min); wrote {out}/model and {out}/train.json")


def _train_gates(recipe, out: Path, device: str, source: Path) -> None:
    from .train.gates import train_gates

    record = train_gates(recipe, out, device=device, source=source)
    t = Table(title=f"gates of {recipe.model}, target skip share {100 * recipe.sparsity:.0f} % (last 20 steps)")
    for col in ("language/task", "utterances", "skip %"):
        t.add_column(col, justify="right")
    for k, v in record["skip_by_context"].items():
        t.add_row(k, str(record["data"]["by_context"].get(k, 0)), f"{100 * v:.1f}")
    console.print(t)
    console.print(f"final loss {record['final_loss']:.3f}, skip share {100 * (record['skip_share'] or 0):.1f} %; "
                  f"wrote {out}/gates.safetensors, {out}/gates.json and {out}/train.json")


def _train_lm(recipe, out: Path, device: str, source: Path) -> None:
    from .train.lm import train_lm

    record = train_lm(recipe, out, device=device, source=source)
    if not record:  # a torchrun process other than rank 0: that one reports
        return
    v = record["valid"] or {}
    console.print(f"dev perplexity {v.get('ppl', float('nan')):.2f} per token, {v.get('ppl_word', float('nan')):.2f} "
                  f"per word ({v.get('tokens', 0)} tokens); {record['params'] / 1e6:.2f} M params, "
                  f"{record['data']['train_tokens'] / 1e6:.2f} M training tokens")
    console.print(f"wrote {out}/model and {out}/train.json")


@app.command("bench")
def bench_cmd(
    model: str = typer.Argument(..., help="bundled model name or a Whisper folder"),
    data: str = typer.Argument(DEFAULT_DATA, help="bundled data set or a JSONL manifest"),
    split: Optional[str] = typer.Option(None, help="dev | test | all (default test)"),
    backend: list[str] = typer.Option(["torch", "faster-whisper-int8"], help="repeat to time several side by side; "
                                      "the first is the primary (torch | onnx | faster-whisper-int8 | faster-whisper-float32; "
                                      "openvino reads raw audio: time it in its own run)"),
    threads: int = typer.Option(2, help="CPU threads for every backend"),
    utterances: int = typer.Option(20, min=1, help="utterances timed"),
    repeats: int = typer.Option(3, min=1),
    warmup: int = typer.Option(2, min=0),
    beam: int = typer.Option(1, min=1),
    device: str = typer.Option("cpu"),
    out: Optional[Path] = typer.Option(None, help="output folder (default runs/bench/<model>)"),
    numerics: str = typer.Option("auto", help=NUMERICS_HELP),
) -> None:
    """Time feature extraction, encoder and decoder per utterance; FLOPs, parameters, size, memory; the dtypes each
    backend ran in."""
    from .bench.latency import BenchOptions, benchmark
    from .data.datasets import load_dataset
    from .io import atomic_write_json
    from .models.decoding import DecodeOptions

    _set_threads(threads)
    utts = load_dataset(data, split)
    bes = _backends(model, backend, threads, device, numerics=numerics)
    record = benchmark(bes, utts, DecodeOptions(beam_size=beam), BenchOptions(warmup, repeats, utterances), threads=threads)
    record.update(model=model, data=data, split=split or "test")
    out = out or Path("runs/bench") / _slug(Path(model).name)
    atomic_write_json(out / "bench.json", record)
    _print_bench(record)
    console.print(f"wrote {out}/bench.json")


@app.command("synth")
def synth_cmd(
    out: Path = typer.Argument(..., help="output folder (wavs/ and manifest.jsonl); a rerun resumes"),
    n: int = typer.Option(1000, min=1, help="utterances"),
    seed: int = typer.Option(0),
    engine: list[str] = typer.Option(["espeak-ng", "flite", "hibari"], help="TTS engines, used in turn"),
    telephone: bool = typer.Option(False, help="8 kHz telephone-band augmentation, like the asterisk prompts"),
    workers: int = typer.Option(1, min=1),
) -> None:
    """Synthesize training speech offline from Debian text corpora (never from the evaluation data)."""
    from .data.synth import synthesize

    manifest = synthesize(out, n, seed=seed, engines=tuple(engine), telephone=telephone, workers=workers)
    console.print(f"wrote {manifest}")


def _per_token(shape: dict) -> str:
    """A step record's decoder MFLOP per token ("-" for a family without a decoder)."""
    flops = shape.get("flops_decoder_per_token")
    return "-" if flops is None else f"{flops / 1e6:.1f}"


@app.command("prune")
def prune_cmd(
    model: str = typer.Argument(..., help="bundled model name or a Whisper folder"),
    recipe: Path = typer.Option(..., help="YAML recipe, or the name of a bundled one (see recipes/)"),
    out: Path = typer.Option(..., help="output folder: a model per step, prune.json"),
    device: str = typer.Option("cpu"),
    threads: Optional[int] = typer.Option(None),
    dry_run: bool = typer.Option(False, help="validate the recipe against the model and stop"),
) -> None:
    """Structured pruning that removes tensors: heads, FFN neurons, modules, layers; optional recovery."""
    from .prune.recipe import load_recipe

    _set_threads(threads)
    r = load_recipe(recipe)
    if dry_run:
        from .models.adapters import adapter_for
        from .prune.runner import Job
        from .prune.structured import validate_against_model

        m = Job.open(model).model
        validate_against_model(r, m, adapter_for(m))
        console.print(f"recipe {recipe} is valid for {model}")
        return
    from .prune.run import run_prune

    record = run_prune(model, r, out, device=device)
    t = Table(title=f"{model} pruned with {recipe.name}")
    for col in ("step", "params M", "encoder GFLOP", "decoder MFLOP/token", "removed", "recovery loss"):
        t.add_column(col, justify="right")
    d = record["dense"]
    t.add_row("dense", f"{d['params'] / 1e6:.2f}", f"{d['flops_encoder'] / 1e9:.2f}", _per_token(d), "", "")
    for s in record["steps"]:
        rec = s.get("recovery") or {}
        t.add_row(str(s["step"]), f"{s['params'] / 1e6:.2f}", f"{s['flops_encoder'] / 1e9:.2f}",
                  _per_token(s), ", ".join(s["removed_modules"] + s["removed_layers"])[:40],
                  f"{rec.get('loss_first', 0):.3f} -> {rec.get('loss_last', 0):.3f}" if rec.get("steps") else "")
    console.print(t)
    console.print(f"wrote {out}/prune.json and a model per step; final model: {out}/step-{r.schedule.steps}")


@app.command("lowrank")
def lowrank_cmd(
    model: str = typer.Argument(..., help="bundled model name or a Whisper folder"),
    recipe: Path = typer.Option(..., help="YAML low-rank recipe, or the name of a bundled one (recipes/lowrank/)"),
    out: Path = typer.Option(..., help="output folder: a model per step, lowrank.json (a rerun resumes)"),
    device: str = typer.Option("cpu"),
    threads: Optional[int] = typer.Option(None),
    dry_run: bool = typer.Option(False, help="validate the recipe against the model, show the plan from the "
                                             "weights alone, and stop"),
) -> None:
    """Low-rank factorization: each chosen linear layer becomes two smaller ones (SVD, plain or activation-aware),
    step by step with optional recovery between steps."""
    from .prune.lowrank_recipe import load_lowrank_recipe

    _set_threads(threads)
    r = load_lowrank_recipe(recipe)
    if dry_run:
        from .prune.lowrank_run import validate_lowrank
        from .prune.runner import Job

        m = Job.open(model).model
        plan = validate_lowrank(r, m)
        console.print(f"recipe {recipe} is valid for {model}: the last step factorizes {len(plan.ranks)} of "
                      f"{len(plan.ranks) + len(plan.skipped)} linear layers, their weights "
                      f"{plan.params_before / 1e6:.2f} M -> {plan.params_after / 1e6:.2f} M (planned from the "
                      f"weights{'; activation-aware ranks follow calibration' if r.method == 'activation' else ''})")
        return
    from .prune.lowrank_run import run_lowrank

    record = run_lowrank(model, r, out, device=device)
    t = Table(title=f"{model} factorized with {recipe.name} ({r.method}, {r.target.describe()})")
    for col in ("step", "params M", "encoder GFLOP", "decoder MFLOP/token", "low-rank layers", "recovery loss"):
        t.add_column(col, justify="right")
    d = record["dense"]
    t.add_row("dense", f"{d['params'] / 1e6:.2f}", f"{d['flops_encoder'] / 1e9:.2f}",
              _per_token(d), "0", "")
    for s in record["steps"]:
        rec = s.get("recovery") or {}
        t.add_row(str(s["step"]), f"{s['params'] / 1e6:.2f}", f"{s['flops_encoder'] / 1e9:.2f}",
                  _per_token(s), str(len(s["ranks"])),
                  f"{rec.get('loss_first', 0):.3f} -> {rec.get('loss_last', 0):.3f}" if rec.get("steps") else "")
    console.print(t)
    console.print(f"wrote {out}/lowrank.json and a model per step; final model: {out}/step-{r.schedule.steps}")


@app.command("sparsify")
def sparsify_cmd(
    model: str = typer.Argument(..., help="bundled model name or a Whisper folder"),
    recipe: Path = typer.Option(..., help="unstructured YAML recipe, or a bundled name (see recipes/unstructured/)"),
    out: Path = typer.Option(..., help="output folder: model/, sparse/ (compressed), sparsify.json"),
    values: str = typer.Option("float32", help="value dtype of the compressed copy: float32 (exact) or float16"),
    device: str = typer.Option("cpu"),
    threads: Optional[int] = typer.Option(None),
    overwrite: bool = typer.Option(False, help="replace existing output folders"),
    dry_run: bool = typer.Option(False, help="validate the recipe against the model and stop"),
) -> None:
    """Unstructured pruning that zeroes single weights (magnitude, Taylor, Wanda; N:M; IMP with rewinding), saved
    dense and in a compressed sparse format. Masked weights still run dense kernels: no speed-up is claimed."""
    from .prune.sparse_recipe import load_sparsify_recipe

    _set_threads(threads)
    r = load_sparsify_recipe(recipe)
    if values not in ("float32", "float16"):
        raise SpeechpruneError(f"--values {values!r}: choose float32 or float16")
    if dry_run:
        from .prune.runner import Job
        from .prune.unstructured import recipe_sites

        m = Job.open(model).model
        n = sum(s.weight.numel() for s in recipe_sites(m, r))
        console.print(f"recipe {recipe} is valid for {model} ({n / 1e6:.2f} M weights targeted)")
        return
    from .prune.run_unstructured import run_sparsify

    rec = run_sparsify(model, r, out, device=device, values=values, overwrite=overwrite)
    if not rec:  # a torchrun process other than rank 0: that one reports
        return
    t = Table(title=f"{model} sparsified with {recipe.name}")
    for col in ("target", "reached", "params M", "nonzero M", "dense MB", "sparse MB", "layouts"):
        t.add_column(col, justify="right")
    d = rec["disk"]
    t.add_row(r.pattern or f"{100 * r.sparsity:.0f} %", f"{100 * rec['sparsity']:.1f} %", f"{rec['params'] / 1e6:.2f}",
              f"{rec['nonzero_params'] / 1e6:.2f}", f"{d['dense_bytes'] / 1e6:.1f}", f"{d['sparse_bytes'] / 1e6:.1f}",
              ", ".join(f"{k} {v}" for k, v in d["layouts"].items() if v))
    console.print(t)
    console.print(f"wrote {out}/model (dense with zeros), {out}/sparse (compressed) and {out}/sparsify.json; "
                  "latency is that of the dense model (dense kernels)")


@app.command("export")
def export_cmd(
    model: str = typer.Argument(..., help="bundled model name or a (dense or pruned) Whisper folder"),
    format: str = typer.Option(..., "--format", help="onnx | ct2 | hf"),
    out: Path = typer.Option(..., help="output folder"),
    quantize: Optional[str] = typer.Option(None, help="onnx: int8 (dynamic, every part) or auto (Whisper: encoder, "
                                                      "decoder and vocabulary projection each in int8 only where "
                                                      "this CPU runs it faster, accuracy checked); ct2: int8, "
                                                      "int8_float32, float16, ..."),
    vocab: Optional[str] = typer.Option(None, help="onnx: 'english' restricts the output projection to the tokens "
                                                   "English text uses (opt-in; measure its WER effect)"),
    overwrite: bool = typer.Option(False, help="replace a non-empty output folder"),
) -> None:
    """Export a model where users run it: ONNX Runtime, CTranslate2 (faster-whisper), a stock Hugging Face folder."""
    import json

    from .models.ctc import is_ctc_folder
    from .models.registry import resolve_model
    from .models.wav2vec2 import is_wav2vec2_folder

    if is_ctc_folder(model):  # the CTC family: one ONNX graph with a dynamic time axis
        from .export.ctc_onnx import export_ctc_onnx

        if format != "onnx" or vocab is not None or quantize not in (None, "int8"):
            raise SpeechpruneError("a CTC model exports to --format onnx, optionally --quantize int8, only")
        record = export_ctc_onnx(model, out, quantize=quantize == "int8", overwrite=overwrite)
        console.print(f"wrote {out} (onnx; posteriors within {record['check']['posterior_max_abs_diff']:.2g} of PyTorch)")
        return
    if is_wav2vec2_folder(model):  # one ONNX graph with dynamic batch and samples axes; no CTranslate2
        from .export.wav2vec2_onnx import CT2_REFUSAL, export_wav2vec2_onnx

        if format == "ct2":
            from .errors import ConfigError

            raise ConfigError(CT2_REFUSAL, model)
        if format == "onnx":
            if vocab is not None or quantize not in (None, "int8"):
                raise SpeechpruneError("a wav2vec2 model exports to --format onnx, optionally --quantize int8, only")
            record = export_wav2vec2_onnx(model, out, quantize=quantize == "int8", overwrite=overwrite)
            console.print(f"wrote {out} (onnx; posteriors within {record['check']['posterior_max_abs_diff']:.2g} "
                          "of PyTorch)")
            return
    src = resolve_model(model)
    if format == "onnx":
        from .export.onnx import export_onnx

        if quantize not in (None, "int8", "auto"):
            raise SpeechpruneError(f"--quantize {quantize!r}: ONNX export quantizes to int8 or auto")
        output_vocab = None
        if vocab == "english":
            from transformers import WhisperTokenizerFast

            from .export.vocab import english_output_vocab

            output_vocab = english_output_vocab(WhisperTokenizerFast.from_pretrained(src, local_files_only=True))
        elif vocab is not None:
            raise SpeechpruneError(f"--vocab {vocab!r}: the only restricted vocabulary is 'english'")
        record = export_onnx(src, out, quantize=quantize or False, output_vocab=output_vocab, overwrite=overwrite)
    elif format == "ct2":
        from .export.ct2 import export_ct2

        if vocab is not None:
            raise SpeechpruneError("--vocab applies to --format onnx only")
        record = export_ct2(src, out, quantization=quantize, overwrite=overwrite)
    elif format == "hf":
        from .export.hf import export_hf

        if quantize is not None or vocab is not None:
            raise SpeechpruneError("--quantize and --vocab do not apply to --format hf")
        record = export_hf(src, out, overwrite=overwrite)
    else:
        raise SpeechpruneError(f"unknown export format {format!r}; choose from onnx, ct2, hf")
    for item in record.get("not_native", []):
        console.print(f"[yellow]not native in {format}[/]: {json.dumps(item)}")
    console.print(f"wrote {out} ({format})")


@app.command("run")
def run_cmd(
    model: str = typer.Option(DEFAULT_MODEL, help="bundled model name or a Whisper folder"),
    data: str = typer.Option(DEFAULT_DATA),
    split: str = typer.Option("test"),
    threads: int = typer.Option(2),
    bench_utterances: int = typer.Option(20, min=1),
    recipe: str = typer.Option(DEFAULT_RECIPE, help="prune with this recipe (a file or a bundled name), recover, "
                                                   "then evaluate and bench dense and pruned side by side"),
    dense_only: bool = typer.Option(False, "--dense-only", help="evaluate and bench the model as it is; no pruning"),
    export: bool = typer.Option(True, help="also export the pruned model to ONNX Runtime int8, evaluate and bench it"),
    out: Path = typer.Option(Path("runs/main"), help="output folder (a rerun resumes)"),
    device: str = typer.Option("cpu", help="cpu | cuda: where pruning and recovery run (evaluation and timing stay on "
                                           "the CPU, beside faster-whisper)"),
    ood_per_source: Optional[int] = typer.Option(None, min=1, help="score only the first N utterances of each "
                                                 "out-of-domain source (a quick look, not a result)"),
    numerics: str = typer.Option("auto", help=NUMERICS_HELP),
) -> None:
    """The main job: compress bundled tiny.en with a recipe (default: whisper-tiny.en-length), recover, export to ONNX
    Runtime int8, then evaluate and benchmark it next to the dense model and faster-whisper on the asterisk test
    split; write a report."""
    from .pipeline import main_job

    report = main_job(model=model, data=data, split=split, threads=threads, bench_utterances=bench_utterances, out=out,
                      recipe=None if dense_only else recipe, export=export, prune_device=device,
                      ood_per_source=ood_per_source, numerics=numerics)
    console.print(report.read_text(encoding="utf-8"))
    console.print(f"wrote {report} and {report.with_suffix('.json')}")


gates_app = typer.Typer(add_completion=False, no_args_is_help=True,
                        help="Trained context-aware gates (speechprune train, family: gates): static deployment.")
app.add_typer(gates_app, name="gates")


@gates_app.command("deploy")
def gates_deploy_cmd(
    model: str = typer.Argument(..., help="the base model the gates were trained on (bundled name or folder)"),
    gates: Path = typer.Argument(..., help="a gates folder (gates.json, gates.safetensors)"),
    language: str = typer.Option(..., help="the language whose gates to deploy"),
    task: str = typer.Option("transcribe", help="transcribe | translate"),
    out: Path = typer.Option(..., help="output folder: a pruned model that eval and export read"),
    data: Optional[str] = typer.Option(None, help="context-aware gates: comma-separated training specs (dev only) "
                                                  "whose clips of this language and task check that the gates do "
                                                  "not depend on the audio"),
    limit: int = typer.Option(32, min=1, help="clips of --data to check"),
    overwrite: bool = typer.Option(False),
) -> None:
    """Write the static pruned model of one (language, task): the blocks its gates skip physically removed."""
    from .train.gates import deploy_trained_gates

    rec = deploy_trained_gates(model, gates, language, task, out, data=_csv(data, "data"), limit=limit,
                               overwrite=overwrite)
    console.print(f"skipped {len(rec['skipped'])} blocks ({100 * rec['skip_share']:.1f} %): "
                  f"{', '.join(rec['skipped'][:12])}{' ...' if len(rec['skipped']) > 12 else ''}; wrote {out}")


analyze_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Analyses of a model: layer ablation, weight-change signatures, sensitivity sweeps "
                               "and sparsity plans (JSON plus plots).")
app.add_typer(analyze_app, name="analyze")


def _csv(text: str | None, what: str, cast=str) -> list | None:
    if text is None:
        return None
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SpeechpruneError(f"--{what}: cannot read {text!r} as a comma-separated list") from None
    if not items:
        raise SpeechpruneError(f"--{what} is empty")
    return items


@analyze_app.command("sensitivity")
def analyze_sensitivity_cmd(
    model: str = typer.Argument(..., help="bundled model name or a model folder (Whisper or CTC)"),
    data: str = typer.Argument(DEFAULT_DATA, help="bundled data set or a JSONL manifest"),
    out: Path = typer.Option(..., help="sweep folder (points.jsonl, summary.json, plots/); a rerun resumes"),
    split: str = typer.Option("dev", help="dev | all (never test: the sweep selects what to prune)"),
    components: Optional[str] = typer.Option(None, help="comma-separated stack.component (encoder.ffn, "
                                             "decoder.cross_attn, encoder.conv, decoder.embed, "
                                             "encoder.ffn_macaron...); default: all but norms"),
    levels: str = typer.Option("0.1,0.3,0.5,0.7,0.9", help="comma-separated sparsity levels"),
    methods: str = typer.Option("unstructured,structured", help="unstructured (L1 magnitude per tensor) and/or "
                                "structured (heads / FFN neurons / conv channels per layer)"),
    criterion: str = typer.Option("magnitude", help="structured unit scores: magnitude | activation | taylor | random"),
    limit: Optional[int] = typer.Option(24, min=1, help="score the first N utterances"),
    max_new_tokens: int = typer.Option(64, min=1, help="token cap per hypothesis (a looping model stops there)"),
    calibration: int = typer.Option(32, min=1, help="dev utterances the activation / taylor criteria read"),
    batch_size: int = typer.Option(8, min=1),
    worker: int = typer.Option(0, min=0, help="without Ray: this process's share, every --workers-th point from "
                                              "--worker (several processes on one machine)"),
    workers: int = typer.Option(1, min=1),
    executor: str = typer.Option("local", help=EXECUTOR_HELP),
    ray_address: Optional[str] = typer.Option(None, help=RAY_ADDRESS_HELP),
    ray_workers: Optional[int] = typer.Option(None, min=1, help=RAY_WORKERS_HELP),
    threads: Optional[int] = typer.Option(None, help="compute threads (per Ray worker: default 1)"),
    device: str = typer.Option("cpu"),
) -> None:
    """WER on dev, size and FLOPs of the model with one component type pruned at a time, per sparsity and method."""
    from .analysis.sensitivity import run_sweep

    where = _executor(executor, ray_address, ray_workers, threads)
    summary = run_sweep(model, data, out, split=split, components=_csv(components, "components"),
                        levels=_csv(levels, "levels", float), methods=_csv(methods, "methods"), limit=limit,
                        criterion=criterion, worker=worker, workers=workers, batch_size=batch_size,
                        max_new_tokens=max_new_tokens, calibration=calibration, device=device, executor=where)
    t = Table(title=f"{model}: WER % on {data} {split} (first {limit}) with one component pruned")
    levels_seen = sorted({r["sparsity"] for per in summary["curves"].values() for rs in per.values() for r in rs})
    for col in ["method", "component"] + [f"{s:g}" for s in levels_seen]:
        t.add_column(col, justify="right")
    for method, per in summary["curves"].items():
        for c, rs in per.items():
            by = {r["sparsity"]: r["wer"] for r in rs}
            t.add_row(method, c, *[f"{100 * by[s]:.1f}" if s in by else "" for s in levels_seen])
    console.print(t)
    if summary["dense"]:
        console.print(f"dense WER {100 * summary['dense']['wer']:.2f} %; {summary['n_points']} points in {out}/points.jsonl")
    console.print(f"wrote {out}/summary.json and {out}/plots/")


@analyze_app.command("plan")
def analyze_plan_cmd(
    sweep: Path = typer.Argument(..., help="a sensitivity sweep folder (speechprune analyze sensitivity --out)"),
    target: str = typer.Option(..., help="METRIC:AMOUNT to remove, METRIC params | encoder-flops | decoder-flops, "
                                         "AMOUNT a fraction of the dense total (0.4) or an absolute amount (5e6)"),
    out: Path = typer.Option(..., help="the planned recipe (YAML); its predictions go to <stem>.json next to it"),
    uniform_out: Optional[Path] = typer.Option(None, help="the uniform recipe at the same target "
                                                          "(default <stem>-uniform.yaml next to --out)"),
    check: bool = typer.Option(False, help="also prune with both recipes and measure their WER on the sweep's own "
                                           "subset: the prediction adds one-component damages, this shows how the "
                                           "cuts interact"),
) -> None:
    """Per-component sparsities from a sweep that meet a global target at the least predicted WER increase, as a
    structured recipe for `speechprune prune`, next to the uniform allocation at the same target."""
    from .analysis.plan import write_plan

    record = write_plan(sweep, target, out, uniform_out, check=check)
    t = Table(title=f"plan for {target} (predicted from {sweep})")
    cols = ["allocation", "fractions removed", "predicted WER +pts", "params M", "encoder GFLOP", "decoder MFLOP/token"]
    for col in cols + (["measured WER +pts (sweep subset)"] if check else []) + ["recipe"]:
        t.add_column(col, justify="right")
    for name in ("plan", "uniform"):
        a = record[name]
        measured = [f"{100 * a['check']['wer_increase']:.1f}"] if check else []
        t.add_row(name, ", ".join(f"{c} {v['sparsity']:.2f}" for c, v in a["per_component"].items() if v["sparsity"] > 0),
                  f"{100 * a['predicted_wer_increase']:.1f}", f"{a['realized']['params'] / 1e6:.2f}",
                  f"{a['realized']['flops_encoder'] / 1e9:.2f}",
                  f"{a['realized']['flops_decoder_per_token'] / 1e6:.2f}" if "flops_decoder_per_token" in a["realized"]
                  else "-",
                  *measured, a["recipe"])
    console.print(t)
    console.print(f"wrote {out}, {record['uniform']['recipe']} and {out.with_suffix('.json')}")


@app.command("report")
def report_cmd(
    dirs: list[Path] = typer.Argument(..., help="run folders (analyses, prunes, evals, benches), searched recursively"),
    out: Path = typer.Option(Path("report.html"), help="the HTML page; the records it shows go to <stem>.json"),
    title: str = typer.Option("speechprune report"),
) -> None:
    """Gather runs into one self-contained HTML page: WER vs latency, size and sparsity, and tables."""
    from .report.html import write_html_report

    write_html_report(dirs, out, title)
    console.print(f"wrote {out} and {out.with_suffix('.json')}")


@analyze_app.command("ablation")
def analyze_ablation_cmd(
    model: str = typer.Argument(..., help="bundled model name or a (dense or pruned) model folder (Whisper or CTC)"),
    data: str = typer.Argument(DEFAULT_DATA, help="bundled data set or a JSONL manifest (with reference texts)"),
    out: Path = typer.Option(..., help="output folder: records.jsonl, summary.json, heatmaps (a rerun resumes)"),
    split: str = typer.Option("dev", help="dev | all | test (test only with --allow-test)"),
    methods: str = typer.Option("reinit,rerandom,skip", help="comma-separated: reinit, rerandom, skip"),
    seeds: int = typer.Option(3, min=1, help="seeds for reinit/rerandom (skip is deterministic: seed 0 only)"),
    metric: str = typer.Option("proxy", help="proxy (teacher-forced loss on the references) | wer | both"),
    limit: Optional[int] = typer.Option(32, min=1, help="first N utterances of the split"),
    wer_limit: Optional[int] = typer.Option(None, min=1, help="WER on the first N of those (default all)"),
    wer_seeds: int = typer.Option(1, min=1, help="with --metric both: WER on the first N seeds only"),
    modules: bool = typer.Option(False, "--modules", help="ablate each block (self_attn, cross_attn, ffn) instead "
                                                          "of whole layers"),
    stack: Optional[str] = typer.Option(None, help="only this stack (encoder | decoder)"),
    proxy_threshold: float = typer.Option(0.10, help="ambient: relative proxy-loss increase below this"),
    wer_threshold: float = typer.Option(0.01, help="ambient: absolute WER increase below this (0.01 = 1 point)"),
    init_from: Optional[str] = typer.Option(None, help="reinit restores this checkpoint's weights (default: the "
                                                       "initial weights the model folder keeps, else the family's "
                                                       "initialization)"),
    batch_size: int = typer.Option(8, min=1),
    allow_test: bool = typer.Option(False, "--allow-test", help="allow --split test (final analysis only)"),
    executor: str = typer.Option("local", help=EXECUTOR_HELP),
    ray_address: Optional[str] = typer.Option(None, help=RAY_ADDRESS_HELP),
    ray_workers: Optional[int] = typer.Option(None, min=1, help=RAY_WORKERS_HELP),
    threads: Optional[int] = typer.Option(None, help="compute threads (per Ray worker: default 1)"),
    device: str = typer.Option("cpu"),
) -> None:
    """Layer ablation: re-initialize, re-randomize or skip each layer; classify layers as critical or ambient."""
    from .analysis.jobs import ablation_job

    where = _executor(executor, ray_address, ray_workers, threads)
    s = ablation_job(model, data, out, split=split, methods=tuple(_csv(methods, "methods")), seeds=seeds,
                     metric=metric, limit=limit,
                     wer_limit=wer_limit, wer_seeds=wer_seeds, modules=modules,
                     stacks=(stack,) if stack else None, proxy_threshold=proxy_threshold,
                     wer_threshold=wer_threshold, init_from=init_from, batch_size=batch_size, allow_test=allow_test,
                     device=device, executor=where)
    for name in s["metrics"]:
        t = Table(title=f"{model}: {name} delta vs dense {s['dense'][name]:.4f} (A ambient, C critical)")
        t.add_column("target")
        for m in s["methods"]:
            t.add_column(m, justify="right")
        for target in s["targets"]:
            cells = []
            for m in s["methods"]:
                c = s["table"].get(target, {}).get(m, {}).get(name)
                cells.append("-" if not c or c["delta"] is None else f"{c['delta']:+.3f} {c['class'][0].upper()}")
            t.add_row(target, *cells)
        console.print(t)
    console.print(f"wrote {out}/summary.json, {out}/records.jsonl and heatmaps")


@analyze_app.command("signatures")
def analyze_signatures_cmd(
    before: str = typer.Argument(..., help="a model (bundled name or folder), or init:SEED for the family's "
                                           "initialization of AFTER's architecture"),
    after: str = typer.Argument(..., help="a model of the same architecture (bundled name or folder)"),
    out: Path = typer.Option(..., help="output folder: signatures.json and a heatmap per stack"),
    ablation: Optional[Path] = typer.Option(None, help="an ablation summary.json (or its folder) to correlate with"),
) -> None:
    """Weight-change signatures: ||W_after - W_before||_F per module type and layer, normalized to [0, 1]."""
    from .analysis.jobs import signatures_job

    rec = signatures_job(before, after, out, ablation=ablation)
    t = Table(title=f"per-layer weight change {before} -> {after} (1 = the stack's most changed layer)")
    t.add_column("layer")
    t.add_column("signature", justify="right")
    for k, v in rec["layers"].items():
        t.add_row(k, f"{v:.3f}")
    console.print(t)
    for metric, by_method in rec.get("correlation", {}).items():
        for m, c in by_method.items():
            rho = "-" if c["spearman"] is None else f"{c['spearman']:+.2f}"
            console.print(f"Spearman(signature, ablation {metric} {m}) = {rho} over {c['n']} layers")
    console.print(f"wrote {out}/signatures.json and heatmaps")


def _quiet_libraries() -> None:
    """The CLI prints its own progress; silence transformers' bars and advice, and never reach a hub."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def main() -> None:
    _quiet_libraries()
    try:
        app()
    except SpeechpruneError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
