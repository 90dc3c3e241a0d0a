"""The analysis jobs behind ``speechprune analyze``: load, run, write JSON and plots. The CLI only parses options."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelError
from .ablation import (SUMMARY, AblationConfig, AblationPoints, Metric, config_targets, heatmap_matrix,
                       run_ablation)

INIT_PREFIX = "init:"  # "init:SEED" as BEFORE: the family's initialization of AFTER's architecture


def model_folder(spec: str) -> Path:
    """The folder of a bundled model name or a model folder (one-line ``ModelError`` for anything else)."""
    from ..models.registry import BUNDLED_MODELS, resolve_model

    path = Path(spec).expanduser()
    if spec in BUNDLED_MODELS and not path.is_dir():
        return resolve_model(spec)
    if path.is_dir():
        return path
    if path.exists():
        raise ModelError("expected a model folder or a bundled model name, got a file", path)
    raise ModelError(f"no such model folder, and not a bundled model name ({', '.join(BUNDLED_MODELS)})", path)


def load_model(spec: str, device: str = "cpu"):
    """``(model, folder)`` for a bundled model name or a model folder of any supported family (dense or pruned)."""
    from ..models.checkpoint import load_pruned

    folder = model_folder(spec)
    model, _ = load_pruned(folder, device=device)
    return model, folder


def ablation_job(model: str, data: str, out: str | Path, split: str = "dev", methods: tuple[str, ...] = ("reinit", "rerandom", "skip"),
                 seeds: int = 3, metric: str = "proxy", limit: int | None = 32, wer_limit: int | None = None,
                 wer_seeds: int = 1, modules: bool = False, stacks: tuple[str, ...] | None = None,
                 proxy_threshold: float = 0.10, wer_threshold: float = 0.01, init_from: str | None = None,
                 batch_size: int = 8, max_new_tokens: int | None = None, allow_test: bool = False, device: str = "cpu",
                 progress: bool = True, executor=None) -> dict:
    """Ablate a model's layers (or blocks) on ``data``/``split`` and write ``OUT/records.jsonl``,
    ``OUT/summary.json`` and a heatmap per metric (``OUT/ablation_<metric>.png``); any family with a seam (Whisper,
    CTC), scored by its reference scorer (``analysis.scoring``). ``metric``: proxy | wer | both; WER runs on the
    first ``wer_limit`` (default: all) of the ``limit`` utterances and the first ``wer_seeds`` seeds. ``init_from``:
    a checkpoint whose weights ``reinit`` restores (default: the initial weights the model's folder keeps, e.g. a
    CTC model trained here, else the family's initialization per seed; the summary's ``reinit_source`` says which).
    ``executor`` (``scale.executor.Executor``): where the points run; the records land in ``OUT`` here either way.
    The test split is refused
    unless ``allow_test``: choosing what to prune from test results would leak."""
    if metric not in ("proxy", "wer", "both"):
        raise ConfigError(f"unknown metric {metric!r}; choose from proxy, wer, both")
    if split == "test" and not allow_test:
        raise ConfigError("ablation on the test split is refused: ablation results select what to prune; use dev "
                          "(or pass --allow-test for a final, reported analysis)")
    config = AblationConfig(methods=tuple(methods), seeds=seeds, modules=modules, stacks=stacks)
    spec = AblationJob(model, data, split, metric, limit, wer_limit, wer_seeds, proxy_threshold, wer_threshold,
                       init_from, batch_size, max_new_tokens, device, config, progress=progress)
    m, metrics, source, source_name = spec.prepare()
    settings = {"model": model, "data": data, "split": split, "limit": limit, "wer_limit": wer_limit,
                "wer_seeds": wer_seeds, "proxy_threshold": proxy_threshold, "wer_threshold": wer_threshold,
                "init_from": init_from, "batch_size": batch_size, "max_new_tokens": max_new_tokens}
    remote = executor is not None and executor.kind != "local"
    summary = run_ablation(m, metrics, out, config, settings=settings, source=source, progress=progress,
                           source_name=source_name, executor=executor,
                           remote_job=(lambda done: dataclasses.replace(spec, done=done, progress=False)) if remote
                           else None)
    plot_ablation(summary, out)
    return summary


@dataclass(frozen=True)
class AblationJob:
    """What an ablation needs, as settings (picklable): ``prepare`` opens the model and its scorers; as a job list
    (``scale.executor``) each worker prepares once, then scores the points it is given."""

    model: str
    data: str
    split: str
    metric: str
    limit: int | None
    wer_limit: int | None
    wer_seeds: int
    proxy_threshold: float
    wer_threshold: float
    init_from: str | None
    batch_size: int
    max_new_tokens: int | None
    device: str
    config: AblationConfig
    done: tuple = ()
    progress: bool = False

    def prepare(self):
        """``(model, metrics, reinit source or None, its name)``."""
        from ..data.datasets import load_dataset
        from ..models.adapters import adapter_for
        from ..models.family import family_for_folder
        from .scoring import Scorer

        utts = load_dataset(self.data, self.split)
        utts = utts[: self.limit] if self.limit else utts
        folder = model_folder(self.model)
        backend = family_for_folder(folder).backend(folder, device=self.device)
        m = backend.model
        config_targets(m, adapter_for(m), self.config)  # a bad request fails before the scorers prepare
        metrics = []
        if self.metric in ("proxy", "both"):
            proxy = Scorer(backend, utts, self.batch_size, self.max_new_tokens, progress=self.progress)
            metrics.append(Metric("proxy", proxy.proxy, relative=True, threshold=self.proxy_threshold))
        if self.metric in ("wer", "both"):
            wer_utts = utts[: self.wer_limit] if self.wer_limit else utts
            scorer = proxy if self.metric == "both" and len(wer_utts) == len(utts) else Scorer(
                backend, wer_utts, self.batch_size, self.max_new_tokens, progress=self.progress)
            metrics.append(Metric("wer", scorer.wer, relative=False, threshold=self.wer_threshold,
                                  seeds=self.wer_seeds if self.metric == "both" else None))
        if self.init_from:
            return m, metrics, load_model(self.init_from, self.device)[0], f"initial weights of {self.init_from}"
        # the folder's own W(0) where it keeps it (a CTC model trained here), else the family's initialization
        return m, metrics, family_for_folder(folder).initial_weights(folder, self.device), "kept initial weights"

    def setup(self) -> dict:
        m, metrics, source, _ = self.prepare()
        points = AblationPoints(m, metrics, self.config, source, self.done)
        return {"points": points, "state": points.setup()}

    def run(self, state: dict, item) -> dict:
        return state["points"].run(state["state"], item)


def ablation_heatmaps(summary: dict) -> list[tuple[str, dict]]:
    """``(metric, heatmap arguments)`` per metric of an ablation summary: targets x methods, seed-mean delta,
    ``A``/``C`` marks for ambient/critical (the files ``plot_ablation`` writes, the figures the report shows)."""
    out = []
    for metric, info in summary["metrics"].items():
        rows, cols, vals = heatmap_matrix(summary, metric)
        marks = [[("A" if (summary["table"].get(t, {}).get(m, {}).get(metric) or {}).get("class") == "ambient"
                   else "C") if v is not None else "" for m, v in zip(cols, r)] for t, r in zip(rows, vals)]
        what = "relative increase of the proxy loss" if info["relative"] else f"absolute increase of {metric}"
        out.append((metric, {"values": vals, "rows": rows, "cols": cols, "vmin": 0.0, "marks": marks,
                             "title": f"ablation: {what} vs dense (A = ambient, < {info['threshold']:g})"}))
    return out


def plot_ablation(summary: dict, out: str | Path) -> list[Path]:
    """One heatmap file per metric (``OUT/ablation_<metric>.png``)."""
    from .heatmap import plot_heatmap

    return [plot_heatmap(path=Path(out) / f"ablation_{metric}.png", **kw) for metric, kw in ablation_heatmaps(summary)]


def signature_heatmaps(record: dict) -> list[tuple[str, dict]]:
    """``(stack, heatmap arguments)`` of a signatures record: module types x layers, normalized to [0, 1]."""
    from .signatures import signature_table

    out = []
    for stack in dict.fromkeys(r["stack"] for r in record["rows"]):
        types, cols, grid = signature_table(record["rows"], stack)
        if types:
            out.append((stack, {"values": grid, "rows": types, "cols": cols, "vmin": 0.0, "vmax": 1.0,
                                "title": f"{stack}: ||W_after - W_before||_F / max over layers"}))
    return out


def signatures_job(before: str, after: str, out: str | Path, ablation: str | Path | None = None,
                   device: str = "cpu") -> dict:
    """Weight-change signatures between ``before`` (a model, or ``init:SEED``: the family's initialization of
    ``after``'s architecture) and ``after``: ``OUT/signatures.json`` (per-site rows, per-layer values, correlation
    with an ablation ``summary.json`` when given) and a [0, 1] heatmap per stack (``OUT/signatures_<stack>.png``)."""
    from ..io import atomic_write_json
    from .ablation import init_like
    from .heatmap import plot_heatmap
    from .signatures import compare_models, correlate_with_ablation, layer_signatures

    abl = None
    if ablation is not None:
        path = Path(ablation)
        if path.is_dir():
            path = path / SUMMARY
        try:
            abl = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read the ablation summary ({type(e).__name__})", path) from None
        if not isinstance(abl, dict) or "table" not in abl:
            raise ConfigError("not an ablation summary.json (no 'table')", path)
    m_after, after_folder = load_model(after, device)
    if before.startswith(INIT_PREFIX):
        try:
            seed = int(before[len(INIT_PREFIX):])
        except ValueError:
            raise ConfigError(f"BEFORE {before!r}: write init:SEED with an integer seed") from None
        m_before = init_like(m_after, seed)
    else:
        m_before, _ = load_model(before, device)
    rows = compare_models(m_before, m_after, after_folder)
    layers = layer_signatures(rows)
    record = {"before": before, "after": after, "rows": rows, "layers": layers,
              "normalization": "per module type: ||W_after - W_before||_F / its max over layers; per layer: root sum "
                               "of squares over the layer's modules / its stack's max"}
    if abl is not None:
        record["ablation"] = str(ablation)
        record["correlation"] = correlate_with_ablation(layers, abl)
    out = Path(out)
    atomic_write_json(out / "signatures.json", record)
    for stack, kw in signature_heatmaps(record):
        plot_heatmap(path=out / f"signatures_{stack}.png", **kw)
    return record
