"""Which units to keep, given scores: pure functions over ``{group key: scores}`` dicts.

A group key is ``"<stack>.<layer>.<kind>"`` (see :class:`speechprune.models.units.UnitGroup`). Every function
returns ``{key: sorted indices to keep}``; a group with an empty keep list is to be removed as a whole module.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {ratio}")


def keep_top(scores: torch.Tensor, n_keep: int) -> list[int]:
    """Indices (sorted) of the ``n_keep`` highest scores."""
    # stable: ties broken by index, so a selection is reproducible
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:n_keep])


def per_group(scores: dict[str, torch.Tensor], ratio: float) -> dict[str, list[int]]:
    """Remove ``round(ratio * n)`` units from every group (at least one unit always stays)."""
    _check_ratio(ratio)
    return {k: keep_top(s, max(1, len(s) - round(ratio * len(s)))) for k, s in scores.items()}


def global_(scores: dict[str, torch.Tensor], ratio: float, min_keep: int = 1) -> dict[str, list[int]]:
    """Remove the ``ratio`` lowest-scoring units over all groups together, keeping ``min_keep`` per group.

    With ``min_keep=0`` a group may lose every unit (then it is removed as a module)."""
    _check_ratio(ratio)
    flat = [(float(v), k, i) for k, s in scores.items() for i, v in enumerate(s)]
    n_remove = round(ratio * len(flat))
    removed: dict[str, set[int]] = {k: set() for k in scores}
    for v, k, i in sorted(flat, key=lambda t: (t[0], t[1], t[2])):
        if n_remove == 0:
            break
        if len(scores[k]) - len(removed[k]) > min_keep:
            removed[k].add(i)
            n_remove -= 1
    return {k: [i for i in range(len(s)) if i not in removed[k]] for k, s in scores.items()}


def local(scores: dict[str, torch.Tensor], ratio: float) -> dict[str, list[int]]:
    """Locality-preserving selection: take the ``ratio`` of units from as few groups as possible.

    Groups are emptied whole, least important first (by mean score), so whole blocks disappear, which is where
    latency falls; the last group touched loses only its lowest-scoring units."""
    _check_ratio(ratio)
    total = sum(len(s) for s in scores.values())
    budget = round(ratio * total)
    keep = {k: list(range(len(s))) for k, s in scores.items()}
    for k in sorted(scores, key=lambda k: (float(scores[k].mean()), k)):
        if budget == 0:
            break
        n = len(scores[k])
        if budget >= n:
            keep[k] = []
            budget -= n
        else:
            keep[k] = keep_top(scores[k], n - budget)
            budget = 0
    return keep


def rank_layers(layer_scores: dict[int, float], n_remove: int) -> list[int]:
    """The ``n_remove`` least important layers (sorted indices)."""
    if not 0 <= n_remove < len(layer_scores):
        raise ConfigError(f"cannot remove {n_remove} of {len(layer_scores)} layers (at least one must stay)")
    order = sorted(layer_scores, key=lambda i: (layer_scores[i], i))
    return sorted(order[:n_remove])


def step_ratios(target: float, steps: int) -> list[float]:
    """Sparsity after each of ``steps`` incremental steps, as fractions of the ORIGINAL units, ending at
    ``target``: a geometric schedule (each step removes the same share of what is left)."""
    _check_ratio(target)
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    keep = 1.0 - target
    return [1.0 - math.pow(keep, (i + 1) / steps) for i in range(steps)]
