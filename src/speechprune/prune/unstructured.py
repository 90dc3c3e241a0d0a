"""Unstructured pruning on a model's weight sites: masks computed from scores, folded into the weights.

The adapter's ``weight_sites`` names what can be pruned; this module never sees a family's module names. A
finished prune leaves plain tensors with zeros in them: no masks, hooks or parametrizations remain.

``sparsify`` is the one-shot driver: it collects what the criterion needs on calibration batches (gradients of a
teacher-forced loss on the dense model's own labels for Taylor; input-channel norms, read by forward pre-hooks that
:func:`input_norm_monitor` owns, for Wanda), turns the scores into masks (per tensor, global, per output row, or
N:M) and folds them. Iterative magnitude pruning with rewinding is :mod:`speechprune.prune.imp`.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterable, Iterator, Literal

import torch

from ..errors import ConfigError
from ..importance import weights as W
from ..models.adapters import adapter_for
from ..models.units import WeightSite
from . import masks as M

if TYPE_CHECKING:
    from .sparse_recipe import SparsifyRecipe

# distillation extras in labelled batches: everything else in a batch is a forward argument of its family's model
DISTILLATION_EXTRAS = ("teacher_logits", "teacher_encoder", "teacher_hidden")

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


# --------------------------------------------------------------------------------------------------------------
# Calibration: input norms (Wanda) and gradients (Taylor)


def model_inputs(batch: dict, device) -> dict:
    """A labelled batch as forward keyword arguments on ``device`` (distillation extras dropped)."""
    return {k: v.to(device) for k, v in batch.items() if k not in DISTILLATION_EXTRAS}


@contextmanager
def input_norm_monitor(sites: list[WeightSite]) -> Iterator[dict[str, torch.Tensor]]:
    """Accumulate the L2 norm of every input channel of each site's module over every token of every batch run
    inside the block; yields ``{site key: [in_channels]}`` (filled in as batches run). The forward pre-hooks it
    adds are removed on exit, error or not."""
    sumsq: dict[str, torch.Tensor] = {}
    norms: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(key: str, conv: bool):
        def hook(module, args, kwargs):
            x = (args[0] if args else next(iter(kwargs.values()))).detach()
            if conv:  # [batch, channels, time]: channels on dim 1
                x = x.transpose(1, -1)
            flat = x.reshape(-1, x.shape[-1]).double()
            sumsq[key] = sumsq.get(key, 0) + flat.pow(2).sum(dim=0)
            norms[key] = sumsq[key].sqrt().float()

        return hook

    try:
        for s in sites:
            conv = isinstance(s.module, torch.nn.modules.conv._ConvNd)
            if not conv and not isinstance(s.module, torch.nn.Linear):
                raise ConfigError(f"{s.key} is a {type(s.module).__name__}: input norms need a Linear or Conv")
            handles.append(s.module.register_forward_pre_hook(hook_for(s.key, conv), with_kwargs=True))
        yield norms
    finally:
        for h in handles:
            h.remove()


def _loss(model, batch: dict) -> torch.Tensor:
    out = model(**batch)
    if getattr(out, "loss", None) is None:
        raise ConfigError("calibration batches must carry labels so the model returns a loss")
    return out.loss


def weight_scores(model, sites: list[WeightSite], criterion: str, batches: list[dict] | None = None,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """One score per weight for every site (``{key: tensor of the weight's shape}``; higher = keep):
    ``magnitude`` needs no data; ``taylor`` sums ``|W * dL/dW|`` over ``batches`` (labelled: the model returns a
    loss); ``wanda`` runs ``batches`` to measure each input channel's norm."""
    from tqdm import tqdm

    if criterion not in W.WEIGHT_CRITERIA:
        raise ConfigError(f"unknown criterion {criterion!r}; choose from {', '.join(W.WEIGHT_CRITERIA)}")
    if criterion == "magnitude":
        return {s.key: W.magnitude(s.weight) for s in sites}
    if not batches:
        raise ConfigError(f"criterion {criterion!r} needs calibration data")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the deterministic model's activations and gradients
    bar = tqdm(batches, desc=f"calibrate ({criterion})", unit="batch", disable=not progress, dynamic_ncols=True)
    try:
        if criterion == "wanda":
            with input_norm_monitor(sites) as norms, torch.no_grad():
                for b in bar:
                    model(**model_inputs(b, device))
            missing = [s.key for s in sites if s.key not in norms]
            if missing:
                raise ConfigError(f"calibration never reached {missing[0]}")
            return {s.key: W.wanda(s.weight, norms[s.key]) for s in sites}
        scores = {s.key: torch.zeros(s.weight.shape) for s in sites}
        with torch.enable_grad():
            for b in bar:
                model.zero_grad(set_to_none=True)
                _loss(model, model_inputs(b, device)).backward()
                for s in sites:
                    g = s.weight.grad
                    if g is not None:
                        scores[s.key] += W.taylor(s.weight, g).cpu()
        return scores
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


def select_masks(scores: dict[str, torch.Tensor], scope: str = "layer", sparsity: float | None = None,
                 nm: tuple[int, int] | None = None, prior: dict[str, torch.Tensor] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Keep-masks from scores: ``sparsity`` per tensor (``layer``), over all tensors (``global``) or per output row
    (``row``), or an ``nm`` pattern (N of every M inputs). Weights already pruned (``prior`` False) score lowest,
    so the new masks contain none of them again as long as the sparsity does not fall."""
    if (sparsity is None) == (nm is None):
        raise ValueError("give exactly one of sparsity or nm")
    if prior is not None:
        scores = {k: v.float().masked_fill(~prior[k].to(v.device), float("-inf")) for k, v in scores.items()}
    if nm is not None:
        return {k: M.nm_mask(v, *nm) for k, v in scores.items()}
    select = {"layer": M.layer_masks, "global": M.global_masks, "row": M.row_masks}.get(scope)
    if select is None:
        raise ValueError(f"unknown scope {scope!r}; choose from layer, global, row")
    return select(scores, sparsity)


def sparsity_record(model, sites: list[WeightSite]) -> dict:
    """What a prune reached: the sparsity of the targeted weights overall and per site, and the model's parameter
    count and nonzero count (every parameter, targeted or not)."""
    targeted = sum(s.weight.numel() for s in sites)
    zeros = {s.key: int((s.weight == 0).sum()) for s in sites}
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(p.count_nonzero()) for p in model.parameters())
    return {"sparsity": sum(zeros.values()) / targeted if targeted else 0.0,
            "sites": {s.key: zeros[s.key] / s.weight.numel() for s in sites},
            "targeted_params": targeted, "params": params, "nonzero_params": nonzero}


def recipe_sites(model, recipe: "SparsifyRecipe") -> list[WeightSite]:
    """The weight sites ``recipe`` prunes in ``model``; ``ConfigError`` when there are none, or when an N:M
    pattern does not fit a tensor's input width (the recipe's dry run)."""
    sites = prunable_sites(model, recipe.components, stacks=recipe.stacks)
    if not sites:
        raise ConfigError("the recipe's components and stacks select no weights in this model")
    if recipe.nm is not None:
        m = recipe.nm[1]
        bad = [s for s in sites if s.weight.shape[-1] % m]
        if bad:
            raise ConfigError(f"{bad[0].key}: input width {bad[0].weight.shape[-1]} does not divide into groups of {m}")
    return sites


def sparsify(model, recipe: "SparsifyRecipe", batches: list[dict] | None = None, progress: bool = False) -> dict:
    """One-shot unstructured (or N:M) pruning of ``model`` in place by ``recipe`` (its ``imp`` is ignored: see
    :func:`speechprune.prune.imp.imp`); ``batches``: labelled calibration batches for Taylor and Wanda. Returns
    :func:`sparsity_record` plus the method."""
    sites = recipe_sites(model, recipe)
    scores = weight_scores(model, sites, recipe.criterion, batches, progress=progress)
    masks = select_masks(scores, recipe.effective_scope, sparsity=recipe.sparsity, nm=recipe.nm)
    fold_masks(sites, masks)
    return {"criterion": recipe.criterion, "scope": None if recipe.nm else recipe.effective_scope,
            "pattern": recipe.pattern, "target": recipe.sparsity, **sparsity_record(model, sites)}
