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
from ..evaluate.backends import TorchWhisper
from ..io import atomic_write_json, atomic_write_text
from ..models.adapters import adapter_for
from ..models.checkpoint import save_pruned
from ..models.lowrank import lowrank_ranks
from ..models.registry import resolve_model
from ..models.units import WeightSite
from .lowrank import Plan, factorize, input_grams, lowrank_sites, plan_ranks
from .lowrank_recipe import LowRankRecipe, LowRankTarget
from .run import shape_record

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


def _resume(out: Path, record: dict) -> list[dict]:
    """The steps of an earlier run with the same settings whose model folders exist; a different run is refused."""
    path = out / RECORD
    if not path.is_file():
        return []
    import json

    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError("unreadable record; remove it or choose another --out", path) from None
    if old.get("recipe") != record["recipe"] or old.get("model") != record["model"]:
        raise ConfigError("holds a run with another model or recipe; choose another --out", path)
    steps = []
    for s in old.get("steps", []):
        if not (Path(s.get("folder", "")) / "config.json").is_file():
            break
        steps.append(s)
    return steps


def run_lowrank(model_name: str, recipe: LowRankRecipe, out: str | Path, device: str = "cpu",
                progress: bool = True) -> dict:
    """Factorize ``model_name`` (a bundled name or a Whisper folder) by ``recipe`` into ``out``; returns the record."""
    from ..recovery.distill import distill, recovery_batches

    out = Path(out)
    src = resolve_model(model_name)
    dense = TorchWhisper.from_folder(src, device=device)
    select_sites(dense.model, recipe)  # refuse a bad selection before any calibration work
    torch.manual_seed(recipe.seed)
    record = {"model": model_name, "source": str(src), "recipe": recipe.model_dump(mode="json"),
              "dense": shape_record(dense.model), "steps": []}
    record["steps"] = _resume(out, record)
    start = len(record["steps"]) + 1
    if start > recipe.schedule.steps:
        return record
    if start > 1:
        model = TorchWhisper.from_folder(record["steps"][-1]["folder"], device=device).model
    else:
        model = copy.deepcopy(dense.model)
    shares = None
    if recipe.target.rank is not None or recipe.target.rank_fraction is not None:
        shares = final_ranks(select_sites(dense.model, recipe), recipe.target)

    cal_batches = None
    if recipe.needs_calibration:
        cal = recipe.calibration
        utts = cal.clips()
        cal_batches = [{k: v.to(device) for k, v in b.items()}
                       for b in dense.labelled_batches(utts, cal.batch_size, progress=progress)]
    rec_batches = None
    if recipe.recovery is not None and recipe.recovery.steps > 0:
        rec_batches = recovery_batches(dense, recipe.recovery, progress=progress)

    for step in range(start, recipe.schedule.steps + 1):
        sites = select_sites(model, recipe)
        grams = input_grams(model, sites, cal_batches) if cal_batches is not None else None
        plan = step_plan(sites, recipe.target, step, recipe.schedule.steps, shares, grams, recipe.damping)
        errors = factorize(sites, plan.ranks, grams, recipe.damping)
        del grams
        entry = {"step": step, "factorized": plan.ranks, "skipped": plan.skipped, "energy": plan.energy,
                 "site_weights_before": plan.params_before, "site_weights_after": plan.params_after,
                 "output_error": errors, "ranks": lowrank_ranks(model), **shape_record(model)}
        if rec_batches is not None:
            entry["recovery"] = distill(model, rec_batches, recipe.recovery, progress=progress)
        last = step == recipe.schedule.steps
        if recipe.schedule.save_every_step or last:
            save_pruned(model, src, out / f"step-{step}", overwrite=True)
            entry["folder"] = str(out / f"step-{step}")
        record["steps"].append(entry)
        atomic_write_json(out / RECORD, record)
    atomic_write_text(out / "model.txt", f"step-{recipe.schedule.steps}\n")
    return record
