"""Structured pruning methods side by side on one model: what each removes, what it costs, what it buys.

For every variant (a recipe, inline below): prune the dense model (one-shot or incremental), evaluate on the
test split and on the out-of-domain suite (``english-ood``), recover by distillation from the dense teacher on
diverse audio (asterisk dev and synthetic voices, taken in turn), evaluate both again, then time the recovered model
next to the dense one in one interleaved run. One JSON record per variant is appended to ``OUT/methods.jsonl`` as it
finishes (a rerun skips finished variants and resumes a killed evaluation); ``OUT/methods.md`` is the table.

Calibration batches (the dense model's own transcripts of dev prompts) and the teacher's recovery batches are
computed once and shared by every variant, so variants differ only in what they prune.

    .venv/bin/python bench/structured_methods.py --out runs/methods [--recovery-steps 100] [--only NAME ...]
        [--executor ray [--ray-address HOST:PORT] [--threads 1]]

With ``--executor ray`` the variants run on Ray workers (``speechprune.scale.executor``), each loading the dense
model and labelling the calibration and recovery audio once; this process writes ``methods.jsonl``. Latency is then
measured beside the other workers (``other_cpu_load`` says how busy the machine was): time on an idle machine for a
speed claim.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from speechprune.bench.latency import BenchOptions, benchmark
from speechprune.data.datasets import load_dataset
from speechprune.evaluate.runner import evaluate_with_ood, ood_fields, score
from speechprune.io import append_jsonl, atomic_write_text, read_jsonl_tolerant
from speechprune.models.adapters import adapter_for
from speechprune.models.checkpoint import save_pruned
from speechprune.models.decoding import DecodeOptions
from speechprune.models.registry import resolve_model
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.prune.recipe import load_recipe, parse_recipe
from speechprune.recovery.config import DIVERSE_DATA, Recovery
from speechprune.data.datasets import training_utterances
from speechprune.models.whisper.family import FAMILY as WHISPER
from speechprune.prune.structured import prune
from speechprune.recovery.distill import distill, recovery_batches
from speechprune.report.sparsity import ood_cell
from speechprune.scale.executor import add_executor_arguments, executor_from_arguments, run_jobs

CAL = {"data": "asterisk", "split": "dev", "utterances": 32, "batch_size": 8}
ENC_HEADS = {"stack": "encoder", "kind": "self_attn", "sparsity": 0.5}
ENC_FFN = {"stack": "encoder", "kind": "ffn", "sparsity": 0.5}
# the plan of recipes/whisper-tiny.en-fast.yaml, read from it (it also sets criterion activation, reconstruct: true)
FAST = [t.model_dump(exclude_defaults=True) for t in load_recipe("whisper-tiny.en-fast").targets]

# name -> (what it shows, recipe without recovery)
VARIANTS: dict[str, tuple[str, dict]] = {
    "enc-heads50-scattered": ("heads, per layer", {"criterion": "taylor", "targets": [ENC_HEADS]}),
    "enc-heads50-local": ("heads, few layers", {"criterion": "taylor", "targets": [{**ENC_HEADS, "scope": "local"}]}),
    "enc-ffn50-magnitude": ("FFN, magnitude", {"criterion": "magnitude", "targets": [ENC_FFN]}),
    "enc-ffn50-taylor": ("FFN, Taylor", {"criterion": "taylor", "targets": [ENC_FFN]}),
    "enc-ffn50-activation": ("FFN, activation", {"criterion": "activation", "targets": [ENC_FFN]}),
    "dec-ffn-blocks-2": ("modules: 2 decoder FFN blocks", {"criterion": "taylor", "targets": [
        {"stack": "decoder", "remove_modules": [{"layer": 1, "kind": "ffn"}, {"layer": 2, "kind": "ffn"}]}]}),
    "enc-layers-1": ("layers: encoder", {"criterion": "taylor", "targets": [{"stack": "encoder", "n_layers": 1}]}),
    "dec-layers-2": ("layers: decoder", {"criterion": "taylor", "targets": [{"stack": "decoder", "n_layers": 2}]}),
    "fast-oneshot": ("fast recipe, one-shot", {"criterion": "activation", "reconstruct": True, "targets": FAST}),
    "fast-incremental3": ("fast recipe, 3 steps", {"criterion": "activation", "reconstruct": True,
                                                   "schedule": {"steps": 3}, "targets": FAST}),
}


def _eval(backend, utts, out: Path, name: str, ood_per_source: int | None = None,
          limit: int | None = None) -> dict:
    """asterisk test (the first ``limit``) and, beside it, the out-of-domain suite (``out/ood``)."""
    return evaluate_with_ood(backend, utts[:limit] if limit else utts, out, name, "asterisk", "test", limit=limit,
                             ood_per_source=ood_per_source, progress=False)


@dataclass(frozen=True)
class MethodsJob:
    """One variant per item (``scale.executor.Job``): each worker loads the dense model once and labels the
    calibration and recovery audio once, the first time a variant needs them."""

    model: str
    out: Path
    recovery: dict  # a Recovery's fields
    bench_utterances: int
    threads: int
    ood_per_source: int | None
    limit: int | None = None

    def setup(self) -> dict:
        src = resolve_model(self.model)
        dense = TorchWhisper.from_folder(src, name="dense")
        test = load_dataset("asterisk", "test")[: self.limit or None]
        # the driver evaluated the dense model before any worker started: this reads its files
        dense_metrics = _eval(dense, test, self.out / "dense" / "eval", "dense", self.ood_per_source, self.limit)
        return {"src": src, "dense": dense, "test": test, "dense_metrics": dense_metrics, "cal": None, "rec": None}

    def run(self, state: dict, name: str) -> dict:
        dense, test, src, out, ood = state["dense"], state["test"], state["src"], self.out, self.ood_per_source
        rec_cfg = Recovery(**self.recovery)
        what, spec = VARIANTS[name]
        recipe = parse_recipe({"name": name, "calibration": CAL, **spec}, source=f"variant {name}")
        if recipe.needs_calibration and state["cal"] is None:
            state["cal"] = dense.labelled_batches(training_utterances(["asterisk:dev"], CAL["utterances"]), 8)
        if state["rec"] is None and rec_cfg.steps:
            state["rec"] = recovery_batches(dense, rec_cfg)
        t0 = time.perf_counter()
        model = copy.deepcopy(dense.model)
        recovery: list[dict] = []
        steps = recipe.schedule.steps
        per_step = Recovery(**{**rec_cfg.model_dump(), "steps": max(1, rec_cfg.steps // steps)})

        def on_step(step, m, report):  # incremental: recover between steps; the last step recovers below
            if step < steps and rec_cfg.steps:
                recovery.append(distill(m, state["rec"], per_step, progress=False))

        reports = prune(model, adapter_for(model), recipe, state["cal"], on_step=on_step, reference=dense.model)
        prune_s = time.perf_counter() - t0
        pruned_dir = save_pruned(model, src, out / name / "pruned", overwrite=True)
        before = _eval(TorchWhisper.from_folder(pruned_dir, name=name), test, out / name / "eval-pruned", name, ood,
                       self.limit)
        if rec_cfg.steps:
            recovery.append(distill(model, state["rec"], per_step if steps > 1 else rec_cfg, progress=False))
            final_dir = save_pruned(model, src, out / name / "recovered", overwrite=True)
            final = TorchWhisper.from_folder(final_dir, name=name)
            after = _eval(final, test, out / name / "eval-recovered", name, ood, self.limit)
        else:  # one-shot damage only
            final, after = TorchWhisper.from_folder(pruned_dir, name=name), {"wer": None}
        bench = benchmark([dense, final], test, DecodeOptions(), BenchOptions(1, 3, self.bench_utterances),
                          threads=self.threads, progress=False)
        b, bd = bench["backends"][name], bench["backends"]["dense"]
        return {
            "name": name, "what": what, "recipe": recipe.model_dump(exclude_defaults=True),
            "removed_modules": [m for r in reports for m in r.removed_modules],
            "removed_layers": [lay for r in reports for lay in r.removed_layers],
            "dense": WHISPER.shape_record(dense.model), **WHISPER.shape_record(model),
            "wer_dense": state["dense_metrics"]["wer"], "wer_pruned": before["wer"], "wer_recovered": after["wer"],
            "runaway_pruned": before["runaway"], "runaway_recovered": after.get("runaway"),
            **ood_fields(state["dense_metrics"], "_dense"), **ood_fields(before, "_pruned"),
            **ood_fields(after, "_recovered"), "ood_per_source": ood,
            "recovery_config": rec_cfg.model_dump() if rec_cfg.steps else None,
            "recovery": recovery, "prune_seconds": prune_s,
            "latency_ms_dense": bd["latency_ms_median"], "latency_ms": b["latency_ms_median"],
            "encoder_ms_dense": bd["encoder_ms_median"], "encoder_ms": b["encoder_ms_median"],
            "decoder_ms_per_token_dense": bd["decoder_ms_per_token"], "decoder_ms_per_token": b["decoder_ms_per_token"],
            "speedup": 1.0 / bench["latency_ratio"][name], "other_cpu_load": bench["other_cpu_load"],
            "environment": bench["environment"],
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--out", type=Path, default=Path("runs/methods"))
    ap.add_argument("--recovery-steps", type=int, default=60)
    ap.add_argument("--recovery-data", nargs="+", default=list(DIVERSE_DATA),
                    help="recovery audio, taken in turn (default: asterisk dev and synthetic voices)")
    ap.add_argument("--recovery-utterances", type=int, default=320)
    ap.add_argument("--bench-utterances", type=int, default=12)
    ap.add_argument("--ood-per-source", type=int, default=None,
                    help="score only the first N clips of each out-of-domain source (a quick look, not a result)")
    ap.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    ap.add_argument("--limit", type=int, default=None, help="score the first N test utterances (a smoke test)")
    add_executor_arguments(ap)
    args = ap.parse_args()
    unknown = [n for n in args.only or [] if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    where = executor_from_arguments(args)
    threads = where.threads

    torch.set_num_threads(threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    done = {r["name"]: r for r in read_jsonl_tolerant(out / "methods.jsonl")}
    names = [n for n in (args.only or VARIANTS) if n not in done]
    rec_cfg = Recovery(data=args.recovery_data, steps=args.recovery_steps, batch_size=8, lr=3e-4,
                       max_utterances=args.recovery_utterances, interleave=len(args.recovery_data) > 1)
    job = MethodsJob(args.model, out, rec_cfg.model_dump(), args.bench_utterances, threads, args.ood_per_source,
                     args.limit)
    dense = TorchWhisper.from_folder(resolve_model(args.model), name="dense")  # once, before any worker reads it
    _eval(dense, load_dataset("asterisk", "test"), out / "dense" / "eval", "dense", args.ood_per_source, args.limit)
    del dense

    def on_record(name: str, record: dict) -> None:
        append_jsonl(out / "methods.jsonl", {**record, "executor": where.record})
        done[name] = record
        rec = "-" if record["wer_recovered"] is None else f"{100 * record['wer_recovered']:.2f} %"
        print(f"{name}: WER {100 * record['wer_pruned']:.2f} % pruned, {rec} recovered, x{record['speedup']:.2f}",
              flush=True)

    run_jobs(job, names, where, on_record, desc="variants")
    rows = [_with_runaway(done[n], out) for n in VARIANTS if n in done]
    atomic_write_text(out / "methods.md", to_markdown(rows))
    print((out / "methods.md").read_text())


def _with_runaway(record: dict, out: Path) -> dict:
    """``record`` with the runaway counts of its evaluations; records written before they were kept get them
    from the evaluations' hypotheses (re-scored, the same records)."""
    record = dict(record)
    for which in ("pruned", "recovered"):
        hyps = out / record["name"] / f"eval-{which}" / "hypotheses.jsonl"
        if f"runaway_{which}" not in record and hyps.exists():
            record[f"runaway_{which}"] = score(list(read_jsonl_tolerant(hyps)))["runaway"]
    return record


def _wer(r: dict, which: str) -> str:
    """``WER (n)``: percent, and how many hypotheses ran to the token limit."""
    wer, loops = r[f"wer_{which}"], r.get(f"runaway_{which}")
    if wer is None:
        return "-"
    return f"{100 * wer:.2f}" + (f" ({loops['utterances']})" if loops else "")


def to_markdown(rows: list[dict]) -> str:
    head = ("| variant | what | enc FLOPs cut | dec FLOPs/token cut | params M | WER pruned (runaway) "
            "| WER recovered (runaway) | dense WER | OOD WER pruned | OOD WER recovered | dense OOD WER "
            "| latency ms (dense) | speed-up | enc ms (dense) | dec ms/token (dense) |")
    lines = [head, "|---|---|" + "---:|" * 13]
    for r in rows:
        cut = lambda k: f"{100 * (1 - r[k] / r['dense'][k]):.0f} %"  # noqa: E731
        lines.append(
            f"| {r['name']} | {r['what']} | {cut('flops_encoder')} | {cut('flops_decoder_per_token')} "
            f"| {r['params'] / 1e6:.2f} | {_wer(r, 'pruned')} | {_wer(r, 'recovered')} "
            f"| {100 * r['wer_dense']:.2f} | {ood_cell(r, '_pruned')} | {ood_cell(r, '_recovered')} "
            f"| {ood_cell(r, '_dense')} "
            f"| {r['latency_ms']:.0f} ({r['latency_ms_dense']:.0f}) | {r['speedup']:.2f}x "
            f"| {r['encoder_ms']:.0f} ({r['encoder_ms_dense']:.0f}) "
            f"| {r['decoder_ms_per_token']:.1f} ({r['decoder_ms_per_token_dense']:.1f}) |")
    lines += ["", "OOD: english-ood, real English speakers and recordings that no recovery, calibration or sweep reads; "
              "pooled WER % (mean of sources)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
