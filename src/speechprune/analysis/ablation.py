"""Layer ablation: which layers a trained model needs (critical) and which it barely uses (ambient).

Each target (a whole layer, or one block of it: ``self_attn``, ``cross_attn``, ``ffn`` with its norm) is damaged one
at a time in one of three ways and the model is scored:

* ``reinit``: the target's weights go back to an initialization: stored initial weights (``source``: the W(0) the
  model's folder keeps, ``ModelFamily.initial_weights``, or a checkpoint a training run started from, for "initial
  vs trained"), else the family's own scheme (``ModelFamily.fresh``: a fresh model of the same architecture and
  structure, built under the seed); the summary's ``reinit_source`` says which;
* ``rerandom``: fresh Gaussian values with each tensor's own mean and standard deviation (the trained weights'
  first two moments, none of their structure);
* ``skip``: the target is removed with the adapter's surgery (``remove_layers`` / ``remove_module``), so it passes
  its input through. Deterministic: run for the first seed only.

Family-neutral: targets come from the adapter's ``weight_sites``; only the scorers know the model's task. Results are
appended to ``records.jsonl`` one line per (target, method, seed, metric) as they finish, so a killed run resumes;
:func:`summarize` (pure) turns records into deltas against the dense model, critical/ambient classes, seed stability
and the agreement of two metrics.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConfigError
from ..scale.executor import Executor, run_jobs
from .ranks import spearman

METHODS: tuple[str, ...] = ("reinit", "rerandom", "skip")
RECORDS = "records.jsonl"
SUMMARY = "summary.json"
RUN = "run.json"
DENSE = "dense"


@dataclass(frozen=True)
class Target:
    """A whole layer (``component`` None) or one block of it."""

    stack: str
    layer: int
    component: str | None = None  # self_attn | cross_attn | ffn (a block with its norm)

    @property
    def key(self) -> str:
        return f"{self.stack}.{self.layer}" + (f".{self.component}" if self.component else "")


def _block(site) -> str | None:
    """The block a weight site belongs to (``WeightSite.in_block``: its component, for a norm the block it
    normalizes); None for a weight of the layer itself (only its whole layer is a target)."""
    return site.in_block


def ablation_targets(model, adapter, modules: bool = False) -> list[Target]:
    """Every layer of every stack (``modules``: every block of every layer) that has weights, in model order."""
    out: dict[Target, None] = {}
    for s in adapter.weight_sites(model):
        if s.layer is not None and not (modules and _block(s) is None):
            out[Target(s.stack, s.layer, _block(s) if modules else None)] = None
    return list(out)


def target_sites(model, adapter, target: Target) -> list:
    """The weight sites a target covers."""
    return [s for s in adapter.weight_sites(model) if s.stack == target.stack and s.layer == target.layer
            and (target.component is None or _block(s) == target.component)]


def init_like(model, seed: int):
    """A freshly initialized model of ``model``'s family, architecture and (pruned) structure, on ``model``'s device
    with the family's initialization under ``torch.manual_seed(seed)``: the family's W(0) (``ModelFamily.fresh``)."""
    from ..models.family import family_for

    return family_for(model).fresh(model, seed)


def reinit_source_name(stored: str | None, seeds: int) -> str:
    """What ``reinit`` restored, for the summary: ``stored`` (a description of stored initial weights), else the
    family's initialization under each seed."""
    if stored is not None:
        return stored
    return "family initialization, seed 0" if seeds == 1 else \
        f"family initialization, seeds 0-{seeds - 1} (one per ablation seed)"


def same_distribution(tensor, generator):
    """Fresh Gaussian values with ``tensor``'s shape, mean and standard deviation (a one-element tensor keeps its
    value). Pure: ``tensor`` is not changed."""
    import torch

    t = tensor.detach().float()
    std = t.std().item() if t.numel() > 1 else 0.0
    noise = torch.randn(t.shape, generator=generator, dtype=torch.float32)
    return (noise.to(t.device) * std + t.mean()).to(tensor.dtype)


def _params(site) -> list[tuple[str, object]]:
    return list(site.module.named_parameters())


@contextmanager
def ablated(model, adapter, target: Target, method: str, seed: int = 0, source=None) -> Iterator[object]:
    """The model with ``target`` damaged by ``method``, for the length of the block.

    ``reinit`` and ``rerandom`` change the target's parameters in place and restore them when the block ends (also
    on an error); ``reinit`` copies them from ``source`` (a model of the same architecture: :func:`init_like`, or a
    stored initial checkpoint), matched by weight-site key. ``skip`` yields a deep copy with the target removed."""
    import torch

    if method not in METHODS:
        raise ConfigError(f"unknown ablation method {method!r}; choose from {', '.join(METHODS)}")
    if method == "skip":
        pruned = copy.deepcopy(model)
        if target.component is None:
            adapter.remove_layers(pruned, target.stack, [target.layer])
        else:
            adapter.remove_module(pruned, target.stack, target.layer, target.component)
        yield pruned
        return
    sites = target_sites(model, adapter, target)
    if not sites:
        raise ConfigError(f"ablation target {target.key} has no weights in this model")
    saved = [(p, p.detach().clone()) for s in sites for _, p in _params(s)]
    try:
        with torch.no_grad():
            if method == "reinit":
                if source is None:
                    raise ValueError("reinit needs a source model (init_like or stored initial weights)")
                src = {s.key: s for s in adapter.weight_sites(source)}
                for s in sites:
                    if s.key not in src:
                        raise ConfigError(f"the initial weights have no {s.key}: not the same architecture")
                    theirs = dict(_params(src[s.key]))
                    for name, p in _params(s):
                        if name not in theirs or theirs[name].shape != p.shape:
                            raise ConfigError(f"the initial weights' {s.key}.{name} does not match the model's "
                                              f"shape {tuple(p.shape)}")
                        p.copy_(theirs[name].to(p.device, p.dtype))
            else:
                gen = torch.Generator().manual_seed(seed)
                for s in sites:
                    for _, p in _params(s):
                        p.copy_(same_distribution(p, gen))
        yield model
    finally:
        with torch.no_grad():
            for p, old in saved:
                p.copy_(old)


# ----------------------------------------------------------------------------------------------------------------
# Scoring and the resumable run

# (model, {stack: first changed layer}) -> a score where higher is worse; {} for the dense model. A scorer may reuse
# the dense model's computation up to the first changed layer (a skipped layer counts as changed at its index).
Scorer = Callable[[object, dict], float]


@dataclass(frozen=True)
class Metric:
    """A score of a model (higher = worse) and how a change in it is judged.

    ``relative``: the delta is ``(value - dense) / dense`` (a loss), else ``value - dense`` (an error rate);
    a target is *ambient* under a method when its seed-mean delta is below ``threshold``, else *critical*.
    ``seeds``: on how many of the run's seeds the metric is computed (an expensive metric can take fewer)."""

    name: str
    fn: Scorer = field(compare=False, repr=False)
    relative: bool
    threshold: float
    seeds: int | None = None  # None = every seed

    def __post_init__(self) -> None:
        if not self.threshold > 0:
            raise ConfigError(f"{self.name}: the ambient threshold must be > 0, got {self.threshold}")


@dataclass(frozen=True)
class AblationConfig:
    methods: tuple[str, ...] = METHODS
    seeds: int = 3
    modules: bool = False  # targets are blocks of layers instead of whole layers
    stacks: tuple[str, ...] | None = None  # None = every stack

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ConfigError(f"unknown ablation method {bad[0] if bad else '(none)'!r}; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"ablation methods repeat: {', '.join(self.methods)}")
        if self.seeds < 1:
            raise ConfigError(f"seeds must be >= 1, got {self.seeds}")


def _deterministic(method: str, stored_source: bool) -> bool:
    return method == "skip" or (method == "reinit" and stored_source)


def plan(targets: list[Target], config: AblationConfig, stored_source: bool = False) -> list[tuple[int, Target, str]]:
    """``(seed, target, method)`` points in run order (seed outermost, so one fresh initialization serves a seed);
    a deterministic method (``skip``; ``reinit`` from stored weights) runs for seed 0 only."""
    return [(seed, t, m) for seed in range(config.seeds) for t in targets for m in config.methods
            if seed == 0 or not _deterministic(m, stored_source)]


def config_targets(model, adapter, config: AblationConfig) -> list[Target]:
    """The targets ``config`` ablates in ``model``: every layer (``modules``: every block) of its stacks. A block
    must be one the adapter can remove (``skip``), so that every method damages the same weights."""
    targets = [t for t in ablation_targets(model, adapter, config.modules)
               if config.stacks is None or t.stack in config.stacks]
    if not targets:
        raise ConfigError(f"no ablation targets in stacks {config.stacks}")
    blocks = [t.key for t in targets if config.modules and t.component not in adapter.module_kinds(model, t.stack)]
    if blocks:
        raise ConfigError(f"--modules: this model's weight sites name blocks its adapter cannot remove "
                          f"({', '.join(blocks[:3])}{', ...' if len(blocks) > 3 else ''}); ablate whole layers")
    return targets


def run_ablation(model, metrics: list[Metric], out_dir: str | Path, config: AblationConfig = AblationConfig(),
                 settings: dict | None = None, source=None, progress: bool = True,
                 source_name: str = "stored initial weights", executor: Executor | None = None,
                 remote_job: Callable[[tuple], object] | None = None) -> dict:
    """Ablate every target of ``model`` with every method and seed, score each with ``metrics`` and write
    ``DIR/records.jsonl`` (appended as points finish), ``DIR/run.json`` (``settings``: a rerun must match them to
    resume) and ``DIR/summary.json``. ``source``: stored initial weights for ``reinit`` (default: the family's
    initialization, fresh per seed); the summary's ``reinit_source`` says which (``source_name`` for stored
    weights). ``executor`` says where the points run (default: here, on ``model``); for Ray, ``remote_job(done)``
    gives the job that rebuilds the model, metrics and source in each worker (``jobs.AblationJob``). Returns the
    summary."""
    from ..evaluate.runner import claim_run_dir
    from ..io import append_jsonl, atomic_write_json, read_jsonl_tolerant, repair_jsonl
    from ..models.adapters import adapter_for

    if not metrics:
        raise ConfigError("ablation needs at least one metric")
    names = [m.name for m in metrics]
    if len(set(names)) != len(names):
        raise ConfigError(f"metric names repeat: {', '.join(names)}")
    adapter = adapter_for(model)
    targets = config_targets(model, adapter, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(out_dir, {**(settings or {}), "methods": list(config.methods), "seeds": config.seeds,
                            "modules": config.modules, "stacks": config.stacks, "metrics": names,
                            "stored_init": source is not None})
    path = out_dir / RECORDS
    repair_jsonl(path)
    done = {(r["target"], r["method"], r["seed"], r["metric"]) for r in read_jsonl_tolerant(path)}

    def wanted(metric: Metric, seed: int) -> bool:
        return metric.seeds is None or seed < metric.seeds

    for metric in metrics:  # the dense reference
        if (DENSE, DENSE, 0, metric.name) not in done:
            t0 = time.perf_counter()
            value = float(metric.fn(model, {}))
            append_jsonl(path, {"target": DENSE, "method": DENSE, "seed": 0, "metric": metric.name, "value": value,
                                "seconds": round(time.perf_counter() - t0, 3)})
    points = plan(targets, config, stored_source=source is not None)
    todo = [(s, t.key, m) for s, t, m in points
            if any(wanted(x, s) and (t.key, m, s, x.name) not in done for x in metrics)]
    finished = tuple(sorted(done))
    job = remote_job(finished) if remote_job else AblationPoints(model, metrics, config, source, finished)
    run_jobs(job, todo, executor or Executor(), lambda item, result: [append_jsonl(path, r) for r in result["records"]],
             progress=progress, desc="ablate")
    records = list(read_jsonl_tolerant(path))
    summary = summarize(records, metrics, targets=[t.key for t in targets], methods=list(config.methods))
    if "reinit" in config.methods:
        summary["reinit_source"] = reinit_source_name(source_name if source is not None else None, config.seeds)
    atomic_write_json(out_dir / SUMMARY, summary)
    return summary


@dataclass
class AblationPoints:
    """The points of one ablation as a job list (``scale.executor``): each ``(seed, target key, method)`` item
    damages the model as the method says, scores every metric that item still lacks (``done``: the
    ``(target, method, seed, metric)`` keys already recorded) and gives the records. Holds live objects, so it runs
    here; ``jobs.AblationJob`` builds one in each Ray worker."""

    model: object
    metrics: list
    config: "AblationConfig"
    source: object = None
    done: tuple = ()

    def setup(self) -> dict:
        from ..models.adapters import adapter_for

        adapter = adapter_for(self.model)
        return {"adapter": adapter, "fresh": None, "done": set(self.done),
                "targets": {t.key: t for t in config_targets(self.model, adapter, self.config)}}

    def run(self, state: dict, item) -> dict:
        seed, key, method = item
        target, src = state["targets"][key], self.source
        if method == "reinit" and self.source is None:
            if state["fresh"] is None or state["fresh"][0] != seed:
                state["fresh"] = None  # free the previous seed's model first
                state["fresh"] = (seed, init_like(self.model, seed))
            src = state["fresh"][1]
        records = []
        with ablated(self.model, state["adapter"], target, method, seed, src) as damaged:
            for metric in self.metrics:
                if (metric.seeds is None or seed < metric.seeds) and (key, method, seed, metric.name) not in state["done"]:
                    t0 = time.perf_counter()
                    value = float(metric.fn(damaged, {target.stack: target.layer}))
                    records.append({"target": key, "method": method, "seed": seed, "metric": metric.name,
                                    "value": value, "seconds": round(time.perf_counter() - t0, 3),
                                    "stack": target.stack, "layer": target.layer, "component": target.component})
        return {"records": records}


# ----------------------------------------------------------------------------------------------------------------
# Summary: pure functions over records


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _finite(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def delta(value: float, dense: float, relative: bool) -> float:
    """The damage of one point: relative change of a loss, or absolute change of an error rate."""
    if relative:
        return (value - dense) / dense if dense else math.inf
    return value - dense


def summarize(records: list[dict], metrics: list[Metric], targets: list[str], methods: list[str]) -> dict:
    """Deltas against the dense model per (target, method, metric): per seed and their mean; a class per
    (metric, method, target): ``ambient`` when the seed-mean delta is below the metric's threshold, else
    ``critical``; seed stability (Spearman of target deltas between every pair of seeds, per metric and method);
    agreement of every pair of metrics (Spearman over the (target, method) points both scored); counts of ambient
    targets per stack. A pure function."""
    info = {m.name: m for m in metrics}
    dense = {r["metric"]: r["value"] for r in records if r["target"] == DENSE}
    per: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in records:
        if r["target"] == DENSE or r["metric"] not in info or r["metric"] not in dense:
            continue
        m = info[r["metric"]]
        per.setdefault((r["target"], r["method"], r["metric"]), {})[r["seed"]] = delta(r["value"], dense[r["metric"]],
                                                                                         m.relative)
    table: dict[str, dict[str, dict[str, dict]]] = {}
    classes: dict[str, dict[str, dict[str, str]]] = {}
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for (target, method, metric), seeds in per.items():
        mean = _mean(list(seeds.values()))
        cls = "ambient" if mean < info[metric].threshold else "critical"
        table.setdefault(target, {}).setdefault(method, {})[metric] = {
            "delta": _finite(mean), "per_seed": {str(s): _finite(v) for s, v in sorted(seeds.items())}, "class": cls}
        classes.setdefault(metric, {}).setdefault(method, {})[target] = cls
        if cls == "ambient":
            stack = target.split(".")[0]
            c = counts.setdefault(metric, {}).setdefault(method, {})
            c[stack] = c.get(stack, 0) + 1
    stability: dict[str, dict[str, dict]] = {}
    for metric in info:
        for method in methods:
            rows = {t: per.get((t, method, metric), {}) for t in targets}
            seeds = sorted({s for v in rows.values() for s in v})
            pairs = []
            for i, a in enumerate(seeds):
                for b in seeds[i + 1:]:
                    common = [t for t in targets if a in rows[t] and b in rows[t]
                              and math.isfinite(rows[t][a]) and math.isfinite(rows[t][b])]
                    rho = spearman([rows[t][a] for t in common], [rows[t][b] for t in common])
                    pairs.append({"seeds": [a, b], "spearman": _finite(rho), "n": len(common)})
            if pairs:
                rhos = [p["spearman"] for p in pairs if p["spearman"] is not None]
                # class agreement: the share of targets whose per-seed classes all agree
                thr = info[metric].threshold
                full = [t for t in targets if all(s in rows[t] for s in seeds)]
                same = [t for t in full if len({rows[t][s] < thr for s in seeds}) == 1]
                stability.setdefault(metric, {})[method] = {
                    "pairs": pairs, "mean_spearman": _finite(_mean(rhos)), "min_spearman": min(rhos) if rhos else None,
                    "class_agreement": len(same) / len(full) if full else None}
    agreement = []
    names = list(info)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pts = [(table[t][m][a]["delta"], table[t][m][b]["delta"]) for t in table for m in table[t]
                   if a in table[t][m] and b in table[t][m]
                   and table[t][m][a]["delta"] is not None and table[t][m][b]["delta"] is not None]
            by_method = {}
            for method in methods:
                mp = [(table[t][method][a]["delta"], table[t][method][b]["delta"]) for t in table
                      if method in table[t] and a in table[t][method] and b in table[t][method]
                      and table[t][method][a]["delta"] is not None and table[t][method][b]["delta"] is not None]
                by_method[method] = {"spearman": _finite(spearman(*zip(*mp))) if len(mp) > 1 else None, "n": len(mp)}
            cls_same = [(t, m) for t in table for m in table[t] if a in table[t][m] and b in table[t][m]
                        and table[t][m][a]["class"] == table[t][m][b]["class"]]
            n_both = sum(1 for t in table for m in table[t] if a in table[t][m] and b in table[t][m])
            agreement.append({"metrics": [a, b], "spearman": _finite(spearman(*zip(*pts))) if len(pts) > 1 else None,
                              "n": len(pts), "per_method": by_method,
                              "class_agreement": len(cls_same) / n_both if n_both else None})
    return {
        "dense": dense,
        "metrics": {m.name: {"relative": m.relative, "threshold": m.threshold, "seeds": m.seeds,
                             "delta": "(value - dense) / dense" if m.relative else "value - dense"} for m in metrics},
        "rule": "ambient: the seed-mean delta is below the metric's threshold; critical otherwise",
        "targets": targets,
        "methods": methods,
        "table": {t: table[t] for t in targets if t in table},
        "classes": classes,
        "ambient_counts": counts,
        "stability": stability,
        "agreement": agreement,
    }


def heatmap_matrix(summary: dict, metric: str) -> tuple[list[str], list[str], list[list[float | None]]]:
    """``(rows: targets, cols: methods, values: seed-mean deltas)`` of one metric, for plotting."""
    rows, cols = summary["targets"], summary["methods"]
    vals = [[(summary["table"].get(t, {}).get(m, {}).get(metric) or {}).get("delta") for m in cols] for t in rows]
    return rows, cols, vals
