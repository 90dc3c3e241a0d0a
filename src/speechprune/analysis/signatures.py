"""Weight-change signatures: how far each module of each layer moved between two checkpoints of one architecture.

For every weight site (the adapter's ``weight_sites``: attention q/k/v/out, FFN in/out, norms, stem, embeddings) the
Frobenius distance ``||W(t) - W(0)||_F`` over the module's parameters (weight and bias together) is computed; per
*module type* (stack, component, role: ``encoder.self_attn.q``) it is divided by its maximum over the layers, so each
type's row of the table lies in [0, 1] and the layer that moved most reads 1.0. A per-layer value (the root of the sum
of squared distances of the layer's modules, divided by its stack's maximum) is what is correlated with an ablation.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import ModelError
from .ranks import spearman


def site_tensors(model) -> dict[str, dict]:
    """Per weight-site key: ``{"stack", "layer", "type", "tensors": {param name: tensor}}`` (detached, on CPU, fp32)."""
    from ..models.adapters import adapter_for

    out = {}
    for s in adapter_for(model).weight_sites(model):
        out[s.key] = {"stack": s.stack, "layer": s.layer, "type": f"{s.stack}.{s.component}.{s.role}",
                      "tensors": {n: p.detach().float().cpu() for n, p in s.module.named_parameters()}}
    return out


def frobenius_distances(before: dict[str, dict], after: dict[str, dict], where: str | None = None) -> list[dict]:
    """Rows ``{key, stack, layer, type, distance, norm_before}``: ``||after - before||_F`` per site over its
    parameters. Both sides are :func:`site_tensors` of models of one architecture; a site or shape that differs is a
    one-line ``ModelError`` naming ``where`` (the second checkpoint's folder). A pure function."""
    import torch

    if set(before) != set(after):
        only = sorted(set(before) ^ set(after))
        raise ModelError(f"the checkpoints differ in architecture: {only[0]} is in only one of them", where)
    rows = []
    for key, b in before.items():
        a = after[key]
        if set(a["tensors"]) != set(b["tensors"]):
            raise ModelError(f"the checkpoints differ at {key}: parameters {sorted(b['tensors'])} vs "
                             f"{sorted(a['tensors'])}", where)
        sq, sq0 = 0.0, 0.0
        for name, t0 in b["tensors"].items():
            t1 = a["tensors"][name]
            if t0.shape != t1.shape:
                raise ModelError(f"shapes differ at {key}.{name}: {tuple(t0.shape)} vs {tuple(t1.shape)} "
                                 "(not one architecture)", where)
            sq += float(torch.sum((t1 - t0) ** 2))
            sq0 += float(torch.sum(t0**2))
        rows.append({"key": key, "stack": b["stack"], "layer": b["layer"], "type": b["type"],
                     "distance": math.sqrt(sq), "norm_before": math.sqrt(sq0)})
    return rows


def normalize_by_type(rows: list[dict]) -> list[dict]:
    """``rows`` with ``normalized`` = distance / (max distance of the same type over layers) in [0, 1] (0 where the
    type never moved). A pure function."""
    top: dict[str, float] = {}
    for r in rows:
        top[r["type"]] = max(top.get(r["type"], 0.0), r["distance"])
    return [{**r, "normalized": r["distance"] / top[r["type"]] if top[r["type"]] > 0 else 0.0} for r in rows]


def layer_signatures(rows: list[dict]) -> dict[str, float]:
    """Per layer (``"encoder.3"``): the root sum of squares of its modules' distances, divided by the maximum over
    its stack's layers, in [0, 1]. Sites outside the layers are left out. A pure function."""
    raw: dict[str, float] = {}
    for r in rows:
        if r["layer"] is not None:
            k = f"{r['stack']}.{r['layer']}"
            raw[k] = raw.get(k, 0.0) + r["distance"] ** 2
    top: dict[str, float] = {}
    for k, v in raw.items():
        top[k.split(".")[0]] = max(top.get(k.split(".")[0], 0.0), v)
    return {k: math.sqrt(v / top[k.split(".")[0]]) if top[k.split(".")[0]] > 0 else 0.0 for k, v in raw.items()}


def correlate_with_ablation(layers: dict[str, float], ablation_summary: dict) -> dict:
    """Spearman, per ablation metric and method, between the layer signatures and the layers' ablation deltas (over
    the whole-layer targets both have). A pure function."""
    out: dict[str, dict] = {}
    table = ablation_summary.get("table", {})
    for metric in ablation_summary.get("metrics", {}):
        for method in ablation_summary.get("methods", []):
            pts = [(layers[t], table[t][method][metric]["delta"]) for t in table if t in layers
                   and (table[t].get(method) or {}).get(metric, {}).get("delta") is not None]
            rho = spearman(*zip(*pts)) if len(pts) > 1 else math.nan
            out.setdefault(metric, {})[method] = {"spearman": rho if math.isfinite(rho) else None, "n": len(pts)}
    return out


def signature_table(rows: list[dict], stack: str) -> tuple[list[str], list[str], list[list[float | None]]]:
    """``(types, layers, normalized values)`` of one stack's in-layer sites, for a table or heatmap."""
    rs = [r for r in rows if r["stack"] == stack and r["layer"] is not None]
    types = list(dict.fromkeys(r["type"].split(".", 1)[1] for r in rs))
    n = max((r["layer"] for r in rs), default=-1) + 1
    grid: list[list[float | None]] = [[None] * n for _ in types]
    for r in rs:
        grid[types.index(r["type"].split(".", 1)[1])][r["layer"]] = r["normalized"]
    return types, [str(i) for i in range(n)], grid


def compare_models(before, after, where: str | Path | None = None) -> list[dict]:
    """Normalized signatures of two live models of one architecture (rows of :func:`normalize_by_type`)."""
    return normalize_by_type(frobenius_distances(site_tensors(before), site_tensors(after),
                                                 None if where is None else str(where)))
