"""The structured pruning driver: a recipe in, a physically smaller model out, one step at a time.

Per step: score every unit group (``calibrate.score_groups``), select what each target keeps
(``selection``), then let the adapter cut (units, then whole modules, then layers). Targets' sparsities are
fractions of the ORIGINAL units, reached over ``schedule.steps`` steps on a geometric schedule; explicit
module and layer removals happen at the first step. ``on_step`` is called after every step (recovery, saving).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import ConfigError
from ..models.units import Adapter
from . import selection as S
from .calibrate import score_groups
from .reconstruct import reconstruct
from .recipe import Recipe, Target


@dataclass
class StepReport:
    step: int
    sparsity_fraction: float  # of the targets' way to their final sparsity
    kept_units: dict[str, int] = field(default_factory=dict)  # group key (original layer) -> units left
    removed_modules: list[str] = field(default_factory=list)
    removed_layers: list[str] = field(default_factory=list)
    params: int = 0
    reconstruction: dict[str, dict[str, float]] = field(default_factory=dict)  # group key -> relative errors


class LayerMap:
    """Original layer index <-> current index, per stack, as layers are removed."""

    def __init__(self, adapter: Adapter, model: torch.nn.Module):
        self.orig = {s: list(range(adapter.n_layers(model, s))) for s in adapter.stacks(model)}

    def current(self, stack: str, original: int) -> int | None:
        return self.orig[stack].index(original) if original in self.orig[stack] else None

    def original(self, stack: str, current: int) -> int:
        return self.orig[stack][current]

    def remove(self, stack: str, current: list[int]) -> None:
        for i in sorted(current, reverse=True):
            del self.orig[stack][i]


def validate_against_model(recipe: Recipe, model: torch.nn.Module, adapter: Adapter) -> None:
    """Refuse, before any work, what this model cannot do: unknown stacks or kinds, missing layers, every layer."""
    stacks = adapter.stacks(model)
    for i, t in enumerate(recipe.targets):
        where = f"targets.{i}"
        if t.stack not in stacks:
            raise ConfigError(f"bad recipe: {where}: this {adapter.family} model has no {t.stack}")
        n = adapter.n_layers(model, t.stack)
        kinds = adapter.module_kinds(model, t.stack)
        if t.kind is not None and t.kind not in kinds:
            raise ConfigError(f"bad recipe: {where}: the {adapter.family} {t.stack} has no {t.kind}")
        for idx in (t.layers or []) + (t.remove_layers or []) + [m.layer for m in t.remove_modules or []]:
            if idx >= n:
                raise ConfigError(f"bad recipe: {where}: layer {idx} does not exist ({t.stack} has {n} layers)")
        for m in t.remove_modules or []:
            if m.kind not in kinds:
                raise ConfigError(f"bad recipe: {where}: the {adapter.family} {t.stack} has no {m.kind}")
        if t.remove_layers is not None and len(t.remove_layers) >= n:
            raise ConfigError(f"bad recipe: {where}: cannot remove every {t.stack} layer")
        if t.n_layers is not None and t.n_layers >= n:
            raise ConfigError(f"bad recipe: {where}: cannot remove {t.n_layers} of {n} {t.stack} layers")
    for stack in (recipe.recovery.train or []) if recipe.recovery else []:
        if stack not in stacks:
            raise ConfigError(f"bad recipe: recovery.train: this {adapter.family} model has no {stack}")


def _target_groups(t: Target, scores: dict[str, torch.Tensor], layers: LayerMap) -> dict[str, torch.Tensor]:
    out = {}
    for key, s in scores.items():
        stack, cur, kind = key.split(".")
        if stack == t.stack and kind == t.kind:
            orig = layers.original(stack, int(cur))
            if t.layers is None or orig in t.layers:
                out[key] = s
    return out


def _layer_scores(scores: dict[str, torch.Tensor], stack: str) -> dict[int, float]:
    """A layer's importance: the mean of its groups' mean unit scores."""
    per: dict[int, list[float]] = {}
    for key, s in scores.items():
        st, cur, _ = key.split(".")
        if st == stack:
            per.setdefault(int(cur), []).append(float(s.mean()))
    return {i: sum(v) / len(v) for i, v in per.items()}


def prune(model: torch.nn.Module, adapter: Adapter, recipe: Recipe, batches: list[dict] | None = None,
          on_step: Callable[[int, torch.nn.Module, StepReport], None] | None = None,
          reference: torch.nn.Module | None = None) -> list[StepReport]:
    """Prune ``model`` in place following ``recipe``; returns one report per step. With ``recipe.reconstruct``,
    ``reference`` (an unpruned copy) gives the outputs that every pruned block is refit to after each step."""
    validate_against_model(recipe, model, adapter)
    if recipe.reconstruct and (reference is None or not batches):
        raise ConfigError("reconstruction needs calibration batches and an unpruned reference model")
    layers = LayerMap(adapter, model)
    original_units = {g.key: g.n_units for g in adapter.unit_groups(model)}  # keys at step 0 = original indices
    reports = []
    for step in range(recipe.schedule.steps):
        scores = score_groups(model, adapter, recipe.criterion, batches, recipe.normalize, seed=recipe.seed + step)
        keeps: dict[str, list[int]] = {}
        for t in recipe.targets:
            if t.sparsity is None:
                continue
            target_sparsity = S.step_ratios(t.sparsity, recipe.schedule.steps)[step] if t.sparsity > 0 else 0.0
            groups = _target_groups(t, scores, layers)
            if not groups:
                continue
            if t.scope == "layer":
                for k, s in groups.items():
                    n_keep = max(1, round((1.0 - target_sparsity) * original_units[_orig_key(k, layers)]))
                    keeps[k] = S.keep_top(s, min(n_keep, len(s)))
                continue
            # global and local: the target's units together, sparsity relative to what is left now
            orig_total = sum(original_units[_orig_key(k, layers)] for k in groups)
            cur_total = sum(len(s) for s in groups.values())
            rel = min(max(1.0 - round((1.0 - target_sparsity) * orig_total) / cur_total, 0.0), 0.999999)
            if t.scope == "global":
                keeps.update(S.global_(groups, rel, min_keep=1))
            else:
                keeps.update(S.local(groups, rel))
        report = StepReport(step=step + 1, sparsity_fraction=(step + 1) / recipe.schedule.steps)
        _apply(model, adapter, recipe, keeps, scores, layers, report, first_step=step == 0)
        if recipe.reconstruct:
            ref_groups = {g.key: g for g in adapter.unit_groups(reference)}  # its keys are the original ones
            pairs = [(g, ref_groups[_orig_key(g.key, layers)]) for g in adapter.unit_groups(model)
                     if g.n_units < original_units[_orig_key(g.key, layers)]]
            real = getattr(adapter, "real_positions", None) if recipe.reconstruct_weighting == "speech" else None
            report.reconstruction = reconstruct(model, reference, pairs, batches, real_positions=(
                None if real is None else lambda batch, stack: real(model, batch, stack)))
        report.params = sum(p.numel() for p in model.parameters())
        report.kept_units = {_orig_key(g.key, layers): g.n_units for g in adapter.unit_groups(model)}
        reports.append(report)
        if on_step is not None:
            on_step(step + 1, model, report)
    return reports


def _orig_key(key: str, layers: LayerMap) -> str:
    stack, cur, kind = key.split(".")
    return f"{stack}.{layers.original(stack, int(cur))}.{kind}"


def _apply(model, adapter: Adapter, recipe: Recipe, keeps: dict[str, list[int]], scores, layers: LayerMap,
           report: StepReport, first_step: bool) -> None:
    groups = {g.key: g for g in adapter.unit_groups(model)}
    modules: set[tuple[str, int, str]] = set()  # (stack, current layer, kind)
    for key, keep in keeps.items():
        g = groups[key]
        if not keep:
            modules.add((g.stack, g.layer, g.kind))
        elif len(keep) < g.n_units:
            adapter.prune_units(model, g, keep)
    drop_layers: dict[str, set[int]] = {}
    if first_step:
        for t in recipe.targets:
            for m in t.remove_modules or []:
                cur = layers.current(t.stack, m.layer)
                if cur is not None:
                    modules.add((t.stack, cur, m.kind))
            for i in t.remove_layers or []:
                drop_layers.setdefault(t.stack, set()).add(layers.current(t.stack, i))
            if t.n_layers is not None:
                ranked = _layer_scores(scores, t.stack)
                drop_layers.setdefault(t.stack, set()).update(S.rank_layers(ranked, t.n_layers))
    for stack, cur, kind in sorted(modules):
        if cur in drop_layers.get(stack, ()):
            continue  # the whole layer goes anyway
        adapter.remove_module(model, stack, cur, kind)
        report.removed_modules.append(f"{stack}.{layers.original(stack, cur)}.{kind}")
    for stack, idx in drop_layers.items():
        if len(idx) >= adapter.n_layers(model, stack):
            raise ConfigError(f"the recipe would remove every {stack} layer")
        adapter.remove_layers(model, stack, sorted(idx))
        report.removed_layers += [f"{stack}.{layers.original(stack, i)}" for i in sorted(idx)]
        layers.remove(stack, sorted(idx))
