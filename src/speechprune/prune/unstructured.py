"""Unstructured pruning on a model's weight sites: masks computed from scores, folded into the weights.

The adapter's ``weight_sites`` names what can be pruned; this module never sees a family's module names. A
finished prune leaves plain tensors with zeros in them: no masks, hooks or parametrizations remain.
"""

from __future__ import annotations

from typing import Iterable, Literal

import torch

from ..models.adapters import adapter_for
from ..models.units import WeightSite
from . import masks as M

DEFAULT_COMPONENTS = ("self_attn", "cross_attn", "ffn")  # the matmul weights inside the layers


def prunable_sites(model, components: Iterable[str] = DEFAULT_COMPONENTS, stacks: Iterable[str] | None = None,
                   layers: Iterable[int] | None = None) -> list[WeightSite]:
    """The model's weight sites of the given components (and stacks, layers); norms are never pruned
    unstructured (a zero scale is not a smaller model), and tied weights are skipped."""
    components, stacks = set(components), None if stacks is None else set(stacks)
    layers = None if layers is None else set(layers)
    out = []
    for s in adapter_for(model).weight_sites(model):
        if s.component not in components or s.component == "norm" or s.tied:
            continue
        if (stacks is not None and s.stack not in stacks) or (layers is not None and s.layer not in layers):
            continue
        out.append(s)
    return out


@torch.no_grad()
def fold_masks(sites: list[WeightSite], masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked weight in place (``masks``: site key -> boolean keep-mask of the weight's shape)."""
    by_key = {s.key: s for s in sites}
    for key, mask in masks.items():
        w = by_key[key].weight
        if mask.shape != w.shape:
            raise ValueError(f"mask for {key} has shape {tuple(mask.shape)}, the weight {tuple(w.shape)}")
        w.mul_(mask.to(device=w.device, dtype=w.dtype))


def magnitude_scores(sites: list[WeightSite]) -> dict[str, torch.Tensor]:
    """``|W|`` per weight (L1 magnitude)."""
    return {s.key: s.weight.detach().abs() for s in sites}


def magnitude_prune(model, sparsity: float, components: Iterable[str] = DEFAULT_COMPONENTS,
                    scope: Literal["layer", "global"] = "layer", **where) -> dict[str, float]:
    """L1 magnitude pruning of ``components`` to ``sparsity``, per tensor (``layer``) or over all of them
    (``global``); returns the sparsity reached per site key."""
    sites = prunable_sites(model, components, **where)
    scores = magnitude_scores(sites)
    masks = M.layer_masks(scores, sparsity) if scope == "layer" else M.global_masks(scores, sparsity)
    fold_masks(sites, masks)
    return {s.key: float((s.weight == 0).float().mean()) for s in sites}
