"""``speechprune lowrank``: factorize a model's linear layers step by step, recover between steps, save every step.

Output folder::

    OUT/step-1/ ... OUT/step-N/   a loadable factorized model after each step (safetensors + JSON)
    OUT/model.txt                 names the last step's folder
    OUT/lowrank.json              recipe, dense and per-step parameters and FLOPs, rank per site, skipped sites and
                                  why, per-site output errors, recovery losses

The schedule goes from the dense model to the target in ``schedule.steps`` equal steps: for an ``energy`` or
``params`` target the threshold moves linearly from 1 to the target (ranks are re-chosen from the current,
recovered weights); for a ``rank`` or ``rank_fraction`` target each site's share of dense weights moves linearly
from 1 to the share its final rank holds. A rerun with the same recipe into the same folder resumes after the
last saved step.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..errors import ConfigError
from ..models.adapters import adapter_for
from ..models.lowrank import lowrank_ranks
from ..models.units import WeightSite
from .lowrank import Plan, factorize, input_grams, lowrank_sites, plan_ranks
from .lowrank_recipe import LowRankRecipe, LowRankTarget
from .runner import Job, Steps

RECORD = "lowrank.json"


def select_sites(model, recipe: LowRankRecipe) -> list[WeightSite]:
    """The recipe's sites in ``model``; ``ConfigError`` for a layer index the model lacks or an empty selection."""
    adapter = adapter_for(model)
    s = recipe.sites
    stacks = s.stacks or list(adapter.stacks(model))
    if s.layers is not None:
        n = min(adapter.n_layers(model, st) for st in stacks)
        bad = [i for i in s.layers if i >= n]
        if bad:
            raise ConfigError(f"sites.layers: layer {bad[0]} does not exist (the model's {'/'.join(stacks)} "
                              f"{'has' if len(stacks) == 1 else 'have'} {n} layers)")
    sites = lowrank_sites(model, s.components, stacks, s.layers)
    if not sites:
        raise ConfigError(f"the recipe selects no linear layer ({', '.join(s.components)} in {', '.join(stacks)})")
    return sites


def final_ranks(sites: list[WeightSite], target: LowRankTarget) -> dict[str, float]:
    """For a ``rank``/``rank_fraction`` target: each site's share of dense weights at its final rank (1.0 where the
    final rank would not be smaller); the schedule interpolates these shares."""
    plan = plan_ranks(sites, rank=target.rank, rank_fraction=target.rank_fraction)
    out = {}
    for s in sites:
        r, n_in, n_out = plan.ranks.get(s.key), s.module.in_features, s.module.out_features
        out[s.key] = 1.0 if r is None else r * (n_in + n_out) / (n_in * n_out)
    return out


def step_plan(sites: list[WeightSite], target: LowRankTarget, step: int, steps: int,
              shares: dict[str, float] | None = None, grams: dict[str, torch.Tensor] | None = None,
              damping: float = 1e-2) -> Plan:
    """The plan of step ``step`` (1-based) of ``steps`` toward ``target`` (``shares``: ``final_ranks``)."""
    t = step / steps
    if target.energy is not None:
        return plan_ranks(sites, energy=1 - (1 - target.energy) * t, grams=grams, damping=damping)
    if target.params is not None:
        return plan_ranks(sites, params=1 - (1 - target.params) * t, grams=grams, damping=damping)
    if step == steps:
        return plan_ranks(sites, rank=target.rank, rank_fraction=target.rank_fraction)
    return plan_ranks(sites, param_share={k: 1 - (1 - v) * t for k, v in shares.items()})


def validate_lowrank(recipe: LowRankRecipe, model) -> Plan:
    """Check the recipe against ``model`` and return the final step's plan from the weights alone (no calibration:
    for ``method: activation`` the real ranks follow the whitened spectra)."""
    sites = select_sites(model, recipe)
    return plan_ranks(sites, **{k: v for k, v in recipe.target.model_dump().items() if v is not None})


def run_lowrank(model_name: str, recipe: LowRankRecipe, out: str | Path, device: str = "cpu",
                progress: bool = True) -> dict:
    """Factorize ``model_name`` (a bundled name or a folder of any family) by ``recipe`` into ``out``; returns the
    record."""
    job = Job.open(model_name, device=device)
    dense = job.model
    select_sites(dense, recipe)  # refuse a bad selection before any calibration work
    torch.manual_seed(recipe.seed)
    steps = Steps(job, out, RECORD, job.record(recipe), recipe.schedule.steps, recipe.recovery,
                  save_every_step=recipe.schedule.save_every_step, progress=progress)
    start = steps.resumed()
    if start > recipe.schedule.steps:
        return steps.record
    model = job.load(steps.record["steps"][-1]["folder"]) if start > 1 else copy.deepcopy(dense)
    shares = None
    if recipe.target.rank is not None or recipe.target.rank_fraction is not None:
        shares = final_ranks(select_sites(dense, recipe), recipe.target)
    cal_batches = job.calibration_batches(recipe.calibration if recipe.needs_calibration else None, progress)
    steps.batches = job.recovery_batches(recipe.recovery, progress)

    for step in range(start, recipe.schedule.steps + 1):
        sites = select_sites(model, recipe)
        grams = input_grams(model, sites, cal_batches) if cal_batches is not None else None
        plan = step_plan(sites, recipe.target, step, recipe.schedule.steps, shares, grams, recipe.damping)
        errors = factorize(sites, plan.ranks, grams, recipe.damping)
        del grams
        steps.finish(step, model, {"factorized": plan.ranks, "skipped": plan.skipped, "energy": plan.energy,
                                   "site_weights_before": plan.params_before, "site_weights_after": plan.params_after,
                                   "output_error": errors, "ranks": lowrank_ranks(model)})
    return steps.close()
