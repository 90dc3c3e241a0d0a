"""Federated dropout with the toolkit's structured surgery: a client gets a physically smaller copy of the global
model (some heads and FFN neurons of chosen layers cut out, ``Adapter.prune_units``), trains it, and its weights are
scattered back into the global model's shapes, where only the units it kept (and the weights no unit owns) can change.

Which units a client keeps is a :class:`DropPlan`: per unit group (``UnitGroup.key``), the sorted unit indices kept.
:func:`drop_plan` draws one: ``rate`` of the units of every group in the chosen layers, at random per client and round
(the seed). The layers come from the toolkit's layer ablation (:func:`layer_ranking` of its summary): the ``n`` most
critical, the ``n`` most ambient, or all of them at the :func:`flat_rate` that drops as many parameters. Everything
is family-neutral: the adapter's unit groups say which slice of which parameter each unit owns (``ParamSlice``), so
the same code drops Whisper heads, Conformer FFN neurons or conv channels.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..models.units import Adapter, UnitGroup


@dataclass(frozen=True)
class DropPlan:
    """``keep``: unit group key -> the sorted unit indices a client keeps (groups not named keep every unit)."""

    keep: dict[str, tuple[int, ...]]

    def dropped_share(self, groups: list[UnitGroup]) -> float:
        """Share of the groups' unit-owned parameters the plan drops."""
        total = dropped = 0
        for g in groups:
            per_unit = unit_params(g)
            total += per_unit * g.n_units
            if g.key in self.keep:
                dropped += per_unit * (g.n_units - len(self.keep[g.key]))
        return dropped / total if total else 0.0


def unit_params(group: UnitGroup) -> int:
    """Parameters one unit of ``group`` owns."""
    return sum(s.param.numel() // (s.param.shape[s.dim] // s.size) for s in group.params)


def drop_plan(groups: list[UnitGroup], layers: set[tuple[str, int]], rate: float, seed: int) -> DropPlan:
    """Drop ``rate`` of the unit-owned parameters of every group in ``layers`` ((stack, layer) pairs), the units
    chosen at random with ``seed``. Whole units are dropped: each group drops ``floor(rate * units)``, and the
    remainder goes one unit at a time to the groups with the largest fractional parts while that brings the
    parameters dropped closer to ``rate`` of theirs (so a small rate over many small groups is not rounded to
    nothing); every group keeps at least one unit."""
    if not 0.0 <= rate < 1.0:
        raise ConfigError(f"a dropout rate is in [0, 1), got {rate}")
    chosen = [g for g in groups if (g.stack, g.layer) in layers]
    drop = {g.key: min(int(rate * g.n_units), g.n_units - 1) for g in chosen}
    target = rate * sum(unit_params(g) * g.n_units for g in chosen)
    done = sum(unit_params(g) * drop[g.key] for g in chosen)
    for g in sorted(chosen, key=lambda g: -(rate * g.n_units - int(rate * g.n_units))):
        size = unit_params(g)
        if rate * g.n_units > drop[g.key] and drop[g.key] < g.n_units - 1 and abs(target - done - size) < target - done:
            drop[g.key] += 1
            done += size
    rng = random.Random(seed)
    keep = {}
    for g in chosen:
        if drop[g.key]:
            keep[g.key] = tuple(sorted(rng.sample(range(g.n_units), g.n_units - drop[g.key])))
    return DropPlan(keep)


AIMS = ("critical", "ambient", "flat")


def layer_ranking(summary: dict, metric: str, method: str) -> list[tuple[tuple[str, int], float]]:
    """Whole-layer targets of an ablation summary (``analysis.ablation.summarize``, ``summary.json``) with their
    seed-mean delta under ``metric`` and ``method``, most critical first (ties in model order)."""
    rows = []
    for t in summary["targets"]:
        stack, _, layer = t.partition(".")
        cell = summary["table"].get(t, {}).get(method, {}).get(metric)
        if not layer.isdigit() or cell is None or cell["delta"] is None:
            continue  # a block target (encoder.2.ffn), or not scored
        rows.append(((stack, int(layer)), float(cell["delta"])))
    if not rows:
        raise ConfigError(f"the ablation has no whole-layer deltas for metric {metric!r} and method {method!r}")
    return sorted(rows, key=lambda r: -r[1])


def aimed_layers(ranking: list[tuple[tuple[str, int], float]], aim: str, n: int) -> set[tuple[str, int]]:
    """The ``n`` most critical or the ``n`` most ambient layers of a :func:`layer_ranking`; ``flat``: every layer
    (drop a matching rate everywhere, :func:`flat_rate`)."""
    if aim not in AIMS:
        raise ConfigError(f"unknown dropout aim {aim!r}; choose from {', '.join(AIMS)}")
    if not 1 <= n <= len(ranking):
        raise ConfigError(f"the dropout aims at {n} layers; the ablation ranks {len(ranking)}")
    layers = [layer for layer, _ in ranking]
    return set(layers if aim == "flat" else layers[:n] if aim == "critical" else layers[-n:])


def flat_rate(groups: list[UnitGroup], aimed: DropPlan) -> float:
    """The rate that, dropped in every layer, drops the share of unit-owned parameters that ``aimed`` drops in a
    few: the flat baseline of the same size."""
    return aimed.dropped_share(groups)


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in model.named_parameters()}


def unit_slices(model: nn.Module, adapter: Adapter, plan: DropPlan) -> dict[str, tuple[int, torch.Tensor]]:
    """State name -> (dim, indices along it) of the elements a client under ``plan`` keeps, for every parameter a
    dropped unit owns a slice of (and the buffers of those parameters' modules, e.g. BatchNorm statistics)."""
    names = _names(model)
    slices: dict[str, tuple[int, torch.Tensor]] = {}
    for g in adapter.unit_groups(model):
        if g.key not in plan.keep:
            continue
        for s in g.params:
            idx = torch.tensor([u * s.size + j for u in plan.keep[g.key] for j in range(s.size)], dtype=torch.long)
            name = names[id(s.param)]
            if name in slices:
                raise ConfigError(f"{name} is sliced by two unit groups; federated dropout cannot scatter it")
            slices[name] = (s.dim, idx)
    # a unit's buffers (BatchNorm running statistics of conv channels) follow the module's sliced parameters
    for name, buf in model.named_buffers():
        owner = name.rsplit(".", 1)[0]
        for pname in (f"{owner}.weight", f"{owner}.bias"):
            if pname in slices and slices[pname][0] == 0 and buf.dim() >= 1 and \
                    buf.shape[0] == dict(model.named_parameters())[pname].shape[0]:
                slices[name] = slices[pname]
                break
    return slices


def sub_model(model: nn.Module, adapter: Adapter, plan: DropPlan) -> nn.Module:
    """A physically smaller copy of ``model`` holding only the units ``plan`` keeps (the model is not changed)."""
    sub = copy.deepcopy(model)
    for g in adapter.unit_groups(sub):  # groups of the copy, in the same order; surgery on one leaves the others
        if g.key in plan.keep:
            adapter.prune_units(sub, g, list(plan.keep[g.key]))
    return sub


def scatter(global_state: dict[str, torch.Tensor], sub_state: dict[str, torch.Tensor],
            slices: dict[str, tuple[int, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The global state with a client's sub-model state written back: sliced parameters at the kept indices (the
    dropped elements keep the global values), every other tensor whole."""
    out = {}
    for name, g in global_state.items():
        if name not in sub_state:
            raise ConfigError(f"the client's model lacks {name}: not a sub-model of this one")
        s = sub_state[name]
        if name in slices:
            dim, idx = slices[name]
            t = g.clone()
            t.index_copy_(dim, idx, s.to(g.dtype))
            out[name] = t
        elif s.shape != g.shape:
            raise ConfigError(f"the client's {name} has shape {tuple(s.shape)}, the global one {tuple(g.shape)}")
        else:
            out[name] = s.to(g.dtype)
    return out


def average(global_state: dict[str, torch.Tensor],
            updates: list[tuple[dict[str, torch.Tensor], dict[str, tuple[int, torch.Tensor]], float]]
            ) -> dict[str, torch.Tensor]:
    """FedAvg with federated dropout: each element of the new global state is the weighted mean over the clients
    that held it (``updates``: a client's sub-model state, its ``unit_slices``, its weight, e.g. its number of
    examples); an element no client held keeps its global value."""
    total = {n: torch.zeros_like(t, dtype=torch.float64) for n, t in global_state.items()}
    weight = {n: torch.zeros_like(t, dtype=torch.float64) for n, t in global_state.items()}
    for sub_state, slices, w in updates:
        full = scatter(global_state, sub_state, slices)
        for name, t in full.items():
            held = torch.ones_like(t, dtype=torch.float64)
            if name in slices:
                dim, idx = slices[name]
                held = torch.zeros_like(held).index_fill_(dim, idx, 1.0)
            total[name] += w * held * t.double()
            weight[name] += w * held
    return {n: torch.where(weight[n] > 0, total[n] / weight[n].clamp_min(1e-300), g.double()).to(g.dtype)
            for n, g in global_state.items()}


def bytes_of(state: dict[str, torch.Tensor]) -> int:
    """Bytes of a state dict's tensors (what a round sends down or up, uncompressed)."""
    return sum(t.numel() * t.element_size() for t in state.values())
