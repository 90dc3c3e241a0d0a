"""Importance criteria: pure functions from tensors to one score per unit (higher = more important).

Each takes per-unit views (``[n_units, -1]``, see :meth:`speechprune.models.units.ParamSlice.per_unit`) and
knows nothing of models. Collecting gradients and activations is :mod:`speechprune.prune.calibrate`'s job.
"""

from __future__ import annotations

from typing import Sequence

import torch

CRITERIA = ("magnitude", "taylor", "activation", "random")
NORMALIZATIONS = ("layer", "global")


def magnitude(weights: Sequence[torch.Tensor], p: int = 1) -> torch.Tensor:
    """Lp norm of all the weights a unit owns (L1 by default), over every tensor it has a slice of."""
    if p not in (1, 2):
        raise ValueError(f"p must be 1 or 2, got {p}")
    total = sum(w.detach().abs().pow(p).sum(dim=1, dtype=torch.float64) for w in weights)
    return total.pow(1.0 / p).float()


def taylor(weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """First-order Taylor estimate of the loss change when a unit is removed: ``|sum(w * dL/dw)|`` over its
    weights (Molchanov et al., 2019). Accumulate over calibration batches by summing per-batch scores."""
    if len(weights) != len(grads):
        raise ValueError("one gradient per weight tensor")
    return sum((w.detach().double() * g.detach().double()).sum(dim=1) for w, g in zip(weights, grads)).abs().float()


def activation(mean_abs_input: torch.Tensor, unit_size: int) -> torch.Tensor:
    """Mean absolute activation of each unit's output, from the mean ``|x|`` per channel at the unit group's
    activation site (the input of ``out_proj`` for heads, of ``fc2`` for FFN neurons)."""
    x = mean_abs_input.detach().float()
    if x.numel() % unit_size:
        raise ValueError(f"{x.numel()} channels do not split into units of {unit_size}")
    return x.view(-1, unit_size).mean(dim=1)


def random_scores(n_units: int, generator: torch.Generator) -> torch.Tensor:
    """A baseline: uniformly random scores."""
    return torch.rand(n_units, generator=generator)


def normalize_per_group(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Make scores comparable across groups: each group's scores divided by their L2 norm (Molchanov et al.).
    Without it (``global``), raw magnitudes decide, and layers with larger weights keep more units."""
    return {k: v / v.norm().clamp_min(1e-12) for k, v in scores.items()}
