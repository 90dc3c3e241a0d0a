"""Iterative magnitude pruning (IMP) with rewinding (Frankle et al., 2019-2020, "Linear Mode Connectivity and the
Lottery Ticket Hypothesis"; Renda et al., 2020, "Comparing Rewinding and Fine-tuning in Neural Network Pruning").

Round ``r`` of ``R`` prunes, by magnitude of the current weights, the same share of the weights still there, so the
targeted weights reach ``1 - (1 - s) ** (r / R)`` sparsity and ``s`` after the last round. Then, with rewinding, every
parameter is set back to the rewind point (the pretrained weights, or the dense model after K recovery steps) and
the mask applied: survivors restart from their rewind-point values. Without rewinding the pruned model simply
continues (repeated pruning with fine-tuning). Either way it is retrained by distillation from the dense teacher
with the mask re-applied after every optimizer step, so pruned weights stay exactly zero; nothing of the mask is
left in the model afterwards.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from ..errors import ConfigError
from ..recovery.distill import distill
from .sparse_recipe import SparsifyRecipe
from .unstructured import fold_masks, recipe_sites, select_masks, sparsity_record, weight_scores


def round_sparsities(final: float, rounds: int) -> list[float]:
    """Cumulative sparsity after each of ``rounds`` rounds that each prune the same share of what remains."""
    return [1.0 - (1.0 - final) ** (r / rounds) for r in range(1, rounds + 1)]


def rewind_state(model, recipe: SparsifyRecipe, batches: list[dict] | None, progress: bool = False
                 ) -> dict[str, torch.Tensor] | None:
    """The weights survivors rewind to: ``None`` (no rewinding), a copy of ``model``'s state (``pretrained``), or
    the state of a copy of ``model`` after K recovery steps (``rewind: K``)."""
    rewind = recipe.imp.rewind
    if rewind == "none":
        return None
    if rewind == "pretrained":
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    if not batches:
        raise ConfigError(f"rewind: {rewind} trains the dense model for {rewind} steps and needs recovery data")
    early = copy.deepcopy(model)
    cfg = recipe.imp.recovery.model_copy(update={"steps": int(rewind)})
    distill(early, batches, cfg, progress=progress)
    return {k: v.detach().clone() for k, v in early.state_dict().items()}


def imp(model, recipe: SparsifyRecipe, batches: list[dict] | None,
        callback: Callable[[str, int, torch.nn.Module], None] | None = None, progress: bool = False) -> dict:
    """IMP on ``model`` in place by ``recipe`` (``criterion: magnitude``, ``imp`` set); ``batches``: recovery
    batches carrying ``teacher_logits`` (see :func:`speechprune.recovery.distill.distill`). ``callback(event,
    round, model)`` runs with ``event`` ``"pruned"`` (pruned and, with rewinding, rewound: before retraining) and
    ``"trained"``. Returns the final :func:`sparsity_record` plus one entry per round."""
    cfg = recipe.imp
    if cfg is None:
        raise ConfigError("the recipe has no 'imp' section")
    sites = recipe_sites(model, recipe)
    train = cfg.recovery.steps > 0
    if train and not batches:
        raise ConfigError("imp retrains after each round and needs recovery batches (or recovery steps: 0)")
    anchor = rewind_state(model, recipe, batches, progress)
    mask: dict[str, torch.Tensor] | None = None
    rounds = []
    for r, target in enumerate(round_sparsities(recipe.sparsity, cfg.rounds), start=1):
        scores = weight_scores(model, sites, "magnitude")
        mask = select_masks(scores, recipe.effective_scope, sparsity=target, prior=mask)
        if anchor is not None:
            model.load_state_dict(anchor)  # in place: the sites' modules stay the same objects
        fold_masks(sites, mask)
        if callback is not None:
            callback("pruned", r, model)
        stats = {"steps": 0}
        if train:
            current = mask
            stats = distill(model, batches, cfg.recovery, progress=progress,
                            after_step=lambda: fold_masks(sites, current))
        fold_masks(sites, mask)
        if callback is not None:
            callback("trained", r, model)
        rec = sparsity_record(model, sites)
        rounds.append({"round": r, "target": target, "sparsity": rec["sparsity"], "recovery": stats})
    return {"criterion": "magnitude", "scope": recipe.effective_scope, "target": recipe.sparsity,
            "rewind": cfg.rewind, **sparsity_record(model, sites), "rounds": rounds}
