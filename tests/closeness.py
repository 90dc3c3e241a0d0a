"""Float comparisons whose tolerance follows from the dtype and the computation (``speechprune.numerics``), so a
test passes on AVX2, AVX-512 and AMX CPUs alike and still fails on a real difference.

Depths of the tiny test models (``tiny_models``), counted as chained reductions; the longest reduction is over
the 1500 encoder frames (encoder self-attention, decoder cross-attention):
- Whisper encoder: 2 convs + per layer (q/k/v, scores, attention x V, out, fc1, fc2): 2 + 6 L
- Whisper decoder: per layer (self: q/k/v, scores, x V, out; cross: q, scores, x V, out; fc1, fc2) + proj_out: 10 L + 1
- wav2vec2: 2 convs + projection + positional conv + per layer 6 + head: 5 + 6 L
"""

from __future__ import annotations

import json
import os

import torch

from speechprune.numerics import reorder_rtol

FRAMES = 1500  # the longest reduction of a Whisper forward: attention over the encoder frames


def whisper_depth(encoder_layers: int = 2, decoder_layers: int = 2) -> int:
    """Chained reductions of a Whisper forward (0 decoder layers: the encoder alone)."""
    return (2 + 6 * encoder_layers if encoder_layers else 0) + (10 * decoder_layers + 1 if decoder_layers else 0)


WHISPER_ENCODER_DEPTH = whisper_depth(2, 0)
WHISPER_DEPTH = whisper_depth(2, 2)
WAV2VEC2_DEPTH = 5 + 6 * 2
# A comparison looser than this compares nothing: a wrong head or a dropped residual moves outputs by O(1).
LOOSEST_RTOL = 1e-2


def assert_reorder_close(actual, expected, *, k: int, depth: int, dtype=None, msg: str | None = None) -> None:
    """``actual`` equals ``expected`` up to the rounding of two summation orders (``numerics.reorder_rtol``):
    ``rtol`` from the dtype, ``k`` and ``depth``; ``atol = rtol * max|expected|``, since rounding errors scale with
    the magnitude of the summed terms, not of each (possibly cancelling) result."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    rtol = reorder_rtol(dtype or expected.dtype, k, depth)
    if rtol > LOOSEST_RTOL:
        raise AssertionError(f"a tolerance of {rtol:.2g} is too loose to test anything (k={k}, depth={depth})")
    scale = float(expected.detach().abs().max()) if expected.numel() else 0.0
    _log_margin(actual, expected, rtol, scale)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30), msg=msg)


def _log_margin(actual, expected, rtol: float, scale: float) -> None:
    """With ``$SPEECHPRUNE_TOLERANCE_LOG`` set, append how much of the tolerance each comparison used (JSONL)."""
    path = os.environ.get("SPEECHPRUNE_TOLERANCE_LOG")
    if not path or not expected.numel():
        return
    a, e = actual.detach().double(), expected.detach().double().to(actual.device)
    used = float(((a - e).abs() / (rtol * scale + rtol * e.abs())).max())
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"test": test, "rtol": rtol, "max_abs_diff": float((a - e).abs().max()), "scale": scale,
                            "fraction_of_tolerance": used}) + "\n")


def assert_whisper_close(actual, expected, msg: str | None = None) -> None:
    """Outputs of a whole tiny Whisper forward (encoder and decoder), computed two ways."""
    assert_reorder_close(actual, expected, k=FRAMES, depth=WHISPER_DEPTH, msg=msg)


def assert_family_close(family: str, actual, expected, depth: int | None = None) -> None:
    """Outputs of a whole tiny model of ``family`` ("whisper", "wav2vec2") computed two ways; ``depth`` for models
    deeper than the default tiny ones (``whisper_depth``)."""
    depth = depth or (WHISPER_DEPTH if family == "whisper" else WAV2VEC2_DEPTH)
    assert_reorder_close(actual, expected, k=FRAMES, depth=depth)


def parity_bound(check: dict, depth: int = WHISPER_DEPTH, k: int = FRAMES) -> float:
    """The largest max-abs difference an export's parity ``check`` (``speechprune_onnx.json``) may show in float32:
    the reordering tolerance at the scale of its logits."""
    return reorder_rtol(torch.float32, k, depth) * check["logits_scale"]
