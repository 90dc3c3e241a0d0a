"""WER and latency with and without a language model (issue 19): one recognizer (tiny.en, or a CTC model with a
character LM) searched at each beam size without an LM and fused with each given LM, side by side in one run.

For every (beam, LM) the WER on the first ``--clips`` asterisk test clips and on the out-of-domain suite
(``english-ood``, the first ``--ood-per-source`` clips of each source), then the per-utterance latency of all of
them interleaved clip by clip (``speechprune.bench.latency.benchmark`` with one ``DecodeOptions`` per row) on the
first ``--bench-clips`` test clips, with the decoder time split into recognizer and LM (``lm_ms``: the LM's steps).
Results go to ``OUT/results.json`` (evaluations resume from ``OUT/eval/<row>/``).

    python bench/lm_fusion.py --out runs/lm-fusion --lm dense=runs/lm/whisper-bpe/model --lm pruned=DIR \\
        [--recognizer whisper-tiny.en] [--beams 1,4] [--weight 0.3] [--bonus 0.5] [--threads 1]
    python bench/lm_fusion.py --out runs/lm-fusion-ctc --recognizer runs/ctc/whisper/model \\
        --lm dense=runs/lm/chars/model --beams 1,5
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def rows(recognizer: str, lms: dict[str, Path], beams: list[int], weight: float, bonus: float, threads: int):
    """``{row name: (backend, DecodeOptions)}``: one backend object per row (the benchmark names them apart), each
    with its own fused LM (so each row's LM time is its own)."""
    from speechprune.evaluate.backends import load_backend
    from speechprune.models.decoding import DecodeOptions
    from speechprune.models.fusion import load_fusion_lm
    from speechprune.models.registry import resolve_model

    out = {}
    for k in beams:
        for label, folder in [("no-lm", None), *lms.items()]:
            name = f"beam{k}/{label}"
            be = load_backend(recognizer, "torch", threads=threads, name=name)
            lm = None if folder is None else load_fusion_lm(folder, resolve_model(recognizer))
            out[name] = be, DecodeOptions(beam_size=k, lm=lm, lm_weight=weight if lm else 0.0,
                                          lm_bonus=bonus if lm else 0.0)
    return out


def main() -> None:
    import torch

    from speechprune.bench.latency import BenchOptions, benchmark
    from speechprune.data.datasets import load_dataset
    from speechprune.evaluate.runner import eval_settings, evaluate, evaluate_ood
    from speechprune.io import atomic_write_json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recognizer", default="whisper-tiny.en", help="a Whisper model or a CTC model folder")
    ap.add_argument("--lm", action="append", default=[], metavar="LABEL=FOLDER", help="an LM to fuse (repeatable)")
    ap.add_argument("--beams", default="1,4")
    ap.add_argument("--weight", type=float, default=0.3)
    ap.add_argument("--bonus", type=float, default=0.5)
    ap.add_argument("--clips", type=int, default=200, help="asterisk test clips scored")
    ap.add_argument("--ood-per-source", type=int, default=20, help="english-ood clips per source scored")
    ap.add_argument("--bench-clips", type=int, default=20, help="test clips timed side by side")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lms = {}
    for spec in args.lm:
        label, sep, folder = spec.partition("=")
        if not sep or not label or label == "no-lm":
            raise SystemExit(f"--lm {spec!r}: give LABEL=FOLDER (LABEL not 'no-lm')")
        lms[label] = Path(folder)
    table = rows(args.recognizer, lms, [int(b) for b in args.beams.split(",")], args.weight, args.bonus,
                 args.threads)
    utts = load_dataset("asterisk", "test")
    result: dict = {"recognizer": args.recognizer, "lms": {k: str(v) for k, v in lms.items()},
                    "weight": args.weight, "bonus": args.bonus, "threads": args.threads, "rows": {}}
    for name, (be, options) in table.items():
        folder = args.out / "eval" / name.replace("/", "_")
        m = evaluate(be, utts[: args.clips], folder, options, progress=False,
                     settings=eval_settings(args.recognizer, "asterisk", "test", be.name, options, args.clips))
        ood = evaluate_ood(be, args.recognizer, folder / "ood", options, per_source=args.ood_per_source,
                           progress=False)
        result["rows"][name] = {"asterisk_test_wer": m["wer"], "n_utterances": m["n_utterances"],
                                "english_ood_wer": ood["wer"], "english_ood_macro_wer": ood.get("macro_wer"),
                                "english_ood_utterances": ood["n_utterances"]}
        print(json.dumps({name: result["rows"][name]}), flush=True)
    rec = benchmark([be for be, _ in table.values()], utts, {n: o for n, (_, o) in table.items()},
                    BenchOptions(max_utterances=args.bench_clips), threads=args.threads, progress=False)
    for name, b in rec["backends"].items():
        result["rows"][name].update({k: b[k] for k in ("latency_ms_median", "latency_ms_p90", "encoder_ms_median",
                                                       "decoder_ms_median", "lm_ms_median", "tokens_median")})
        print(json.dumps({name: result["rows"][name]}), flush=True)
    result.update(other_cpu_load=rec["other_cpu_load"], environment=rec["environment"])
    atomic_write_json(args.out / "results.json", result)


if __name__ == "__main__":
    main()
