"""The tolerance formulas, and that a bound derived from them holds for real reorderings and fails real errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from speechprune.numerics import quantization_rtol, reorder_rtol, rounding_rtol, unit_roundoff


def test_unit_roundoffs_of_the_dtypes_we_compare():
    assert unit_roundoff(torch.float32) == 2.0**-24 and unit_roundoff(np.float32) == 2.0**-24
    assert unit_roundoff(torch.float16) == 2.0**-11 and unit_roundoff(torch.bfloat16) == 2.0**-8
    assert rounding_rtol(torch.float64) == 2.0**-53


def test_reorder_bound_grows_with_sqrt_k_and_depth():
    assert reorder_rtol(torch.float32, 1500, 35) == pytest.approx(2 * 6 * math.sqrt(1500) * 2.0**-24 * 35)
    assert reorder_rtol(torch.float32, 400) == pytest.approx(2 * reorder_rtol(torch.float32, 100))
    assert quantization_rtol(8, 14) == pytest.approx(14 / 127)
    for bad in ((0, 1), (4, 0)):
        with pytest.raises(ValueError):
            reorder_rtol(torch.float32, *bad)
    with pytest.raises(ValueError):
        quantization_rtol(1, 3)


def test_the_bound_holds_for_other_summation_orders_and_catches_a_real_error():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4096, generator=g), torch.randn(4096, generator=g)
    exact = (x.double() @ y.double())
    scale = float((x.double().abs() @ y.double().abs()).max())  # sum |x_i y_i|, what the bound is relative to
    orders = [x @ y, (x * y).sum(1), (x * y).flip(1).sum(1), (x * y).view(64, 64, 64).sum(2).sum(1)]
    bound = reorder_rtol(torch.float32, 4096) / 2 * scale  # one order against the exact sum
    for got in orders:
        assert float((got.double() - exact).abs().max()) <= bound
    wrong = (x[:, 1:] * y[1:]).sum(1)  # one term of 4096 dropped
    assert float((wrong.double() - exact).abs().max()) > 10 * bound
