"""Length-adaptive tiny.en (issue 18): the encoder reads each clip at a length bucket instead of the 30 s window.

Variants, each scored on the asterisk test split and the pooled out-of-domain suite (``english-ood``), with WER per
bucket the clips fall in (``by_bucket``):

    dense            the stock model, 30 s window (the reference)
    dense@P          the same weights, no adaptation, clips that fit P positions read at P (the rest at 30 s),
                     for every bucket P but the full window
    dense-buckets    the same weights, no adaptation, every clip at its bucket
    adapted          the recipe whisper-tiny.en-length (adaptation by distillation from the full-window dense
                     teacher, ``recovery.length_adaptive``), read at its buckets
    adapted-full     the adapted weights read at the 30 s window (what a backend without buckets would see)
    adapted-onnx-int8, adapted-ct2-int8   the adapted model exported to ONNX Runtime int8 and CTranslate2 int8, read
                     at its buckets

then the encoder (and whole-utterance) latency per clip, dense at the full window against the adapted model at its
buckets, its exports, faster-whisper int8 and OpenVINO GenAI (int8 weights) on the original files (the peers), side
by side in one run (``speechprune.bench.latency.benchmark``: interleaved clip by clip and repeat by
repeat, medians, batch 1, the threads stated), with the encoder FLOPs per clip at each clip's bucket.

Clips of 10-30 s (issue 18: no worse WER than the full window, and no slower): the same comparison on long windows,
consecutive utterances packed end to end (``speechprune.data.pack.pack_utterances``: windows of at most 28 s, 0.5 s of
silence after each clip), keeping the windows of >= 10 s. Asterisk test is packed in its order; english-ood within
each source (ids ``<source>/packed-N``, so one window holds one source's voices and WER per source still works).
Each set is built once into ``OUT/long/<data>/`` (the WAVs, ``manifest.jsonl``, ``summary.json``: windows, minutes,
the duration range) and read back on a rerun. These windows fall in the 20 s and 30 s buckets:

    dense-long       the stock model at the 30 s window
    adapted-long     the adapted model at its buckets
    adapted-onnx-int8-long, adapted-ct2-int8-long   its exports at their buckets
    latency-long     the side-by-side latency above on the first ``--bench-windows`` long windows of asterisk test

Results are appended to ``OUT/results.jsonl`` as each variant finishes; a rerun skips finished variants, resumes
unfinished evaluations (``OUT/eval/<variant>/<data>``) and an interrupted adaptation (``OUT/prune/adapted``).
``--limit N`` keeps the first N clips (and the first N long windows) of each set.

    python bench/length_adaptive.py --out runs/length [--recipe R] [--steps 300] [--threads 2] [--variants dense,adapted,...]
    python bench/length_adaptive.py --out runs/length --variants dense-long,adapted-long,latency-long
    python bench/length_adaptive.py --out /tmp/length-smoke --limit 4 --steps 2   # a smoke test, not a result
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

MODEL = "whisper-tiny.en"
RECIPE = "whisper-tiny.en-length"
EVALS = (("asterisk", "test"), ("english-ood", None))


EXPORTS = ("adapted-onnx-int8", "adapted-ct2-int8")  # the adapted model exported, read at its buckets
LONG = "-long"  # a variant on the long windows: its name is the short-clip variant's plus this
LONG_VARIANTS = tuple(f"{v}{LONG}" for v in ("dense", "adapted", *EXPORTS, "latency"))
LONG_SECONDS = 28.0  # a long window holds at most this much audio
LONG_MIN_SECONDS = 10.0  # and is kept when it holds at least this much


def variant_names(buckets: list[int]) -> list[str]:
    return ["dense", *[f"dense@{p}" for p in buckets[:-1]], "dense-buckets", "adapted", "adapted-full", *EXPORTS,
            "latency", *LONG_VARIANTS]


def source_groups(utts: list, by_source: bool) -> list[tuple[str | None, list]]:
    """The runs of consecutive utterances to pack apart: one (None, all) or, ``by_source``, one per source (the id's
    prefix, ``drascula/D12`` -> drascula), each in its original order."""
    if not by_source:
        return [(None, list(utts))]
    from speechprune.data.sources import source_of

    groups: dict[str, list] = {}
    for u in utts:
        groups.setdefault(source_of(u.id), []).append(u)
    return list(groups.items())


def long_windows(windows: list, min_seconds: float = LONG_MIN_SECONDS) -> tuple[list, list]:
    """Packed ``windows`` split into those of at least ``min_seconds`` (kept) and the shorter rest (dropped)."""
    kept = [w for w in windows if w.duration is not None and w.duration >= min_seconds]
    kept_ids = {w.id for w in kept}
    return kept, [w for w in windows if w.id not in kept_ids]


def long_summary(windows: list, n_clips: int) -> dict:
    """How many long windows (packed from a set of ``n_clips`` clips), how many minutes, and their duration range
    (seconds, the silence between clips included)."""
    import statistics

    seconds = [w.duration for w in windows]
    out = {"n_windows": len(windows), "n_clips_in_set": n_clips, "minutes": sum(seconds) / 60,
           "seconds_min": min(seconds, default=None), "seconds_median": statistics.median(seconds) if seconds else None,
           "seconds_max": max(seconds, default=None), "window_seconds": LONG_SECONDS, "min_seconds": LONG_MIN_SECONDS}
    if any("/" in w.id for w in windows):
        by_source: dict[str, int] = {}
        for w in windows:
            by_source[w.id.partition("/")[0]] = by_source.get(w.id.partition("/")[0], 0) + 1
        out["windows_by_source"] = by_source
    return out


def long_set(data: str, split: str | None, out: Path) -> tuple[list, dict]:
    """The long windows of ``data`` (built once into ``OUT/long/<data>``, read back after) and their summary."""
    from speechprune.data.datasets import load_dataset
    from speechprune.data.manifest import read_manifest, write_manifest
    from speechprune.data.pack import pack_utterances
    from speechprune.io import atomic_write_json

    folder = out / "long" / data
    manifest, summary = folder / "manifest.jsonl", folder / "summary.json"
    if manifest.exists() and summary.exists():
        return read_manifest(manifest), json.loads(summary.read_text())
    utts, windows = load_dataset(data, split), []
    for source, group in source_groups(utts, data == "english-ood"):
        kept, dropped = long_windows(pack_utterances(group, LONG_SECONDS, folder / (source or "windows")))
        for w in dropped:
            Path(w.audio).unlink(missing_ok=True)
        windows += [replace(w, id=f"{source}/{w.id}") if source else w for w in kept]
    record = long_summary(windows, len(utts))
    if not windows:
        raise SystemExit(f"{data}: no packed window of >= {LONG_MIN_SECONDS:g} s")
    write_manifest(manifest, windows)
    atomic_write_json(summary, record)
    return windows, record


def exported(variant: str, adapted: Path, out: Path, threads: int):
    """The adapted model exported (once, into ``OUT/export/<variant>``) to ONNX Runtime int8 (weights' bits chosen
    for this CPU) or CTranslate2 int8, as a backend that reads each batch at its bucket."""
    from speechprune.evaluate.backends import load_backend

    folder = out / "export" / variant
    if variant == "adapted-onnx-int8":
        from speechprune.export.onnx import MANIFEST, export_onnx

        if not (folder / MANIFEST).exists():
            export_onnx(adapted, folder, quantize=True, overwrite=True)
        return load_backend(str(folder), "onnx", threads=threads, name=variant)
    from speechprune.export.ct2 import RECORD_FILE, export_ct2

    if not (folder / RECORD_FILE).exists():
        export_ct2(adapted, folder, quantization="int8", overwrite=True)
    return load_backend(str(folder), "faster-whisper", compute_type="int8", threads=threads, name=variant)


def adaptation_recipe(steps: int | None, limit: int | None, name: str = RECIPE):
    """The shipped adaptation recipe ``name`` (adaptation only, or a structured cut adapted in the same recovery),
    with ``steps`` and (for a smoke test) at most ``4 * limit`` clips."""
    from speechprune.prune.recipe import load_recipe

    recipe = load_recipe(name)
    if recipe.recovery is None or recipe.recovery.length_adaptive is None:
        raise SystemExit(f"recipe {name}: its recovery has no length_adaptive buckets; this bench needs them")
    change: dict = {}
    if steps is not None:
        change["steps"] = steps
    if limit is not None:
        change["max_utterances"] = 4 * limit
    return recipe.model_copy(update={"recovery": recipe.recovery.model_copy(update=change)})


def backend(variant: str, buckets: list[int], adapted: Path | None, numerics: str = "float32"):
    """The ``TorchWhisper`` a variant evaluates (the buckets it reads at set on its config, in memory)."""
    from speechprune.models.registry import resolve_model
    from speechprune.models.whisper.backend import TorchWhisper
    from speechprune.models.whisper.lengths import set_length_buckets

    if variant.startswith("adapted"):
        be = TorchWhisper.from_folder(adapted, name="torch", numerics=numerics)
        if variant == "adapted-full":
            set_length_buckets(be.model, None)
        return be
    be = TorchWhisper.from_folder(resolve_model(MODEL), name="torch", numerics=numerics)
    if variant.startswith("dense@"):
        set_length_buckets(be.model, [int(variant.split("@")[1]), buckets[-1]])
    elif variant == "dense-buckets":
        set_length_buckets(be.model, buckets)
    return be


def clip_buckets(utts, buckets: list[int]) -> dict[str, int]:
    """Each clip's own bucket (its first window's: clips over 30 s read their windows at the full one)."""
    from speechprune.data.audio import audio_duration
    from speechprune.data.features import real_frames
    from speechprune.errors import AudioError
    from speechprune.models.whisper.lengths import bucket_for

    out = {}
    for u in utts:
        try:
            out[u.id] = bucket_for(real_frames(int(audio_duration(u.audio) * 16000)), buckets)
        except AudioError:
            continue
    return out


def by_bucket(folder: Path, owners: dict[str, int]) -> dict[str, dict]:
    """WER of the clips of each bucket, from an evaluation's hypotheses."""
    from speechprune.data.normalize import normalize_text
    from speechprune.evaluate.metrics import word_errors
    from speechprune.io import read_jsonl_tolerant

    groups: dict[int, list[dict]] = {}
    for r in read_jsonl_tolerant(folder / "hypotheses.jsonl"):
        if "error" not in r and r["task"] == "transcribe" and r["id"] in owners:
            groups.setdefault(owners[r["id"]], []).append(r)
    out = {}
    for p, rs in sorted(groups.items()):
        w = word_errors([normalize_text(r["reference"], r["language"]) for r in rs],
                        [normalize_text(r["hypothesis"], r["language"]) for r in rs])
        out[str(p)] = {"wer": w.rate, "n_utterances": len(rs), "n_words": w.reference_length}
    return out


def evaluate_variant(be, label: str, out: Path, buckets: list[int], limit: int | None, long: bool = False) -> dict:
    """WER (pooled, mean of sources, loops, by bucket) of ``be`` on each evaluation set, or with ``long`` on its long
    windows (``long_set``; the summary of the set beside)."""
    from speechprune.data.datasets import load_dataset
    from speechprune.evaluate.runner import eval_settings, evaluate
    from speechprune.models.decoding import DecodeOptions

    row = {}
    for data, split in EVALS:
        if long:
            utts, summary = long_set(data, split, out)
            utts, name = utts[:limit], f"long:{data}"
        else:
            utts, summary, name = load_dataset(data, split)[:limit], None, data
        folder = out / "eval" / label / data
        m = evaluate(be, utts, folder, DecodeOptions(),
                     settings=eval_settings(label, name, split, be.name, DecodeOptions(), limit), progress=False)
        row[data] = {"wer": m["wer"], "macro_wer": m.get("macro_wer"), "runaway": m["runaway"]["utterances"],
                     "n_utterances": m["n_utterances"], "by_bucket": by_bucket(folder, clip_buckets(utts, buckets))}
        if long:
            row[data].update(by_source={k: v["wer"] for k, v in m.get("by_source", {}).items()} or None,
                             long_set=summary)
    return row


def latency(dense, adapted, buckets: list[int], n: int, threads: int, peers: list | None = None,
            utts: list | None = None) -> dict:
    """Dense at the full window against the adapted model at its buckets (and ``peers``: faster-whisper int8 on the
    original files, the adapted exports), side by side on the first ``n`` test clips (or of ``utts``: the long
    windows); encoder FLOPs per clip at its bucket; each backend's numerics (``auto`` for the PyTorch ones: what this
    CPU runs fastest)."""
    import statistics

    from speechprune.bench.latency import BenchOptions, benchmark
    from speechprune.data.datasets import load_dataset
    from speechprune.models.whisper import flops

    dense.name, adapted.name = "dense-full", "adapted-buckets"
    utts = (load_dataset("asterisk", "test") if utts is None else utts)[:n]
    rec = benchmark([dense, adapted, *(peers or [])], utts, bench=BenchOptions(max_utterances=n), threads=threads,
                    progress=False, own_frontends=True)  # the OpenVINO peer computes its own features
    own = clip_buckets(utts, buckets)
    shape = adapted.shape
    per_clip = [flops.encoder_flops(replace(shape, n_audio_ctx=own[u["id"]], n_frames=2 * own[u["id"]])).total
                for u in rec["backends"]["adapted-buckets"]["utterances"]]
    side = {name: {k: b[k] for k in ("encoder_ms_median", "encoder_ms_p90", "latency_ms_median", "latency_ms_p90",
                                     "decoder_ms_median", "n_utterances", "flops_encoder", "numerics")}
            for name, b in rec["backends"].items()}
    fastest_peer = min((k for k in side if k.startswith(("faster-whisper", "openvino"))), default=None,
                       key=lambda k: side[k]["latency_ms_median"])
    return {"threads": threads, "n_clips": rec["backends"]["dense-full"]["n_utterances"], **side,
            "encoder_speedup": side["dense-full"]["encoder_ms_median"] / side["adapted-buckets"]["encoder_ms_median"],
            "latency_speedup": side["dense-full"]["latency_ms_median"] / side["adapted-buckets"]["latency_ms_median"],
            "speedup_over_peer": None if fastest_peer is None else {
                name: side[fastest_peer]["latency_ms_median"] / b["latency_ms_median"] for name, b in side.items()},
            "flops_encoder_full": flops.encoder_flops(dense.shape).total,
            "flops_encoder_per_clip_median": statistics.median(per_clip),
            "flops_encoder_per_clip_mean": statistics.fmean(per_clip),
            "other_cpu_load": rec["other_cpu_load"], "environment": rec["environment"]}


def main() -> None:
    import torch

    from speechprune.io import append_jsonl, read_jsonl_tolerant
    from speechprune.prune.run import run_prune
    from speechprune.prune.runner import final_model_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/length"))
    ap.add_argument("--recipe", default=RECIPE,
                    help="the adapted model's recipe (default: adaptation only; e.g. whisper-tiny.en-onnx-length "
                         "prunes and adapts in one recovery)")
    ap.add_argument("--steps", type=int, default=None, help="adaptation steps (default: the recipe's)")
    ap.add_argument("--variants", default=None, help="comma-separated (default: all, in order)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None,
                    help="a smoke test: the first N clips of each evaluation set, 4 N recovery clips, N timed clips")
    ap.add_argument("--bench-utterances", type=int, default=20, help="test clips timed side by side")
    ap.add_argument("--bench-windows", type=int, default=10,
                    help="long windows of asterisk test timed side by side (latency-long)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = adaptation_recipe(args.steps, args.limit, args.recipe)
    buckets = list(recipe.recovery.length_adaptive.buckets)
    names = args.variants.split(",") if args.variants else variant_names(buckets)
    unknown = sorted(set(names) - set(variant_names(buckets)))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {variant_names(buckets)}")
    results = args.out / "results.jsonl"
    done = {r["variant"] for r in read_jsonl_tolerant(results)} if results.exists() else set()
    prune_dir = args.out / "prune" / "adapted"
    for name in names:
        if name in done:
            continue
        t0 = time.time()
        row: dict = {"variant": name}
        long = name in LONG_VARIANTS
        base = name.removesuffix(LONG) if long else name  # the short-clip variant it repeats on the long windows
        if base.startswith("adapted") or base == "latency":
            if not (prune_dir / "model.txt").exists():
                run_prune(MODEL, recipe, prune_dir, progress=False)
            record = json.loads((prune_dir / "prune.json").read_text())
            row["adaptation"] = record["steps"][-1].get("recovery")  # steps, losses, seconds
            row["recipe_recovery"] = record["recipe"]["recovery"]
        if base == "latency":
            from speechprune.evaluate.backends import load_backend

            adapted = final_model_dir(prune_dir)
            peers = [load_backend(MODEL, "faster-whisper", compute_type="int8", threads=args.threads),
                     load_backend(MODEL, "openvino", threads=args.threads),  # OpenVINO GenAI, int8 weights
                     *(exported(v, adapted, args.out, args.threads) for v in EXPORTS)]
            if long:
                utts, summary = long_set("asterisk", "test", args.out)
                n = args.limit or args.bench_windows
                row.update(clips="long:asterisk", long_set=summary)
            else:
                utts, n = None, args.limit or args.bench_utterances
            row.update(latency(backend("dense", buckets, None, "auto"), backend("adapted", buckets, adapted, "auto"),
                               buckets, n, args.threads, peers, utts))
        elif base in EXPORTS:
            be = exported(base, final_model_dir(prune_dir), args.out, args.threads)
            row.update(buckets=list(be.length_buckets or ()), **evaluate_variant(be, name, args.out, buckets,
                                                                                 args.limit, long))
        else:
            be = backend(base, buckets, final_model_dir(prune_dir) if base.startswith("adapted") else None)
            row.update(buckets=None if be.length_buckets is None else list(be.length_buckets),
                       **evaluate_variant(be, name, args.out, buckets, args.limit, long))
        row.update(minutes=(time.time() - t0) / 60, threads=args.threads, limit=args.limit)
        append_jsonl(results, row)
        brief = {k: (v["wer"] if isinstance(v, dict) and "wer" in v else v) for k, v in row.items()
                 if k not in ("recipe_recovery", "environment", "adaptation", "long_set")}
        print(json.dumps(brief), flush=True)


if __name__ == "__main__":
    main()
