import pytest
import torch

from speechprune.numerics import rounding_rtol

from speechprune import importance as I


def test_magnitude_is_the_lp_norm_over_all_slices_of_a_unit():
    a = torch.tensor([[1.0, -2.0], [0.0, 0.5]])  # 2 units
    b = torch.tensor([[3.0], [-1.0]])
    assert I.magnitude([a, b], p=1).tolist() == [6.0, 1.5]
    assert I.magnitude([a, b], p=2).tolist() == pytest.approx([14 ** 0.5, 1.25 ** 0.5])
    with pytest.raises(ValueError):
        I.magnitude([a], p=3)


def test_taylor_is_abs_of_sum_w_times_grad_per_unit():
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    g = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    assert I.taylor([w], [g]).tolist() == [1.0, 1.5]  # |1 - 2|, |1.5|


def test_taylor_is_exact_for_a_loss_linear_in_the_weights():
    torch.manual_seed(0)  # float64: the check is of the math, not of float32 rounding
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    x = torch.randn(8, 3, dtype=torch.float64)
    c = torch.randn(4, dtype=torch.float64)
    loss = lambda weight: ((x @ weight.T) * c).sum()  # noqa: E731
    loss(w).backward()
    est = I.taylor([w.detach()], [w.grad])
    for i in range(4):
        cut = w.detach().clone()
        cut[i] = 0
        # computed in float64, returned in float32: one rounding
        assert float(est[i]) == pytest.approx(abs(float(loss(cut) - loss(w.detach()))), rel=2 * rounding_rtol(torch.float32))


def test_activation_averages_channels_per_unit():
    assert I.activation(torch.tensor([1.0, 3.0, 0.0, 2.0]), unit_size=2).tolist() == [2.0, 1.0]
    with pytest.raises(ValueError):
        I.activation(torch.ones(5), unit_size=2)


def test_layer_normalization_makes_groups_comparable():
    out = I.normalize_per_group({"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([30.0, 40.0])})
    assert torch.allclose(out["a"], out["b"]) and float(out["a"].norm()) == pytest.approx(1.0)
