"""Numerics chosen by the machine: which dtype each part of a model runs fastest in on this CPU (issue 18).

CPUs of one machine kind differ: on an Intel Xeon with AMX a bf16 GEMM runs ~9x faster than fp32, on an AMD EPYC with
AVX2 only ~50-300x slower. So a backend does not assume; it measures. Each part of a model (Whisper: the encoder, a
GEMM over its positions; the decoder, one token at a time, its vocabulary projection included) is probed with the GEMM
that dominates it, in every candidate dtype, on this machine and thread count, and runs in the fastest one that is
faster than float32 by ``MARGIN`` (a tie keeps float32: it is the reference). The probe is short (a few ms per dtype,
a slow dtype is timed once on a cut-down GEMM and stopped there) and cached per process.

``choose`` is the pure decision; ``probe_rates`` the measurement; ``PartChoice`` what a bench record says (the dtype,
every measured rate, why). The accuracy of a choice is checked by the backend that applies it (the part's outputs in
the chosen dtype against float32 on one input, ``check_error``) and by the WER its evaluation reports.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

import torch

from ..errors import ConfigError

CANDIDATES = ("float32", "bfloat16")  # what a PyTorch backend can run a part in (int8: the ONNX Runtime export)
MARGIN = 1.2  # a lower precision must be this much faster than float32 to be chosen
MAX_RELATIVE_ERROR = 0.05  # a part whose output moves more than this (relative, max-norm) in the chosen dtype: fp32
PROBE_SECONDS = 0.02  # time spent timing one dtype of one GEMM, at most (after one untimed call)
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a candidate name (a one-line ``ConfigError`` for any other)."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown numerics {name!r}; choose from auto, {', '.join(CANDIDATES)}") from None


@dataclass(frozen=True)
class PartChoice:
    """The dtype one part runs in, the GFLOP/s measured for each candidate on its GEMM, and why."""

    dtype: str
    gflops: dict[str, float]
    why: str

    def record(self) -> dict:
        return asdict(self)


def choose(rates: dict[str, float], margin: float = MARGIN) -> tuple[str, str]:
    """``(dtype, why)``: the fastest candidate whose measured rate beats float32's by ``margin``, else float32.
    ``rates``: GFLOP/s per dtype name (float32 must be among them)."""
    if "float32" not in rates:
        raise ValueError("the float32 rate is the reference and must be measured")
    ref = rates["float32"]
    best = max(rates, key=lambda d: rates[d])
    if best != "float32" and rates[best] >= margin * ref:
        return best, f"{best} {rates[best] / ref:.1f}x float32's rate on this CPU"
    slowest = min(rates, key=lambda d: rates[d])
    if slowest != "float32":
        return "float32", f"{slowest} {ref / max(rates[slowest], 1e-9):.1f}x slower than float32 on this CPU"
    return "float32", "no lower precision faster by the margin on this CPU"


def _time_gemm(m: int, k: int, n: int, dtype: torch.dtype, seconds: float) -> float:
    """GFLOP/s of ``[m, k] @ [k, n]`` in ``dtype``: one untimed call, then calls until ``seconds`` have passed (at
    least one timed call)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(dtype)
    b = torch.randn(k, n, generator=g).to(dtype)
    with torch.inference_mode():
        a @ b
        calls, t0 = 0, time.perf_counter()
        while True:
            a @ b
            calls += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= seconds:
                break
    return 2.0 * m * k * n * calls / elapsed / 1e9


@functools.lru_cache(maxsize=64)
def probe_rates(m: int, k: int, n: int, candidates: tuple[str, ...] = CANDIDATES, threads: int = 0,
                seconds: float = PROBE_SECONDS) -> dict[str, float]:
    """GFLOP/s of the GEMM ``[m, k] @ [k, n]`` in each candidate dtype on this machine at ``threads`` (0: torch's
    current setting, part of the cache key only). ``m`` is capped at 256 rows: the relative speed of dtypes is
    settled by then, and a dtype 300x slower would otherwise take seconds to time."""
    m = max(1, min(int(m), 256))
    return {name: _time_gemm(m, k, n, torch_dtype(name), seconds) for name in candidates}


SLOW_FORCED = 10.0  # a forced dtype this many times slower than float32 on this CPU is refused


def choose_part(m: int, k: int, n: int, requested: str = "auto", threads: int = 0,
                rates: dict[str, float] | None = None) -> PartChoice:
    """The dtype of a part whose cost is the GEMM ``[m, k] @ [k, n]``, from ``rates`` (default: measured here) when
    ``requested`` is ``auto``. A forced dtype is kept with the measurement beside it, unless this CPU runs it more
    than ``SLOW_FORCED`` times slower than float32: then a one-line ``ConfigError`` says so."""
    if requested != "auto":
        torch_dtype(requested)  # a one-line error for an unknown name
    rates = rates if rates is not None else probe_rates(m, k, n, CANDIDATES, threads)
    if requested == "auto":
        dtype, why = choose(rates)
        return PartChoice(dtype, rates, why)
    ratio = rates[requested] / rates["float32"]
    if ratio * SLOW_FORCED < 1:
        raise ConfigError(f"numerics {requested} runs {1 / ratio:.0f}x slower than float32 on this CPU (measured on "
                          f"up to 256 rows of this part's {m}x{k}x{n} GEMM); use auto or float32")
    return PartChoice(requested, rates, f"forced; {ratio:.2g}x float32's rate on this CPU")


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max|got - want| / max|want|`` in float32."""
    want = want.float()
    return float((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-12))


def check_error(choice: PartChoice, error: float, limit: float = MAX_RELATIVE_ERROR) -> PartChoice:
    """``choice`` with its measured output error noted; an automatic low-precision choice whose error exceeds
    ``limit`` falls back to float32 (reported in ``why``); a forced one is kept and says so."""
    if choice.dtype == "float32":
        return choice
    note = f"; output {error:.2%} from float32"
    if error <= limit or choice.why.startswith("forced"):
        return PartChoice(choice.dtype, choice.gflops, choice.why + note)
    return PartChoice("float32", choice.gflops, f"{choice.dtype} rejected{note} (> {limit:.0%})")
