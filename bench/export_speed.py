"""Pruned + exported Whisper against faster-whisper, on real speech, in one run: accuracy, latency, FLOP bound.

Exports the pruned folder (and, for reference, the dense model) to ONNX Runtime int8 (with and without the
restricted English output vocabulary) and to CTranslate2 int8; scores each on the test split and on the
out-of-domain suite (english-ood: speakers no recovery reads), one shared front end;
then times them side by side, interleaved utterance by utterance, next to dense PyTorch and faster-whisper int8 on
the original tiny.en files. Each backend's median time is also given as a multiple of its own FLOP lower bound:
its FLOPs per utterance divided by this machine's measured GEMM peak (fp32 for float backends; for int8 ones the
int8 peak for the quantized products, fp32 for the encoder's convolutions and attention products).
Writes ``OUT/export_speed.json`` (stages resume: exports and evaluations already present are reused).

    .venv/bin/python bench/export_speed.py --pruned runs/main/prune/step-1 --out runs/export-speed
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from speechprune.bench.latency import BenchOptions, benchmark
from speechprune.data.datasets import load_dataset
from speechprune.evaluate.backends import load_backend
from speechprune.evaluate.runner import evaluate_with_ood, ood_fields
from speechprune.io import atomic_write_json
from speechprune.models.decoding import DecodeOptions
from speechprune.models.registry import resolve_model


def gemm_peak_flops(threads: int, n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Measured dense GEMM throughput (FLOP/s) on this machine: fp32 (torch) and int8 (ONNX Runtime MatMulInteger)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        t.append(time.perf_counter() - t0)
    fp32 = 2 * n**3 / float(np.median(t))

    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "mmi",
        [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("B", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {"A": np.random.randint(0, 255, (n, n), dtype=np.uint8),
             "B": np.random.randint(-127, 127, (n, n), dtype=np.int8)}
    for _ in range(2):
        sess.run(None, feeds)
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        t.append(time.perf_counter() - t0)
    return {"fp32": fp32, "int8": 2 * n**3 / float(np.median(t))}


def _export(kind: str, src: Path, out: Path, **kw) -> Path:
    if (out / ("speechprune_onnx.json" if kind == "onnx" else "model.bin")).exists():
        return out
    if kind == "onnx":
        from speechprune.export.onnx import export_onnx

        export_onnx(src, out, overwrite=True, **kw)
    else:
        from speechprune.export.ct2 import export_ct2

        export_ct2(src, out, overwrite=True, **kw)
    return out


def flop_bound_ms(row: dict, peak: dict[str, float], int8: bool) -> float:
    """A backend's lower bound on its median utterance time: its FLOPs at this machine's measured GEMM peak. For int8
    backends only the quantized matrix products run at the int8 peak; the encoder's convolution stem and attention
    products (activation x activation: nothing to quantize) count at the fp32 peak."""
    total = row["flops_per_utterance_median"]
    if not int8:
        return total / peak["fp32"] * 1e3
    br = row["flops_encoder_breakdown"]
    fp32 = br["conv"] + br["attn_scores"]
    return (fp32 / peak["fp32"] + (total - fp32) / peak["int8"]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pruned", type=Path, required=True, help="a pruned (or dense) Whisper folder")
    ap.add_argument("--dense", default="whisper-tiny.en", help="the bundled model it was pruned from")
    ap.add_argument("--out", type=Path, default=Path("runs/export-speed"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--utterances", type=int, default=20, help="utterances timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ood-per-source", type=int, default=None,
                    help="score only the first N clips of each out-of-domain source (a quick look, not a result)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out, threads = args.out, args.threads
    dense_dir = resolve_model(args.dense)

    from transformers import WhisperTokenizerFast

    from speechprune.export.vocab import english_output_vocab

    english = english_output_vocab(WhisperTokenizerFast.from_pretrained(dense_dir, local_files_only=True))
    folders = {
        "onnx-int8-dense": ("onnx", _export("onnx", dense_dir, out / "onnx-int8-dense", quantize=True)),
        "onnx-int8-pruned": ("onnx", _export("onnx", args.pruned, out / "onnx-int8-pruned", quantize=True)),
        "onnx-int8-pruned-en": ("onnx", _export("onnx", args.pruned, out / "onnx-int8-pruned-en", quantize=True,
                                                output_vocab=english)),
        "ct2-int8-pruned": ("faster-whisper", _export("ct2", args.pruned, out / "ct2-int8-pruned",
                                                      quantization="int8")),
    }

    def backend(name: str):
        if name == "torch-dense":
            return load_backend(args.dense, "torch")
        if name == "torch-pruned":
            return load_backend(str(args.pruned), "torch")
        if name == "faster-whisper-int8":
            return load_backend(args.dense, "faster-whisper", compute_type="int8", threads=threads)
        kind, folder = folders[name]
        return load_backend(str(folder), kind, compute_type="int8", threads=threads)

    names = ["faster-whisper-int8", "torch-dense", "torch-pruned", *folders]
    backends = {n: backend(n) for n in names}
    for n, be in backends.items():
        be.name = n  # one name per model in the side-by-side record
    test = load_dataset("asterisk", "test")
    wer = {}
    for n, be in backends.items():
        m = evaluate_with_ood(be, test, out / "eval" / n, n, "asterisk", "test", ood_per_source=args.ood_per_source)
        wer[n] = {"wer": m["wer"], "cer": m["cer"], "n_utterances": m["n_utterances"], **ood_fields(m)}
        print(f"{n}: WER {100 * m['wer']:.2f} % asterisk test, {100 * m['ood']['wer']:.2f} % out of domain "
              f"(english-ood, pooled)", flush=True)

    peak = gemm_peak_flops(threads)
    record = benchmark(list(backends.values()), test, DecodeOptions(), BenchOptions(2, args.repeats, args.utterances),
                       threads=threads)
    fw = record["backends"]["faster-whisper-int8"]["latency_ms_median"]
    rows = {}
    for n, r in record["backends"].items():
        bound_ms = flop_bound_ms(r, peak, int8="int8" in n)
        rows[n] = {**wer[n], "latency_ms_median": r["latency_ms_median"], "encoder_ms_median": r["encoder_ms_median"],
                   "decoder_first_step_ms_median": r["decoder_first_step_ms_median"],
                   "decoder_ms_per_token": r["decoder_ms_per_token"], "flops_encoder": r["flops_encoder"],
                   "flops_per_utterance_median": r["flops_per_utterance_median"], "params": r["params"],
                   "disk_bytes": r["disk_bytes"], "speedup_vs_faster_whisper_int8": fw / r["latency_ms_median"],
                   "flop_bound_ms": bound_ms, "time_over_flop_bound": r["latency_ms_median"] / bound_ms}
    result = {"pruned": str(args.pruned), "threads": threads, "ood_per_source": args.ood_per_source, "gemm_peak_flops": peak, "rows": rows,
              "other_cpu_load": record["other_cpu_load"], "environment": record["environment"], "bench": record}
    atomic_write_json(out / "export_speed.json", result)
    print(f"{'backend':24} {'WER %':>6} {'OOD %':>6} {'ms/utt':>7} {'enc ms':>7} {'ms/tok':>7} {'x fw':>6} {'x bound':>8}")
    for n, r in rows.items():
        print(f"{n:24} {100 * r['wer']:6.2f} {100 * r['wer_ood']:6.2f} {r['latency_ms_median']:7.1f} {r['encoder_ms_median']:7.1f} "
              f"{r['decoder_ms_per_token'] or 0:7.2f} {r['speedup_vs_faster_whisper_int8']:6.2f} "
              f"{r['time_over_flop_bound']:8.2f}")
    print(f"GEMM peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, int8 {peak['int8'] / 1e9:.0f} GOP/s; "
          f"other CPU load {record['other_cpu_load']:.2f}; wrote {out / 'export_speed.json'}")


if __name__ == "__main__":
    main()
