"""Calibration: run a model on a few batches and turn what it sees into unit scores.

Hooks used to read activations are owned by :func:`activation_monitor`, a context manager that removes them on
exit, error or not; nothing calibration adds survives in the model.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from .. import importance as I
from ..errors import ConfigError
from ..models.units import Adapter, UnitGroup


@contextmanager
def activation_monitor(groups: list[UnitGroup]) -> Iterator[dict[str, torch.Tensor]]:
    """Accumulate the mean ``|x|`` per channel at each group's activation site; yields ``{key: mean}``,
    filled in as batches run (means over every token of every batch seen)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    means: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(key: str):
        def hook(module, args):
            x = args[0].detach()
            flat = x.reshape(-1, x.shape[-1]).abs().double()
            sums[key] = sums.get(key, 0) + flat.sum(dim=0)
            counts[key] = counts.get(key, 0) + flat.shape[0]
            means[key] = (sums[key] / counts[key]).float()

        return hook

    try:
        for g in groups:
            if g.activation_site is None:
                raise ConfigError(f"{g.key} has no activation site for activation-based importance")
            handles.append(g.activation_site.register_forward_pre_hook(hook_for(g.key)))
        yield means
    finally:
        for h in handles:
            h.remove()


def _loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    out = model(**batch)
    if getattr(out, "loss", None) is None:
        raise ConfigError("calibration batches must carry labels so the model returns a loss")
    return out.loss


def score_groups(model: torch.nn.Module, adapter: Adapter, criterion: str, batches: list[dict] | None = None,
                 normalize: str = "layer", seed: int = 0) -> dict[str, torch.Tensor]:
    """One score per unit for every unit group of ``model``: ``{group key: [n_units]}``."""
    if criterion not in I.CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose from {', '.join(I.CRITERIA)}")
    if normalize not in I.NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalize!r}; choose from {', '.join(I.NORMALIZATIONS)}")
    groups = adapter.unit_groups(model)
    if criterion in ("taylor", "activation") and not batches:
        raise ConfigError(f"criterion {criterion!r} needs calibration data")
    if criterion == "magnitude":
        scores = {g.key: I.magnitude([s.per_unit() for s in g.params]) for g in groups}
    elif criterion == "random":
        gen = torch.Generator().manual_seed(seed)
        scores = {g.key: I.random_scores(g.n_units, gen) for g in groups}
    elif criterion == "activation":
        was_training = model.training
        model.eval()
        with activation_monitor(groups) as means, torch.no_grad():
            for b in batches:
                model(**b)
        model.train(was_training)
        scores = {g.key: I.activation(means[g.key], g.unit_size) for g in groups}
    else:  # taylor
        scores = {g.key: torch.zeros(g.n_units) for g in groups}
        was_training = model.training
        model.eval()  # no dropout: the gradient of the deterministic model
        with torch.enable_grad():
            for b in batches:
                model.zero_grad(set_to_none=True)
                _loss(model, b).backward()
                for g in groups:
                    grads = [s.per_unit(s.param.grad if s.param.grad is not None else torch.zeros_like(s.param))
                             for s in g.params]
                    scores[g.key] += I.taylor([s.per_unit() for s in g.params], grads)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return I.normalize_per_group(scores) if normalize == "layer" else scores
