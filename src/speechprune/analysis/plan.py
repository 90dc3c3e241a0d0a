"""A sparsity plan from a sensitivity sweep: per-component sparsities that reach a global target at the least
predicted WER increase, written as a structured recipe that ``speechprune prune`` takes.

The prediction is additive: pruning several components costs the sum of their one-at-a-time WER increases on the
sweep's dev subset (interactions are ignored; the test split decides whether the plan helps). Per component the
sweep gives, at each measured sparsity, a *damage* (WER increase over dense, clipped at zero and made
non-decreasing in sparsity: a lucky dip on a small subset is noise, not a free lunch) and a *cost removed* (params,
encoder FLOPs or decoder FLOPs per token, measured on the pruned point). Between measured levels both are
interpolated linearly.

Structured pruning keeps ``max(1, round((1 - s) * n))`` of the ``n`` units of each layer (``prune.structured``), so a
component can only be cut in steps of ``1 / n``: the allocator chooses among those realizable fractions (a grid for
wide FFNs), never beyond the sweep's largest level, and a recipe sparsity of ``k / n`` cuts exactly ``k`` units.

``allocate`` is an exact multiple-choice knapsack over a discretized target (a small DP): minimize summed damage
subject to summed cost >= target. Costs are rounded down to the grid, so the plan always meets the target.
``uniform`` gives every component the same sparsity, the smallest that meets the target, for comparison; since
units come in steps the uniform recipe usually overshoots, and ``write_plan`` then asks the plan to remove at least as
much as the uniform recipe does, so the two are compared at equal (or, for the plan, higher) cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

METRICS = {  # target name -> point field whose decrease is the cost removed
    "params": "params",
    "encoder-flops": "flops_encoder",
    "decoder-flops": "flops_decoder_per_token",
}
# candidate steps for components with more units than this: 1/200 of an FFN (tiny.en: ~8 neurons per layer). A
# 1/40 grid missed the plan between two measured levels (the cost target fell between 0.325 and 0.35).
FFN_GRID = 200


@dataclass(frozen=True)
class Curve:
    """One component's measured trade-off: at nominal recipe sparsity ``levels[i]`` the WER rose by ``damage[i]``
    and ``cost[i]`` was removed. ``n_units`` per layer (heads or neurons) fixes the realizable steps."""

    component: str  # "encoder.ffn"
    n_units: int
    levels: tuple[float, ...]
    damage: tuple[float, ...]
    cost: tuple[float, ...]

    def __post_init__(self) -> None:
        if not (len(self.levels) == len(self.damage) == len(self.cost)) or not self.levels:
            raise ValueError(f"{self.component}: levels, damage and cost must be non-empty and of equal length")
        if list(self.levels) != sorted(self.levels):
            raise ValueError(f"{self.component}: levels must be increasing")
        if self.n_units < 1:
            raise ValueError(f"{self.component}: n_units must be >= 1")

    def _points(self) -> tuple[list[float], list[float], list[float]]:
        """(realized fraction, monotone damage, cost), with the dense origin prepended."""
        xs = [0.0] + [realized(s, self.n_units) for s in self.levels]
        ds, run = [0.0], 0.0
        for d in self.damage:
            run = max(run, d, 0.0)
            ds.append(run)
        return xs, ds, [0.0] + list(self.cost)

    def at(self, fraction: float) -> tuple[float, float]:
        """(damage, cost) at a realized unit fraction, linear between measured points (x: realized fractions)."""
        xs, ds, cs = self._points()
        if fraction <= 0:
            return 0.0, 0.0
        if fraction > xs[-1] + 1e-12:
            raise ValueError(f"{self.component}: fraction {fraction} beyond the sweep's largest ({xs[-1]})")
        for i in range(1, len(xs)):
            if fraction <= xs[i] + 1e-12:
                x0, x1 = xs[i - 1], xs[i]
                if x1 - x0 < 1e-12:  # two levels that round to the same unit count
                    return ds[i], cs[i]
                w = (fraction - x0) / (x1 - x0)
                return ds[i - 1] + w * (ds[i] - ds[i - 1]), cs[i - 1] + w * (cs[i] - cs[i - 1])
        return ds[-1], cs[-1]

    def candidates(self) -> list[float]:
        """Realizable unit fractions ``k / n`` up to the largest measured one (a grid when ``n`` is large)."""
        top = max(realized(s, self.n_units) for s in self.levels)
        n = self.n_units
        ks = range(n) if n <= FFN_GRID else sorted({round(j * n / FFN_GRID) for j in range(FFN_GRID)})
        return [k / n for k in ks if k / n <= top + 1e-12]


def realized(sparsity: float, n_units: int) -> float:
    """The fraction of ``n_units`` that structured pruning at ``sparsity`` removes (per layer, one unit stays)."""
    return 1.0 - max(1, round((1.0 - sparsity) * n_units)) / n_units


@dataclass
class Allocation:
    sparsity: dict[str, float]  # component -> recipe sparsity (a realizable fraction)
    damage: float  # predicted WER increase, summed
    cost: float  # predicted cost removed, summed
    per_component: dict[str, dict] = field(default_factory=dict)  # component -> {sparsity, damage, cost}


def _allocation(curves: list[Curve], chosen: dict[str, float]) -> Allocation:
    per = {}
    for c in curves:
        d, k = c.at(chosen.get(c.component, 0.0))
        per[c.component] = {"sparsity": chosen.get(c.component, 0.0), "damage": d, "cost": k}
    return Allocation({c: v["sparsity"] for c, v in per.items() if v["sparsity"] > 0},
                      sum(v["damage"] for v in per.values()), sum(v["cost"] for v in per.values()), per)


def allocate(curves: list[Curve], target: float, resolution: int = 1000) -> Allocation:
    """Per-component sparsities with summed cost >= ``target`` and the least summed damage (DP over components,
    cost on a grid of ``target / resolution``, rounded down so the real sum never falls short)."""
    if target <= 0:
        raise ConfigError(f"the target must remove something, got {target}")
    reachable = sum(c.at(c.candidates()[-1])[1] for c in curves) if curves else 0.0
    if reachable < target:
        raise ConfigError(f"the target ({target:.4g}) exceeds what the swept levels can remove ({reachable:.4g}); "
                          f"sweep higher sparsities or more components")
    INF = math.inf
    best = [0.0] + [INF] * resolution  # best[b]: least damage reaching grid cost b (capped at resolution)
    choice: list[list[tuple[int, float]]] = []  # per component: for each b, (previous b, fraction)
    for c in curves:
        options = [(f, *c.at(f)) for f in c.candidates()]
        new, back = [INF] * (resolution + 1), [(0, 0.0)] * (resolution + 1)
        for b, dmg in enumerate(best):
            if dmg == INF:
                continue
            for f, d, k in options:
                nb = min(resolution, b + int(math.floor(k / target * resolution + 1e-9)))
                if dmg + d < new[nb] - 1e-15:
                    new[nb], back[nb] = dmg + d, (b, f)
        best = new
        choice.append(back)
    if best[resolution] == INF:  # rounding down lost the last sliver: reachable only without it
        raise ConfigError(f"the target ({target:.4g}) is at the edge of what the swept levels can remove")
    chosen, b = {}, resolution
    for c, back in zip(reversed(curves), reversed(choice)):
        b, f = back[b]
        chosen[c.component] = f
    return _allocation(curves, chosen)


def uniform(curves: list[Curve], target: float, steps: int = 2000) -> tuple[float, Allocation]:
    """The smallest common recipe sparsity (on a grid of ``1 / steps``) whose summed cost meets ``target``."""
    top = min(max(c.levels) for c in curves)
    for i in range(1, steps + 1):
        s = i / steps
        if s > top + 1e-12:
            break
        alloc = _allocation(curves, {c.component: realized(s, c.n_units) for c in curves})
        if alloc.cost >= target:
            alloc.sparsity = {c: s for c in alloc.sparsity}
            for v in alloc.per_component.values():
                v["recipe_sparsity"] = s
            return s, alloc
    raise ConfigError(f"no uniform sparsity up to {top} reaches the target ({target:.4g})")


# ----------------------------------------------------------------------------------------------------------------
# From a sweep folder to recipes


def parse_target(spec: str) -> tuple[str, float]:
    """``encoder-flops:0.4`` (remove 40 % of the dense total) or ``params:5e6`` (remove 5 M parameters)."""
    name, sep, value = spec.partition(":")
    if name not in METRICS or not sep:
        raise ConfigError(f"bad target {spec!r}: write METRIC:AMOUNT with METRIC one of {', '.join(METRICS)} "
                          f"and AMOUNT a fraction of the dense total (0.4) or an absolute amount (5e6)")
    try:
        v = float(value)
    except ValueError:
        raise ConfigError(f"bad target {spec!r}: {value!r} is not a number") from None
    if not v > 0 or math.isinf(v) or v == 1:
        raise ConfigError(f"bad target {spec!r}: the amount must be a fraction in (0, 1) or an amount > 1")
    return name, v


def sweep_curves(points: dict[str, dict], metric: str, units: dict[str, int], method: str = "structured") -> list[Curve]:
    """Curves of the sweep's ``method`` points for ``metric`` (only components whose cost falls)."""
    from .sensitivity import DENSE_KEY, curves as by_component

    dense = points.get(DENSE_KEY)
    if dense is None:
        raise ConfigError("the sweep has no dense point yet (worker 0 measures it first)")
    field_ = METRICS[metric]
    out = []
    for comp, rs in sorted(by_component(points).get(method, {}).items()):
        cost = [dense[field_] - r[field_] for r in rs]
        if max(cost) <= 0 or comp not in units:
            continue
        out.append(Curve(comp, units[comp], tuple(r["sparsity"] for r in rs), tuple(r["wer"] - dense["wer"] for r in rs),
                         tuple(float(c) for c in cost)))
    if not out:
        raise ConfigError(f"the sweep has no {method} points that lower {metric}")
    return out


def recipe_dict(alloc: Allocation, name: str, model: str | None, criterion: str, sparsity: dict[str, float],
                calibration: dict | None = None) -> dict:
    """A structured recipe: one per-layer target per component with a non-zero sparsity; validated. ``calibration``
    (recipe keys) is kept for criteria that read data, so the recipe scores units as the sweep did."""
    from ..prune.recipe import parse_recipe

    targets = []
    for comp, s in sparsity.items():
        stack, kind = comp.split(".")
        targets.append({"stack": stack, "kind": kind, "sparsity": round(float(s), 6)})
    if not targets:
        raise ConfigError("the plan prunes nothing")
    obj = {"name": name, "model": model, "criterion": criterion, "targets": targets}
    if calibration and criterion in ("activation", "taylor"):
        obj["calibration"] = calibration
    parse_recipe(obj)
    return obj


def unit_counts(model) -> dict[str, int]:
    """Units per layer of each ``stack.kind`` (the first layer's; dense models are uniform)."""
    from ..models.adapters import adapter_for

    out: dict[str, int] = {}
    for g in adapter_for(model).unit_groups(model):
        out.setdefault(f"{g.stack}.{g.kind}", g.n_units)
    return out


def realized_costs(model, recipe: dict) -> dict:
    """Apply ``recipe`` to a copy of ``model`` (per-layer unit counts do not depend on the criterion, so magnitude
    scores stand in) and measure its params and FLOPs."""
    import copy

    from ..models.adapters import adapter_for
    from ..prune.recipe import parse_recipe
    from ..prune.structured import prune
    from .sensitivity import cost_record

    m = copy.deepcopy(model)
    r = parse_recipe({**recipe, "criterion": "magnitude", "reconstruct": False})
    prune(m, adapter_for(m), r)
    rec = cost_record(m)
    rec.pop("nonzero_params")
    return rec


def check_recipes(record: dict, settings: dict, dense) -> None:
    """Measure the plan's and the uniform recipe's WER on the sweep's own subset (same features, calibration and
    token cap as its points), into ``record[name]["check"]``. The prediction adds one-component damages; this shows
    how the cuts interact before anyone spends a test run on them."""
    import copy

    from ..models.adapters import adapter_for
    from ..prune.recipe import load_recipe
    from ..prune.structured import prune
    from .sensitivity import score_model, sweep_inputs

    inputs = sweep_inputs(dense, settings)
    for name in ("plan", "uniform"):
        m = copy.deepcopy(dense.model)
        prune(m, adapter_for(m), load_recipe(record[name]["recipe"]), inputs.batches)
        res = score_model(m, dense, inputs)
        record[name]["check"] = {"wer": res["wer"], "cer": res["cer"], "wer_increase": res["wer"] - record["dense_wer"],
                                 "n_utterances": res["n_utterances"], "split": settings.get("split"),
                                 "limit": settings.get("limit"), "decode_seconds": res["decode_seconds"]}


def write_plan(sweep_dir: str | Path, target: str, out: str | Path, uniform_out: str | Path | None = None,
               model=None, check: bool = False) -> dict:
    """Plan from the sweep in ``sweep_dir``: write the recipe ``out``, the uniform recipe (default: next to it,
    ``<stem>-uniform.yaml``) and ``<stem>.json`` with predictions and realized costs (on ``model``, default the
    sweep's). ``check``: also measure both recipes on the sweep's subset (:func:`check_recipes`; this loads the
    sweep's model as a decoding backend, which then also gives the costs)."""
    import json

    import yaml

    from ..io import atomic_write_json, atomic_write_text
    from .sensitivity import SWEEP, read_points

    sweep_dir, out = Path(sweep_dir), Path(out)
    if not (sweep_dir / SWEEP).is_file():
        raise ConfigError("not a sensitivity sweep folder (no sweep.json)", sweep_dir)
    settings = json.loads((sweep_dir / SWEEP).read_text(encoding="utf-8"))
    points = read_points(sweep_dir)
    metric, amount = parse_target(target)
    dense_backend = None
    if check:
        from .sensitivity import dense_backend as open_backend

        dense_backend = open_backend(settings["model"])
        model = dense_backend.model
    elif model is None:
        from ..models.family import family_for_folder
        from ..models.registry import resolve_model

        folder = resolve_model(settings["model"])
        model = family_for_folder(folder).load(folder)
    dense = points.get("dense") or {}
    if dense and METRICS[metric] not in dense:
        raise ConfigError(f"the sweep's model has no {METRICS[metric]} (a {metric} target needs a decoder)", sweep_dir)
    curves = sweep_curves(points, metric, unit_counts(model))
    total = float(dense[METRICS[metric]])
    goal = amount * total if amount < 1 else amount
    planned = allocate(curves, goal)
    s_uni, uni = uniform(curves, goal)
    if uni.cost > goal:
        # units come in steps (a head is 1/6 of a tiny.en layer), so the uniform recipe usually overshoots the target;
        # the plan is asked to remove at least as much, so it is compared at equal or higher cost, never lower
        planned = allocate(curves, uni.cost)
    if uni.damage < planned.damage:  # the uniform fractions are an allocation too (the DP's grid may miss them)
        planned = _allocation(curves, {c: v["sparsity"] for c, v in uni.per_component.items()})
    criterion = settings.get("criterion", "magnitude")
    tag = f"{metric}-{amount:g}"
    model_name = settings.get("model")
    cal = None
    if settings.get("calibration") and settings.get("data") in ("asterisk", "asterisk-multiword"):
        cal = {"data": settings["data"], "split": "dev", "utterances": settings["calibration"]}
    plan_recipe = recipe_dict(planned, f"plan-{tag}", model_name, criterion, planned.sparsity, cal)
    uni_recipe = recipe_dict(uni, f"uniform-{tag}", model_name, criterion, uni.sparsity, cal)
    uniform_out = Path(uniform_out) if uniform_out else out.with_name(f"{out.stem}-uniform{out.suffix or '.yaml'}")
    header = (f"# from the sensitivity sweep {sweep_dir} ({settings.get('split')} split, first {settings.get('limit')}); "
              f"target {target}\n")
    atomic_write_text(out, header + yaml.safe_dump(plan_recipe, sort_keys=False))
    atomic_write_text(uniform_out, header + yaml.safe_dump(uni_recipe, sort_keys=False))
    record = {
        "sweep": str(sweep_dir), "target": target, "metric": metric, "dense_total": total, "target_removed": goal,
        "dense_wer": dense.get("wer"),
        "plan": {"recipe": str(out), "predicted_wer_increase": planned.damage, "predicted_removed": planned.cost,
                 "per_component": planned.per_component},
        "uniform": {"recipe": str(uniform_out), "sparsity": s_uni, "predicted_wer_increase": uni.damage,
                    "predicted_removed": uni.cost, "per_component": uni.per_component},
    }
    record["plan"]["realized"] = realized_costs(model, plan_recipe)
    record["uniform"]["realized"] = realized_costs(model, uni_recipe)
    if dense_backend is not None:
        check_recipes(record, settings, dense_backend)
    atomic_write_json(out.with_suffix(".json"), record)
    return record
