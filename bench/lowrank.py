"""Low-rank factorization of tiny.en at three sizes, plain SVD against activation-aware: WER, parameters, FLOPs and
latency measured side by side with the dense model.

Each point factorizes every attention (self and cross) and FFN projection of encoder and decoder, one shot from the
dense model, to a parameter target: one energy threshold for all layers such that they keep ``params`` of their
weights (``speechprune.prune.lowrank.plan_ranks``; a layer whose rank would not be smaller stays dense). Then it is
saved (and reloaded: what is evaluated is what a user loads), evaluated on asterisk and on the out-of-domain suite
(``english-ood``), optionally recovered by distillation from the dense teacher on diverse audio and evaluated
again, and timed in one interleaved run next to the dense model (batch 1, medians).

One JSON record per point is appended to ``OUT/lowrank.jsonl`` as it finishes (a rerun skips finished points and
resumes a killed evaluation); ``OUT/lowrank.md`` is the table. Calibration (32 dev utterances: activation
statistics) and the teacher's recovery batches are computed once and shared by every point.

Full run (test split, every point, recovery):
    .venv/bin/python bench/lowrank.py --out runs/lowrank
Smoke (dev split, 8 utterances, two points, no recovery):
    .venv/bin/python bench/lowrank.py --out /tmp/lr-smoke --split dev --limit 8 --recovery-steps 0 \
        --bench-utterances 2 --only activation-p75 svd-p75
On Ray workers (``speechprune.scale.executor``; each loads the dense model and its statistics once, this process
writes ``lowrank.jsonl``; latency is then measured beside the other workers, so time on an idle machine for claims):
    .venv/bin/python bench/lowrank.py --out runs/lowrank --executor ray [--ray-address HOST:PORT] [--threads 1]
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
from speechprune.evaluate.runner import evaluate_with_ood, ood_fields
from speechprune.io import append_jsonl, atomic_write_text, read_jsonl_tolerant
from speechprune.models.checkpoint import save_pruned
from speechprune.models.decoding import DecodeOptions
from speechprune.models.lowrank import lowrank_ranks
from speechprune.models.registry import resolve_model
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.prune.lowrank import factorize, input_grams
from speechprune.prune.lowrank_recipe import parse_lowrank_recipe
from speechprune.prune.lowrank_run import select_sites, step_plan
from speechprune.recovery.config import DIVERSE_DATA, Recovery
from speechprune.data.datasets import training_utterances
from speechprune.models.whisper.family import FAMILY as WHISPER
from speechprune.recovery.distill import distill, recovery_batches
from speechprune.report.sparsity import lowrank_markdown
from speechprune.scale.executor import add_executor_arguments, executor_from_arguments, run_jobs

CAL = {"data": "asterisk", "split": "dev", "utterances": 32, "batch_size": 8}
SIZES = {"p90": 0.9, "p75": 0.75, "p60": 0.6}  # share of the chosen layers' weights kept
# name -> recipe (one shot; recovery is the script's option)
POINTS: dict[str, dict] = {f"{method}-{tag}": {"method": method, "target": {"params": keep}, "calibration": CAL}
                           for tag, keep in SIZES.items() for method in ("activation", "svd")}


def _eval(backend, utts, out: Path, name: str, split: str, limit: int | None, ood_per_source: int | None) -> dict:
    """asterisk ``split`` and, beside it, the out-of-domain suite (``out/ood``)."""
    return evaluate_with_ood(backend, utts, out, name, "asterisk", split, limit=limit, ood_per_source=ood_per_source,
                             progress=False)


@dataclass(frozen=True)
class LowrankJob:
    """One point per item (``scale.executor.Job``): each worker loads the dense model once and computes the
    activation statistics and the teacher's recovery batches once, the first time a point needs them."""

    model: str
    out: Path
    split: str
    limit: int | None
    recovery: dict  # a Recovery's fields
    bench_utterances: int
    bench_repeats: int
    threads: int
    ood_per_source: int | None

    def utterances(self) -> list:
        utts = load_dataset("asterisk", self.split)
        return utts[: self.limit] if self.limit else utts

    def setup(self) -> dict:
        src = resolve_model(self.model)
        dense = TorchWhisper.from_folder(src, name="dense")
        utts = self.utterances()
        # the driver evaluated the dense model before any worker started: this reads its files
        dense_metrics = _eval(dense, utts, self.out / "dense" / "eval", "dense", self.split, self.limit,
                              self.ood_per_source)
        return {"src": src, "dense": dense, "utts": utts, "dense_metrics": dense_metrics, "grams": None, "rec": None}

    def run(self, state: dict, name: str) -> dict:
        dense, utts, src, out = state["dense"], state["utts"], state["src"], self.out
        ood, rec_cfg, dense_metrics = self.ood_per_source, Recovery(**self.recovery), state["dense_metrics"]
        recipe = parse_lowrank_recipe({"name": name, **POINTS[name]}, source=f"point {name}")
        t0 = time.perf_counter()
        sites = select_sites(dense.model, recipe)
        if recipe.needs_calibration and state["grams"] is None:  # statistics of the dense model, shared by points
            cal = dense.labelled_batches(training_utterances(["asterisk:dev"], CAL["utterances"]), CAL["batch_size"])
            state["grams"] = input_grams(dense.model, sites, cal)
            del cal
        grams = state["grams"] if recipe.needs_calibration else None
        model = copy.deepcopy(dense.model)
        sites = select_sites(model, recipe)
        plan = step_plan(sites, recipe.target, 1, 1, grams=grams, damping=recipe.damping)
        errors = factorize(sites, plan.ranks, grams, recipe.damping)
        factorize_s = time.perf_counter() - t0
        folder = save_pruned(model, src, out / name / "factorized", overwrite=True)
        final = TorchWhisper.from_folder(folder, name=name)
        before = _eval(final, utts, out / name / "eval-factorized", name, self.split, self.limit, ood)
        recovery = None
        after = {"wer": None}
        if rec_cfg.steps:
            if state["rec"] is None:
                state["rec"] = recovery_batches(dense, rec_cfg)
            recovery = distill(model, state["rec"], rec_cfg, progress=False)
            folder = save_pruned(model, src, out / name / "recovered", overwrite=True)
            final = TorchWhisper.from_folder(folder, name=name)
            after = _eval(final, utts, out / name / "eval-recovered", name, self.split, self.limit, ood)
        bench = benchmark([dense, final], utts, DecodeOptions(),
                          BenchOptions(1, self.bench_repeats, self.bench_utterances), threads=self.threads,
                          progress=False)
        b, bd = bench["backends"][name], bench["backends"]["dense"]
        return {
            "name": name, "method": recipe.method, "target": recipe.target.model_dump(exclude_none=True),
            "energy": plan.energy, "split": self.split, "limit": self.limit,
            "n_factorized": len(plan.ranks), "n_dense": len(plan.skipped), "ranks": lowrank_ranks(model),
            "site_weights_dense": plan.params_before, "site_weights": plan.params_after,
            "output_error_mean": sum(errors.values()) / max(1, len(errors)),
            "dense": WHISPER.shape_record(dense.model), **WHISPER.shape_record(final.model),
            "wer_dense": dense_metrics["wer"], "wer_factorized": before["wer"], "wer_recovered": after["wer"],
            **ood_fields(dense_metrics, "_dense"), **ood_fields(before, "_factorized"),
            **ood_fields(after, "_recovered"), "ood_per_source": ood,
            "recovery": recovery, "recovery_config": rec_cfg.model_dump() if recovery else None,
            "factorize_seconds": factorize_s,
            "latency_ms_dense": bd["latency_ms_median"], "latency_ms": b["latency_ms_median"],
            "latency_ratio": bench["latency_ratio"][name],
            # per stage: free of the output length, which a damaged model changes (repetition loops)
            "encoder_ratio": b["encoder_ms_median"] / bd["encoder_ms_median"],
            "decoder_token_ratio": (None if not b["decoder_ms_per_token"] or not bd["decoder_ms_per_token"]
                                    else b["decoder_ms_per_token"] / bd["decoder_ms_per_token"]),
            "tokens_median": b["tokens_median"], "tokens_median_dense": bd["tokens_median"],
            "encoder_ms_dense": bd["encoder_ms_median"], "encoder_ms": b["encoder_ms_median"],
            "decoder_ms_per_token_dense": bd["decoder_ms_per_token"], "decoder_ms_per_token": b["decoder_ms_per_token"],
            "other_cpu_load": bench["other_cpu_load"], "environment": bench["environment"],
        }



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--out", type=Path, default=Path("runs/lowrank"))
    ap.add_argument("--split", default="test", choices=["test", "dev"], help="evaluation split (dev for trials)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N utterances")
    ap.add_argument("--recovery-steps", type=int, default=60)
    ap.add_argument("--recovery-data", nargs="+", default=list(DIVERSE_DATA),
                    help="recovery audio, taken in turn (default: asterisk dev and synthetic voices)")
    ap.add_argument("--recovery-utterances", type=int, default=320)
    ap.add_argument("--recovery-lr", type=float, default=3e-4,
                    help="3e-4 made the 90 %% point worse (6.1 -> 13.4 %% test WER): try 1e-4 for gentle points")
    ap.add_argument("--recovery-train", nargs="+", choices=["encoder", "decoder"], default=None,
                    help="stacks recovery updates (default: every weight)")
    ap.add_argument("--bench-utterances", type=int, default=12)
    ap.add_argument("--bench-repeats", type=int, default=3)
    ap.add_argument("--ood-per-source", type=int, default=None,
                    help="score only the first N clips of each out-of-domain source (a quick look, not a result)")
    ap.add_argument("--only", nargs="*", default=None, help=f"point names (default: all of {', '.join(POINTS)})")
    add_executor_arguments(ap)
    args = ap.parse_args()
    unknown = [n for n in args.only or [] if n not in POINTS]
    if unknown:
        ap.error(f"unknown point {unknown[0]!r}; choose from {', '.join(POINTS)}")

    where = executor_from_arguments(args)
    threads = where.threads
    torch.set_num_threads(threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    done = {r["name"]: r for r in read_jsonl_tolerant(out / "lowrank.jsonl")}
    names = [n for n in (args.only or POINTS) if n not in done]
    rec_cfg = Recovery(data=args.recovery_data, steps=args.recovery_steps, batch_size=8, lr=args.recovery_lr,
                       max_utterances=args.recovery_utterances, train=args.recovery_train,
                       interleave=len(args.recovery_data) > 1)
    job = LowrankJob(args.model, out, args.split, args.limit, rec_cfg.model_dump(), args.bench_utterances,
                     args.bench_repeats, threads, args.ood_per_source)
    dense = TorchWhisper.from_folder(resolve_model(args.model), name="dense")  # once, before any worker reads it
    _eval(dense, job.utterances(), out / "dense" / "eval", "dense", args.split, args.limit, args.ood_per_source)
    del dense

    def on_record(name: str, record: dict) -> None:
        append_jsonl(out / "lowrank.jsonl", {**record, "executor": where.record})
        done[name] = record
        rec = "-" if record["wer_recovered"] is None else f"{100 * record['wer_recovered']:.2f} %"
        print(f"{name}: {record['n_factorized']} layers factorized, params {record['params'] / 1e6:.2f} M, WER "
              f"{100 * record['wer_factorized']:.2f} % one-shot, {rec} recovered, "
              f"latency x{record['latency_ratio']:.2f}", flush=True)

    run_jobs(job, names, where, on_record, desc="points")
    atomic_write_text(out / "lowrank.md", lowrank_markdown([done[n] for n in POINTS if n in done]))
    print((out / "lowrank.md").read_text())


if __name__ == "__main__":
    main()
