"""Per-part numerics of a Whisper ONNX export, chosen by the machine (``export_onnx(quantize="auto")``).

A Whisper export has three parts whose best number format differs by CPU and by shape: the **encoder** (large GEMMs
over the clip's positions), the **decoder** body (one row per step: small GEMVs whose activations ONNX Runtime's
dynamic quantization must quantize on every call) and the **vocabulary** projection (the decoder's largest matrix,
``d_model x vocabulary``, read once per token: memory-bound, where int8 reads a quarter of the bytes). So each part is
exported in float32 and int8, each variant timed here on the graph it lives in (the encoder on a window; a decoder
step after a prefill, with the decoder body and the vocabulary projection quantized together, apart or not at all)
and checked against float32 on the same input. A part takes int8 only where that is ``MARGIN`` times faster and its
output moves less than ``MAX_INT8_ERROR`` (max-norm relative); the manifest records the times, errors and why.

The choice is :func:`choose_variant` (pure); :func:`probe_parts` measures; :func:`vocabulary_nodes` finds the
projection's MatMul in a decoder graph (the node that ``nodes_to_exclude`` keeps in float32).
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Hashable

import numpy as np

from ..models.precision import MARGIN, relative_error

PARTS = ("encoder", "decoder", "vocabulary")
# A proxy for "decodes the same", measured on one input: real tiny.en with 7-bit weights (AVX2 EPYC) moves 3.5 % in
# its int8 encoder and 12 % in a step's logits with the whole decoder in int8 (4.4 % body only, 9.9 % projection
# only), and that all-int8 export costs +0.3 WER points (docs/design.md); a part that moves more than this went wrong.
MAX_INT8_ERROR = 0.15
PROBE_SECONDS = 0.3  # timing budget per variant (after one untimed run), at least 3 runs


def choose_variant(ms: dict[Hashable, float], errors: dict[Hashable, float], reference: Hashable,
                   margin: float = MARGIN, limit: float = MAX_INT8_ERROR) -> tuple[Hashable, str]:
    """``(variant, why)``: the fastest variant whose output moved at most ``limit`` from ``reference`` (float32) and
    that beats it by ``margin``; else ``reference``. ``ms``: median milliseconds per variant (reference included);
    ``errors``: relative output error per variant other than the reference."""
    ok = [k for k in ms if k == reference or errors[k] <= limit]
    rejected = sorted((k for k in ms if k not in ok), key=str)
    best = min(ok, key=lambda k: ms[k])
    if best != reference and ms[reference] >= margin * ms[best]:
        return best, (f"{ms[reference] / ms[best]:.2f}x faster than float32 on this CPU; output {errors[best]:.2%} "
                      f"from float32")
    why = "no int8 variant faster than float32 by the margin on this CPU"
    if rejected:
        why += "; rejected for accuracy: " + ", ".join(f"{k} ({errors[k]:.2%})" for k in rejected)
    return reference, why


def vocabulary_nodes(path: str | Path, output: str = "logits") -> list[str]:
    """Names of the MatMul/Gemm nodes that compute ``output`` in the graph at ``path`` (walking back through
    reshapes, casts and the like, at most a few hops): the vocabulary projection."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    name = output
    for _ in range(8):
        node = producer.get(name)
        if node is None:
            return []
        if node.op_type in ("MatMul", "Gemm"):
            return [node.name] if node.name else []
        name = node.input[0]
    return []


def _error(got: np.ndarray, want: np.ndarray) -> float:
    """``models.precision.relative_error`` (max-norm, relative) of ONNX Runtime outputs."""
    import torch

    return relative_error(torch.from_numpy(np.asarray(got)), torch.from_numpy(np.asarray(want)))


def median_ms(session, feed: dict, seconds: float = PROBE_SECONDS) -> float:
    """Median milliseconds of ``session.run`` on ``feed``: one untimed run, then runs until ``seconds`` (>= 3)."""
    session.run(None, feed)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def probe_parts(folder: Path, quantize, io, prompt: list[int], n_mels: int, n_frames: int,
                threads: int | None = None) -> dict:
    """Time and check every part of the float32 graphs in ``folder`` against int8 and return the choice per part:
    ``{"encoder": {...}, "decoder": {...}, "vocabulary": {...}}``, each with ``dtype``, the variants' ``ms`` and
    ``errors``, and ``why``. ``quantize(src, dst, exclude=[...], include=[...] | None)`` writes one int8 variant
    (``export.onnx.quantize_dynamic_graph``). The chosen encoder and decoder-step variants replace the float32 graphs
    in ``folder`` (the prefill graph is left to ``quantize_graphs``); the other probe files are removed."""
    import shutil

    from ..evaluate.onnx_backend import session_options

    import onnxruntime as ort

    probe = folder / ".numerics-probe"
    probe.mkdir(exist_ok=True)
    so = session_options(threads)

    def session(path: Path):
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])

    try:
        rng = np.random.default_rng(0)
        feats = rng.standard_normal((1, n_mels, n_frames)).astype(np.float32)
        enc_f = session(folder / "encoder.onnx")
        quantize(folder / "encoder.onnx", probe / "encoder.int8.onnx", exclude=[])
        enc_q = session(probe / "encoder.int8.onnx")
        feed = {"input_features": feats}
        (hidden,) = enc_f.run(None, feed)
        enc_ms = {"float32": median_ms(enc_f, feed), "int8": median_ms(enc_q, feed)}
        enc_err = {"int8": _error(enc_q.run(None, feed)[0], hidden)}
        enc_choice, enc_why = choose_variant(enc_ms, enc_err, "float32")

        # a decoder step after a prefill of the prompt and two tokens, on the float32 encoder's states
        ids = np.array([prompt + [int(t) for t in rng.integers(0, 50, 2)]], dtype=np.int64)
        first = session(folder / "decoder_prefill.onnx").run(None, {"input_ids": ids, "encoder_hidden": hidden})
        step_feed = {"input_ids": np.array([[int(rng.integers(0, 50))]], dtype=np.int64),
                     "position": np.array([ids.shape[1]], dtype=np.int64)}
        step_feed.update(zip(io.past_self_cache + io.cross_cache, first[1:]))
        step_path = folder / "decoder_step.onnx"
        vocab = vocabulary_nodes(step_path)
        variants = {("float32", "float32"): step_path}
        for body, proj in (("int8", "int8"), ("int8", "float32"), ("float32", "int8")):
            if proj != body and not vocab:  # the projection cannot be told apart: both or neither
                continue
            dst = probe / f"decoder_step.{body}-{proj}.onnx"
            if body == proj:
                quantize(step_path, dst, exclude=[])
            elif proj == "float32":
                quantize(step_path, dst, exclude=vocab)
            else:
                quantize(step_path, dst, exclude=[], include=vocab)
            variants[(body, proj)] = dst
        ref = session(step_path).run(None, step_feed)[0]
        dec_ms, dec_err = {}, {}
        for key, path in variants.items():
            s = session(path)
            dec_ms[key] = median_ms(s, step_feed)
            if key != ("float32", "float32"):
                dec_err[key] = _error(s.run(None, step_feed)[0], ref)
        (body, proj), dec_why = choose_variant(dec_ms, dec_err, ("float32", "float32"))
        # the chosen variants are the graphs the export keeps: no second quantization of the same graph
        if enc_choice == "int8":
            os.replace(probe / "encoder.int8.onnx", folder / "encoder.onnx")
        if (body, proj) != ("float32", "float32"):
            os.replace(variants[(body, proj)], step_path)
    finally:
        shutil.rmtree(probe, ignore_errors=True)

    def named(d: dict) -> dict:
        return {f"decoder {b}, vocabulary {p}": v for (b, p), v in d.items()}

    step = {"ms": named(dec_ms), "errors": named(dec_err), "measured_on": "one decoder step (batch 1)",
            "why": dec_why}
    return {
        "encoder": {"dtype": enc_choice, "ms": enc_ms, "errors": enc_err, "why": enc_why,
                    "measured_on": f"one clip, {n_frames} frames"},
        "decoder": {"dtype": body, **step},
        "vocabulary": {"dtype": proj, **step, "separable": bool(vocab)},
    }
