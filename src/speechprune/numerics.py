"""How far apart two floating-point evaluations of the same function may land, from the dtype and the computation.

Two runs of one mathematical function that differ only in the order of their additions (another SIMD width or
blocking on another CPU, fused multiply-adds, another attention kernel, a cached versus an uncached decoder) each
carry rounding errors. For one sum of ``k`` products, the probabilistic bound of Higham and Mary ("A new approach
to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019, Theorem 3.1) holds with probability
at least ``1 - 2 exp(-lam**2 / 2)`` per term:

    |fl(sum) - sum| <= lam * sqrt(k) * u * sum(|x_i * y_i|),    u = eps / 2 (the unit roundoff)

(the worst-case bound is ``k * u`` instead of ``sqrt(k) * u``; it is reached only by adversarial data). Two
orderings each within the bound differ by at most twice it. A network chains ``depth`` such reductions; to first
order their relative errors add, so the bound is multiplied by ``depth``. The result is a relative tolerance:
a comparison scales it by the magnitude of what it compares (``atol = rtol * max|expected|``).

Comparisons of the same computation run twice (a reload, a resumed run) need no tolerance: they are bit-identical
on any CPU, and tests say so with ``torch.equal``.
"""

from __future__ import annotations

import math

# lam = 6: 2 exp(-18) = 3e-8 failure probability per rounding, so a suite of thousands of compared values does not
# flake, while the bound stays ~sqrt(k) times tighter than the worst case.
CONFIDENCE = 6.0


def unit_roundoff(dtype) -> float:
    """``eps / 2`` of a torch or numpy floating dtype (float32: 5.96e-8, float16: 4.88e-4, bfloat16: 3.91e-3)."""
    try:
        import torch

        if isinstance(dtype, torch.dtype):
            return torch.finfo(dtype).eps / 2
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    import numpy as np

    return float(np.finfo(dtype).eps) / 2


def reorder_rtol(dtype, k: int, depth: int = 1, lam: float = CONFIDENCE) -> float:
    """Relative difference two summation orders of a computation may show: its longest reduction has ``k`` terms,
    and ``depth`` reductions are chained (layers times matmuls per layer). See the module docstring."""
    if k < 1 or depth < 1:
        raise ValueError(f"k and depth must be positive, got k={k}, depth={depth}")
    return 2.0 * lam * math.sqrt(k) * unit_roundoff(dtype) * depth


def rounding_rtol(dtype) -> float:
    """Relative error of storing a value in ``dtype`` (round to nearest): the unit roundoff."""
    return unit_roundoff(dtype)


def quantization_rtol(bits: int, depth: int) -> float:
    """Relative error after ``depth`` chained symmetric ``bits``-bit quantized matmuls: each rounds its weights and
    its inputs to half a step of ``max|x| / (2**(bits-1) - 1)``; to first order the two relative errors add per
    matmul and accumulate linearly over the chain. int8, depth 14: 0.11. It assumes sums that do not overflow:
    ONNX Runtime's u8s8 kernels on CPUs without VNNI (AVX2) saturate int16 pair sums of 8-bit weights, which is why
    the ONNX export uses 7-bit weights there (``bench.environment.int8_saturates``; then ``bits=7``)."""
    if bits < 2 or depth < 1:
        raise ValueError(f"bits must be >= 2 and depth >= 1, got bits={bits}, depth={depth}")
    return depth * 2 * 0.5 / (2 ** (bits - 1) - 1)
