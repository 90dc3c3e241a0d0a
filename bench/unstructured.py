"""Unstructured pruning of tiny.en side by side: WER, nonzero parameters, disk (dense vs the compressed format) and
masked-dense latency against sparsity, per method; IMP with and without rewinding at the same final sparsities.

Methods (one-shot, no retraining): magnitude per tensor and global, Taylor, Wanda (per output row), 2:4 by Wanda
and by magnitude (fixed 50 %); IMP (``--imp``): iterative magnitude pruning in ``--imp-rounds`` rounds with
``--recovery-steps`` distillation steps after each (asterisk dev and synthetic voices in turn, the dense model as
teacher), rewinding survivors to the pretrained weights or not. Every point is scored on asterisk and on the
out-of-domain suite (``english-ood``). Calibration (Taylor, Wanda) and training read the dev split only; the final table
evaluates the test split (``--split dev --limit N`` for quick runs: the scored dev utterances are then held out of
calibration and training).

One JSON record per point is appended to ``OUT/points.jsonl`` as it finishes (a rerun skips finished points and
resumes a killed evaluation); ``OUT/storage.json`` holds real serialized file sizes over a fine sparsity grid (and
the crossovers); ``OUT/report.md`` and the plots come from :mod:`speechprune.report.sparsity`. Latency is measured
for masked-dense models, which run dense kernels: it is reported, never claimed as a speed-up.

    # the full run (slow on a 2-core CPU: hours with IMP)
    python bench/unstructured.py --out runs/unstructured --split test --imp
    # a smoke run
    python bench/unstructured.py --out runs/unstructured-smoke --split dev --limit 8 \
        --methods magnitude-layer wanda --sparsities 0.5 --bench-utterances 2
    # the points on Ray workers (each loads the dense model once; this process writes points.jsonl)
    python bench/unstructured.py --out runs/unstructured --executor ray [--ray-address HOST:PORT] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from speechprune.bench.latency import BenchOptions, benchmark
from speechprune.data.datasets import load_dataset, training_utterances
from speechprune.evaluate.runner import evaluate_with_ood, ood_fields
from speechprune.models.sparse import crossover_sparsity, serialized_bytes, size_report, dense_bytes
from speechprune.io import append_jsonl, atomic_write_json, read_jsonl_tolerant
from speechprune.models.registry import resolve_model
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.prune.imp import imp
from speechprune.recovery.config import DIVERSE_DATA, Recovery
from speechprune.recovery.distill import recovery_batches
from speechprune.prune.sparse_recipe import parse_sparsify_recipe
from speechprune.prune.unstructured import sparsify
from speechprune.report.sparsity import crossover, write_sparsity_report
from speechprune.scale.executor import add_executor_arguments, executor_from_arguments, run_jobs

CAL = {"data": "asterisk", "split": "dev", "utterances": 32, "batch_size": 8}
METHODS: dict[str, dict] = {
    "magnitude-layer": {"criterion": "magnitude", "scope": "layer"},
    "magnitude-global": {"criterion": "magnitude", "scope": "global"},
    "taylor": {"criterion": "taylor", "scope": "layer"},
    "wanda": {"criterion": "wanda", "scope": "row"},
    "wanda-2:4": {"criterion": "wanda", "pattern": "2:4"},
    "magnitude-2:4": {"criterion": "magnitude", "pattern": "2:4"},
}
IMP_METHODS = {"imp-rewind": "pretrained", "imp-norewind": "none"}
STORAGE_GRID = (0.0, 0.01, 0.02, 0.03, 0.035, 0.04, 0.05, 0.06, 0.065, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def storage_curve(dense_model, out: Path) -> dict:
    """Real serialized sizes of tiny.en with its layers magnitude-pruned (per tensor) over ``STORAGE_GRID``."""
    path = out / "storage.json"
    if path.is_file():
        import json

        return json.loads(path.read_text())
    rows = []
    for s in STORAGE_GRID:
        m = copy.deepcopy(dense_model)
        if s:
            sparsify(m, parse_sparsify_recipe({"sparsity": s}))
        rows.append({"sparsity": s, "dense": dense_bytes(m), "auto": serialized_bytes(m, "auto"),
                     "bitmask": serialized_bytes(m, "bitmask"), "csr": serialized_bytes(m, "csr"),
                     "dense_fp16": dense_bytes(m, torch.float16), "auto_fp16": serialized_bytes(m, "auto", "float16")})
        print(f"storage {100 * s:.1f} %: dense {rows[-1]['dense'] / 1e6:.2f} MB, auto {rows[-1]['auto'] / 1e6:.2f} MB",
              flush=True)
    xs = [r["sparsity"] for r in rows]
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    record = {"what": "weights file bytes of the whole model (embeddings, norms, stem included) with the attention "
                      "and FFN weights magnitude-pruned per tensor to each sparsity; serialized safetensors",
              "rows": rows,
              "crossover": {"auto fp32": crossover(xs, col("auto"), col("dense")),
                            "bitmask fp32": crossover(xs, col("bitmask"), col("dense")),
                            "csr fp32": crossover(xs, col("csr"), col("dense")),
                            "auto fp16 vs dense fp16": crossover(xs, col("auto_fp16"), col("dense_fp16"))},
              "analytic": {"bitmask fp32": crossover_sparsity("bitmask", 4, 4),
                           "csr int16 fp32": crossover_sparsity("csr", 4, 4, 2),
                           "bitmask fp16 vs dense fp16": crossover_sparsity("bitmask", 2, 2)}}
    atomic_write_json(path, record)
    return record


@dataclass(frozen=True)
class PointsJob:
    """One point per item, ``(name, method, sparsity)`` (``scale.executor.Job``): each worker loads the dense model
    once and labels the calibration and recovery audio once, the first time a point needs them."""

    model: str
    out: Path
    split: str
    limit: int | None
    imp_rounds: int
    recovery: dict  # a Recovery's fields (IMP's retraining)
    bench_utterances: int
    threads: int
    ood_per_source: int | None

    def setup(self) -> dict:
        utts = load_dataset("asterisk", self.split)
        utts = utts[: self.limit] if self.limit else utts
        return {"dense": TorchWhisper.from_folder(resolve_model(self.model), name="dense"), "utts": utts,
                "bench_utts": load_dataset("asterisk", self.split)[: max(1, self.bench_utterances)],
                # never calibrate or train on what is scored
                "held_out": {u.id for u in utts} if self.split == "dev" else set(), "cal": None, "rec": None}

    def _training(self, state: dict, limit: int | None, data=("asterisk:dev",)) -> list:
        utts = training_utterances(list(data), interleave=len(data) > 1)
        return [u for u in utts if u.id not in state["held_out"]][:limit]

    def run(self, state: dict, item: tuple[str, str, float | None]) -> dict:
        name, method, s = item
        dense = state["dense"]
        t0 = time.perf_counter()
        if method == "dense":
            from speechprune.prune.unstructured import prunable_sites, sparsity_record

            model, result = dense.model, {"target": None, **sparsity_record(dense.model, prunable_sites(dense.model))}
        elif method in IMP_METHODS:
            rec_cfg = Recovery(**self.recovery)
            if state["rec"] is None and rec_cfg.steps:
                state["rec"] = recovery_batches(dense, rec_cfg, self._training(state, rec_cfg.max_utterances,
                                                                               rec_cfg.data))
            recipe = parse_sparsify_recipe({"name": name, "sparsity": s, "imp": {
                "rounds": self.imp_rounds, "rewind": IMP_METHODS[method], "recovery": rec_cfg.model_dump()}})
            model = copy.deepcopy(dense.model)
            result = imp(model, recipe, state["rec"], progress=False)
        else:
            spec = METHODS[method]
            recipe = parse_sparsify_recipe({"name": name, "calibration": CAL, **spec,
                                            **({} if "pattern" in spec else {"sparsity": s})})
            if recipe.needs_calibration and state["cal"] is None:
                state["cal"] = dense.labelled_batches(self._training(state, CAL["utterances"]), CAL["batch_size"],
                                                      progress=False)
            model = copy.deepcopy(dense.model)
            result = sparsify(model, recipe, state["cal"] if recipe.needs_calibration else None, progress=False)
        seconds = time.perf_counter() - t0
        be = TorchWhisper(model, dense.tokenizer, dense.vocab, name=name)
        decode = DecodeOptions()
        metrics = evaluate_with_ood(be, state["utts"], self.out / name / "eval", name, "asterisk", self.split, decode,
                                    self.limit, ood_per_source=self.ood_per_source, progress=False)
        lat = lat_dense = load = None
        if self.bench_utterances:
            b = benchmark([dense] if name == "dense" else [dense, be], state["bench_utts"], decode,
                          BenchOptions(1, 2, self.bench_utterances), threads=self.threads, progress=False)
            lat, lat_dense = b["backends"][name]["latency_ms_median"], b["backends"]["dense"]["latency_ms_median"]
            load = b["other_cpu_load"]
        return {"name": name, "method": method, "target": s, "split": self.split, "limit": self.limit,
                "wer": metrics["wer"], "cer": metrics["cer"], "n_utterances": metrics["n_utterances"],
                **ood_fields(metrics), "ood_per_source": self.ood_per_source,
                **{k: v for k, v in result.items() if k not in ("target",)},
                "disk": size_report(model), "seconds": seconds,
                "latency_ms": lat, "latency_ms_dense": lat_dense, "other_cpu_load": load,
                "latency_note": "masked-dense: dense kernels, no sparse speed-up; taken under shared-machine load"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--out", type=Path, default=Path("runs/unstructured"))
    ap.add_argument("--split", choices=("test", "dev"), default="test", help="evaluation split (test: final table)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate the first N utterances only")
    ap.add_argument("--methods", nargs="*", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--sparsities", nargs="*", type=float, default=[0.3, 0.5, 0.7, 0.9])
    ap.add_argument("--imp", action="store_true", help="also IMP with and without rewinding at each sparsity")
    ap.add_argument("--imp-rounds", type=int, default=3)
    ap.add_argument("--recovery-steps", type=int, default=60, help="IMP: distillation steps after each round")
    ap.add_argument("--recovery-utterances", type=int, default=200)
    ap.add_argument("--bench-utterances", type=int, default=8, help="latency: utterances timed (0: skip)")
    ap.add_argument("--no-storage", action="store_true", help="skip the file-size curve")
    ap.add_argument("--ood-per-source", type=int, default=None,
                    help="score only the first N clips of each out-of-domain source (a quick look, not a result)")
    add_executor_arguments(ap)
    args = ap.parse_args()
    where = executor_from_arguments(args)
    threads = where.threads

    torch.set_num_threads(threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    done = {r["name"] for r in read_jsonl_tolerant(out / "points.jsonl")}
    items = [("dense", "dense", None)]
    for method in args.methods:
        for s in [0.5] if "pattern" in METHODS[method] else args.sparsities:
            items.append((f"{method}-{round(100 * s)}", method, s))
    if args.imp:
        items += [(f"{method}-{round(100 * s)}", method, s) for method in IMP_METHODS for s in args.sparsities]
    rec_cfg = Recovery(data=list(DIVERSE_DATA), interleave=True, steps=args.recovery_steps, batch_size=8,
                       lr=1e-4, max_utterances=args.recovery_utterances)
    job = PointsJob(args.model, out, args.split, args.limit, args.imp_rounds, rec_cfg.model_dump(),
                    args.bench_utterances, threads, args.ood_per_source)

    def on_record(item: tuple, rec: dict) -> None:
        append_jsonl(out / "points.jsonl", {**rec, "executor": where.record})
        done.add(rec["name"])
        print(f"{rec['name']}: sparsity {100 * rec.get('sparsity', 0):.1f} %, WER {100 * rec['wer']:.2f} %, out of "
              f"domain {'-' if rec.get('wer_ood') is None else format(100 * rec['wer_ood'], '.2f')} %, sparse "
              f"{rec['disk']['sparse_bytes'] / 1e6:.1f} MB vs dense {rec['disk']['dense_bytes'] / 1e6:.1f} MB",
              flush=True)

    run_jobs(job, [i for i in items if i[0] not in done], where, on_record, desc="points")
    if not args.no_storage:
        storage_curve(TorchWhisper.from_folder(resolve_model(args.model), name="dense").model, out)
    md = write_sparsity_report(out, f"Unstructured pruning of {args.model}")
    print(md.read_text())


if __name__ == "__main__":
    main()
