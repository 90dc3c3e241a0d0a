"""Structured pruning methods side by side on one model: what each removes, what it costs, what it buys.

For every variant (a recipe, inline below): prune the dense model (one-shot or incremental), evaluate on the
test split and on the out-of-domain suite (``english-ood``), recover by distillation from the dense teacher on
diverse audio (asterisk dev and synthetic voices, taken in turn), evaluate both again, then time the recovered model
next to the dense one in one interleaved run. One JSON record per variant is appended to ``OUT/methods.jsonl`` as it
finishes (a rerun skips finished variants and resumes a killed evaluation); ``OUT/methods.md`` is the table.

Calibration batches (the dense model's own transcripts of dev prompts) and the teacher's recovery batches are
computed once and shared by every variant, so variants differ only in what they prune.

    .venv/bin/python bench/structured_methods.py --out runs/methods [--recovery-steps 100] [--only NAME ...]
"""

from __future__ import annotations

import argparse
import copy
import time
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


def _eval(backend, utts, out: Path, name: str, ood_per_source: int | None = None) -> dict:
    """asterisk test and, beside it, the out-of-domain suite (``out/ood``)."""
    return evaluate_with_ood(backend, utts, out, name, "asterisk", "test", ood_per_source=ood_per_source,
                             progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--out", type=Path, default=Path("runs/methods"))
    ap.add_argument("--recovery-steps", type=int, default=60)
    ap.add_argument("--recovery-data", nargs="+", default=list(DIVERSE_DATA),
                    help="recovery audio, taken in turn (default: asterisk dev and synthetic voices)")
    ap.add_argument("--recovery-utterances", type=int, default=320)
    ap.add_argument("--bench-utterances", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ood-per-source", type=int, default=None,
                    help="score only the first N clips of each out-of-domain source (a quick look, not a result)")
    ap.add_argument("--only", nargs="*", default=None, help="variant names (default: all)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    done = {r["name"]: r for r in read_jsonl_tolerant(out / "methods.jsonl")}
    names = [n for n in (args.only or VARIANTS) if n not in done]
    src = resolve_model(args.model)
    dense = TorchWhisper.from_folder(src, name="dense")
    test = load_dataset("asterisk", "test")
    ood = args.ood_per_source
    dense_metrics = _eval(dense, test, out / "dense" / "eval", "dense", ood)
    rec_cfg = Recovery(data=args.recovery_data, steps=args.recovery_steps, batch_size=8, lr=3e-4,
                       max_utterances=args.recovery_utterances, interleave=len(args.recovery_data) > 1)
    cal_batches = rec_batches = None

    for name in names:
        what, spec = VARIANTS[name]
        recipe = parse_recipe({"name": name, "calibration": CAL, **spec}, source=f"variant {name}")
        if recipe.needs_calibration and cal_batches is None:
            cal_batches = dense.labelled_batches(training_utterances(["asterisk:dev"], CAL["utterances"]), 8)
        if rec_batches is None and args.recovery_steps:
            rec_batches = recovery_batches(dense, rec_cfg)
        t0 = time.perf_counter()
        model = copy.deepcopy(dense.model)
        recovery: list[dict] = []
        steps = recipe.schedule.steps
        per_step = Recovery(**{**rec_cfg.model_dump(), "steps": max(1, args.recovery_steps // steps)})

        def on_step(step, m, report):  # incremental: recover between steps; the last step recovers below
            if step < steps and args.recovery_steps:
                recovery.append(distill(m, rec_batches, per_step, progress=False))

        reports = prune(model, adapter_for(model), recipe, cal_batches, on_step=on_step, reference=dense.model)
        prune_s = time.perf_counter() - t0
        pruned_dir = save_pruned(model, src, out / name / "pruned", overwrite=True)
        before = _eval(TorchWhisper.from_folder(pruned_dir, name=name), test, out / name / "eval-pruned", name, ood)
        if args.recovery_steps:
            recovery.append(distill(model, rec_batches, per_step if steps > 1 else rec_cfg, progress=False))
            final_dir = save_pruned(model, src, out / name / "recovered", overwrite=True)
            final = TorchWhisper.from_folder(final_dir, name=name)
            after = _eval(final, test, out / name / "eval-recovered", name, ood)
        else:  # one-shot damage only
            final, after = TorchWhisper.from_folder(pruned_dir, name=name), {"wer": None}
        bench = benchmark([dense, final], test, DecodeOptions(), BenchOptions(1, 3, args.bench_utterances),
                          threads=args.threads, progress=False)
        shape = WHISPER.shape_record(model)
        record = {
            "name": name, "what": what, "recipe": recipe.model_dump(exclude_defaults=True),
            "removed_modules": [m for r in reports for m in r.removed_modules],
            "removed_layers": [lay for r in reports for lay in r.removed_layers],
            "dense": WHISPER.shape_record(dense.model), **shape,
            "wer_dense": dense_metrics["wer"], "wer_pruned": before["wer"], "wer_recovered": after["wer"],
            "runaway_pruned": before["runaway"], "runaway_recovered": after.get("runaway"),
            **ood_fields(dense_metrics, "_dense"), **ood_fields(before, "_pruned"), **ood_fields(after, "_recovered"),
            "ood_per_source": ood, "recovery_config": rec_cfg.model_dump() if args.recovery_steps else None,
            "recovery": recovery, "prune_seconds": prune_s,
            "latency_ms_dense": bench["backends"]["dense"]["latency_ms_median"],
            "latency_ms": bench["backends"][name]["latency_ms_median"],
            "encoder_ms_dense": bench["backends"]["dense"]["encoder_ms_median"],
            "encoder_ms": bench["backends"][name]["encoder_ms_median"],
            "decoder_ms_per_token_dense": bench["backends"]["dense"]["decoder_ms_per_token"],
            "decoder_ms_per_token": bench["backends"][name]["decoder_ms_per_token"],
            "speedup": 1.0 / bench["latency_ratio"][name], "other_cpu_load": bench["other_cpu_load"],
            "environment": bench["environment"],
        }
        append_jsonl(out / "methods.jsonl", record)
        done[name] = record
        print(f"{name}: WER {100 * before['wer']:.2f} % pruned, {after['wer']} recovered, x{record['speedup']:.2f}",
              flush=True)
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


def _ood(r: dict, which: str) -> str:
    """Out-of-domain WER %, pooled (mean of sources), or ``-`` for records from before it was scored."""
    wer, macro = r.get(f"wer_ood_{which}"), r.get(f"macro_wer_ood_{which}")
    return "-" if wer is None else f"{100 * wer:.2f}" + ("" if macro is None else f" ({100 * macro:.2f})")


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
            f"| {100 * r['wer_dense']:.2f} | {_ood(r, 'pruned')} | {_ood(r, 'recovered')} | {_ood(r, 'dense')} "
            f"| {r['latency_ms']:.0f} ({r['latency_ms_dense']:.0f}) | {r['speedup']:.2f}x "
            f"| {r['encoder_ms']:.0f} ({r['encoder_ms_dense']:.0f}) "
            f"| {r['decoder_ms_per_token']:.1f} ({r['decoder_ms_per_token_dense']:.1f}) |")
    lines += ["", "OOD: english-ood, real English speakers and recordings that no recovery, calibration or sweep reads; "
              "pooled WER % (mean of sources)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
