"""Layer pruning on demand: CTC models read at every depth, beside tiny.en and faster-whisper int8, in one run.

For each CTC model folder and each exit layer (1..L, through the shared final norm and head, no retraining): WER
and CER on the asterisk test split and on the out-of-domain suite (``english-ood``), encoder FLOPs at the test clips'
real lengths (mean per clip), parameters to that depth, and per-utterance latency. Latency is timed the same way for
every backend, by ``bench.latency.benchmark``: features, encoder and decoding of one utterance at a time (audio
reading not timed), the median over ``--latency-utterances`` test clips after two warm-up runs, at ``--threads``
threads; the baselines (tiny.en in PyTorch, greedy, and faster-whisper int8 on the original files) are timed in the
same run.

Rows are appended to ``OUT/results.jsonl`` as each finishes; a rerun skips them and resumes unfinished
evaluations.

    python bench/ctc_depth.py --out runs/ctc/depth \
        --models runs/ctc/whisper-interctc/model,runs/ctc/whisper/model,runs/ctc/static-2/model@full,...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def latency_ms(backend, utts, n: int) -> float:
    """Median end-to-end time per utterance (features, encoder, decoding; one at a time) by ``bench.latency``."""
    from speechprune.bench.latency import BenchOptions, benchmark

    return benchmark([backend], utts, bench=BenchOptions(warmup=2, repeats=1, max_utterances=n),
                     progress=False)["latency_ms_median"]


def score(backend, label: str, out: Path, test, ood) -> dict:
    from speechprune.evaluate.runner import eval_settings, evaluate
    from speechprune.models.decoding import DecodeOptions

    row = {}
    for name, utts in (("asterisk", test), ("english-ood", ood)):
        settings = eval_settings(label, name, "test" if name == "asterisk" else None, backend.name, DecodeOptions())
        m = evaluate(backend, utts, out / "eval" / label / name, DecodeOptions(), settings=settings, progress=False)
        row[name] = {"wer": m["wer"], "cer": m["cer"], "macro_wer": m.get("macro_wer"), "runaway": m["runaway"]["utterances"]}
    return row


def main() -> None:
    import torch

    from speechprune.bench.environment import environment, machine_line
    from speechprune.data.audio import load_audio
    from speechprune.data.datasets import load_dataset
    from speechprune.evaluate.backends import load_backend
    from speechprune.data.features import real_frames
    from speechprune.io import append_jsonl, read_jsonl_tolerant
    from speechprune.models.ctc import load_ctc
    from speechprune.models.ctc.flops import encoder_flops

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", required=True, help="comma-separated CTC model folders (FOLDER@full: full depth only)")
    ap.add_argument("--out", type=Path, default=Path("runs/ctc/depth"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-utterances", type=int, default=40)
    ap.add_argument("--no-baselines", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = args.out / "results.jsonl"
    done = {(r["model"], r.get("exit_layer")) for r in read_jsonl_tolerant(results)} if results.exists() else set()
    test, ood = load_dataset("asterisk", "test"), load_dataset("english-ood")
    frames = [real_frames(len(load_audio(u.audio))) for u in test]
    env = environment(args.threads, kernels=False)

    jobs = [] if args.no_baselines else [("whisper-tiny.en", "torch", None), ("whisper-tiny.en", "faster-whisper", None)]
    for spec in args.models.split(","):
        folder, _, only = spec.partition("@")  # FOLDER@full: its full depth only (a statically cut model)
        depth = load_ctc(folder).depth
        jobs += [(folder, "torch", k) for k in ([depth] if only == "full" else range(depth, 0, -1))]
    for model, backend_name, exit_layer in jobs:
        label = f"{Path(model).parent.name if exit_layer else model}-{backend_name}" + (f"-exit{exit_layer}" if exit_layer else "")
        if (label, exit_layer) in done:
            continue
        be = load_backend(model, backend_name, threads=args.threads, exit_layer=exit_layer)
        row = {"model": label, "folder": model, "backend": backend_name, "exit_layer": exit_layer,
               **score(be, label, args.out, test, ood),
               "latency_ms_median": latency_ms(be, test, args.latency_utterances),
               "params": getattr(be, "params", None), "threads": args.threads, "machine": machine_line(env)}
        if exit_layer:
            cfg = be.model.config
            row["flops_encoder_mean"] = statistics.mean(encoder_flops(cfg, f, exit_layer)["total"] for f in frames)
            row["params"] = sum(p.numel() for n, p in be.model.named_parameters()
                                if not n.startswith("layers.") or int(n.split(".")[1]) < exit_layer)
        append_jsonl(results, row)
        print(json.dumps({k: row[k] for k in ("model", "latency_ms_median")} |
                         {"wer": row["asterisk"]["wer"], "wer_ood": row["english-ood"]["wer"]}), flush=True)


if __name__ == "__main__":
    main()
