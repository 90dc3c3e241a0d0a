"""Sensitivity sweep: how much WER each component type costs at each sparsity, by each pruning method.

A *point* is ``(component, method, sparsity)``: a deep copy of the dense model has that one component pruned to that
sparsity, then decodes the same dev subset. Family-neutral: the model is opened through its family
(``models.family``) and its components come from the unit adapter. Components are the ``stack.component`` pairs of
the adapter's ``weight_sites`` (``encoder.self_attn``, ``decoder.cross_attn``, ``encoder.ffn``, ``encoder.conv``,
``decoder.embed``...), then the unit-group kinds no weight site names (a Conformer's ``encoder.ffn_macaron``).
Methods:

* ``unstructured``: L1 magnitude per tensor (``prune.unstructured.magnitude_prune``) on every weight of the
  component; valid for every weight-site component but norms. Zeros only: parameters and FLOPs of the dense shape
  stay, the point records the non-zero count. Embeddings: tied weights are skipped (Whisper's token embedding is the
  output projection), so ``decoder.embed`` is the positional table there. A CTC Conformer's ``encoder.ffn`` holds
  both FFNs of each block and its ``encoder.conv`` the stem's convolutions with the convolution modules.
* ``structured``: the units of that kind in every layer of its stack (heads, FFN neurons, convolution-module
  channels: the adapter's ``unit_groups``), by a one-target ``Recipe`` through ``prune.structured.prune`` (criterion
  magnitude by default); physically smaller, FLOPs fall. Valid for the model's unit-group kinds (Whisper:
  ``self_attn``, ``cross_attn``, ``ffn``; a Conformer adds ``ffn_macaron``, whose FFN is then the second one, and
  ``conv``).

Every point decodes the same log-mel features, computed once per sweep; where the family has a decoder, points that
prune only the decoder reuse the dense encoder's outputs (their encoder is the dense one), so they cost a decode only.

Norms are not swept: a zeroed scale is not a smaller model and no structured unit owns one.

Output folder::

    DIR/sweep.json      the pinned settings (model, data, split, limit, criterion, decoding); a rerun must match
    DIR/points.jsonl    one record per finished point, appended under an exclusive lock and flushed
    DIR/summary.json    per method and component: sparsity -> WER, costs (rewritten at the end of every worker)
    DIR/plots/          WER vs sparsity per component, one figure per method

A killed sweep resumes where it stopped (finished points are skipped); ``worker i of n`` takes every n-th point of
the deterministic point list, so n processes on one machine split a sweep and append to the same file.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..errors import ConfigError
from ..io import atomic_write_json, read_jsonl_tolerant
from ..scale.executor import Executor, run_jobs

POINTS = "points.jsonl"
SWEEP = "sweep.json"
SUMMARY = "summary.json"
METHODS = ("unstructured", "structured")
STRUCTURED_KINDS = ("self_attn", "cross_attn", "ffn")  # Whisper's unit kinds: the rule without a model
COST_KEYS = ("params", "nonzero_params", "flops_encoder", "flops_decoder_per_token", "flops_decoder_first_step")
DEFAULT_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DENSE_KEY = "dense"


@dataclass(frozen=True)
class Point:
    component: str  # "encoder.ffn"; "dense" for the baseline
    method: str  # unstructured | structured | dense
    sparsity: float

    @property
    def key(self) -> str:
        return DENSE_KEY if self.method == "dense" else f"{self.component}|{self.method}|{self.sparsity:.4g}"

    @property
    def stack(self) -> str:
        return self.component.split(".")[0]

    @property
    def kind(self) -> str:
        return self.component.split(".")[1]


def sweepable(model) -> dict[str, tuple[str, ...]]:
    """Every ``stack.component`` of ``model`` with the methods that sweep it, in model order: the weight sites'
    components (``unstructured`` but for norms; ``structured`` too where units of that kind exist), then the
    unit-group kinds no weight site names (``structured`` only)."""
    from ..models.adapters import adapter_for

    adapter = adapter_for(model)
    sites = dict.fromkeys(f"{s.stack}.{s.component}" for s in adapter.weight_sites(model))
    units = dict.fromkeys(f"{g.stack}.{g.kind}" for g in adapter.unit_groups(model))
    out = {}
    for c in list(sites) + [u for u in units if u not in sites]:
        norm = c.split(".")[1] == "norm"
        out[c] = tuple(m for m, ok in (("unstructured", c in sites), ("structured", c in units)) if ok and not norm)
    return out


def model_components(model) -> list[str]:
    """The sweepable components of ``model`` (``sweepable``'s keys, norms included), in model order."""
    return list(sweepable(model))


def valid(component: str, method: str, methods_of: dict[str, tuple[str, ...]] | None = None) -> bool:
    """Whether ``method`` can sweep ``component``: by ``methods_of`` (``sweepable(model)``), else by the rule
    without a model (every method but for norms; ``structured`` for Whisper's kinds)."""
    if methods_of is not None:
        return method in methods_of.get(component, ())
    kind = component.split(".")[1]
    if kind == "norm":
        return False
    return method == "unstructured" or kind in STRUCTURED_KINDS


def sweep_points(components: Iterable[str], levels: Iterable[float], methods: Iterable[str],
                 methods_of: dict[str, tuple[str, ...]] | None = None) -> list[Point]:
    """The deterministic point list: the dense baseline, then method x component x level (invalid pairs left out)."""
    points = [Point(DENSE_KEY, "dense", 0.0)]
    for m in methods:
        for c in components:
            if valid(c, m, methods_of):
                points += [Point(c, m, float(s)) for s in levels]
    return points


def check_request(available: list[str], components: list[str] | None, levels: list[float],
                  methods: list[str], methods_of: dict[str, tuple[str, ...]] | None = None) -> list[str]:
    """Validate the sweep's request against the model (``available``: its components; ``methods_of``: what sweeps
    each, ``sweepable``); returns the components to sweep."""
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    for s in levels:
        if not 0.0 < s < 1.0:
            raise ConfigError(f"sparsity level {s} is outside (0, 1)")
    if len(set(levels)) != len(levels):
        raise ConfigError("sparsity levels repeat")
    wanted = components or [c for c in available if any(valid(c, m, methods_of) for m in methods)]
    for c in wanted:
        if c not in available:
            raise ConfigError(f"unknown component {c!r}; this model has {', '.join(available)}")
        if c.endswith(".norm"):
            raise ConfigError(f"{c}: norms are not swept (a zeroed scale is not a smaller model; no unit owns one)")
        if not any(valid(c, m, methods_of) for m in methods):
            kinds = (sorted({k.split(".")[1] for k, ms in methods_of.items() if "structured" in ms})
                     if methods_of is not None else STRUCTURED_KINDS)
            raise ConfigError(f"{c}: no requested method applies (structured prunes {', '.join(kinds)})")
    return wanted


def shard(points: list[Point], worker: int, workers: int) -> list[Point]:
    """Every ``workers``-th point starting at ``worker`` (0-based)."""
    if workers < 1 or not 0 <= worker < workers:
        raise ConfigError(f"--worker must be in 0..{workers - 1} (of --workers {workers}), got {worker}")
    return points[worker::workers]


def append_locked(path: str | Path, record: dict) -> None:
    """Append one JSON line under an exclusive ``flock`` and fsync it: concurrent workers never interleave lines,
    and a killed worker leaves at most a truncated last line that readers drop."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    with open(path, "ab") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:  # a killed writer may have left half a line: start ours on a fresh one
                with open(path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write(b"\n")
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def read_points(out: str | Path) -> dict[str, dict]:
    """Finished points by key (the last record of a key wins)."""
    return {r["key"]: r for r in read_jsonl_tolerant(Path(out) / POINTS) if isinstance(r, dict) and "key" in r}


# ----------------------------------------------------------------------------------------------------------------
# Pruning one point


def prune_point(model, point: Point, criterion: str = "magnitude", batches: list[dict] | None = None) -> None:
    """Prune ``model`` in place as ``point`` says (the dense point leaves it as it is)."""
    from ..models.adapters import adapter_for

    if point.method == "dense":
        return
    if point.method == "unstructured":
        from ..prune.unstructured import magnitude_prune

        magnitude_prune(model, point.sparsity, components=[point.kind], stacks=[point.stack])
    elif point.method == "structured":
        from ..prune.recipe import Recipe, Target
        from ..prune.structured import prune

        recipe = Recipe(criterion=criterion, targets=[Target(stack=point.stack, kind=point.kind, sparsity=point.sparsity)])
        prune(model, adapter_for(model), recipe, batches)
    else:
        raise ConfigError(f"unknown method {point.method!r}")


def cost_record(model) -> dict:
    """Size and FLOPs of a (possibly zeroed) model from its family's ``shape_record``: ``params`` counts tensors'
    elements, ``nonzero_params`` the elements that are not zero; FLOPs come from the shape (zeros do not lower
    them): ``flops_encoder``, and where there is a decoder ``flops_decoder_per_token`` and
    ``flops_decoder_first_step``."""
    import torch

    from ..models.family import family_for

    record = {**family_for(model).shape_record(model),
              "nonzero_params": sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())}
    return {k: record[k] for k in COST_KEYS if k in record}


# ----------------------------------------------------------------------------------------------------------------
# The sweep


def run_sweep(model_name: str, data: str, out: str | Path, split: str = "dev", components: list[str] | None = None,
              levels: Iterable[float] = DEFAULT_LEVELS, methods: Iterable[str] = METHODS, limit: int | None = 24,
              criterion: str = "magnitude", worker: int = 0, workers: int = 1, batch_size: int = 8,
              max_new_tokens: int = 64, calibration: int = 32, device: str = "cpu", progress: bool = True,
              executor: Executor | None = None) -> dict:
    """Run (or resume) a sweep (this worker's share of it: ``worker`` of ``workers``, the split for machines without
    Ray); returns the summary of every point finished so far. ``executor`` says where the points run (default: this
    process; ``Executor("ray")``: Ray workers); the records land in ``points.jsonl`` here, point by point, either way.

    ``max_new_tokens`` caps each hypothesis (asterisk prompts are a few words): a badly pruned model that loops
    would otherwise decode to the 224-token limit on every utterance; a capped loop still scores as errors.
    ``calibration``: dev utterances (from the start of the dev split) that the activation and Taylor criteria read.
    """
    if split == "test":
        raise ConfigError("a sensitivity sweep selects what to prune: it reads dev (or all of a manifest), never test")
    levels, methods = [float(s) for s in levels], list(methods)
    if criterion not in ("magnitude", "activation", "random", "taylor"):
        raise ConfigError(f"unknown criterion {criterion!r}")
    out = Path(out)
    settings = {"kind": "sensitivity", "model": model_name, "data": data, "split": split, "limit": limit,
                "criterion": criterion, "max_new_tokens": max_new_tokens, "beam_size": 1}
    if criterion in ("activation", "taylor"):
        settings["calibration"] = calibration
    out.mkdir(parents=True, exist_ok=True)
    dense = dense_backend(model_name, device)
    methods_of = sweepable(dense.model)
    wanted = check_request(list(methods_of), components, levels, methods, methods_of)
    claim_sweep_dir(out, settings)
    points = shard(sweep_points(wanted, levels, methods, methods_of), worker, workers)
    done = read_points(out)
    todo = [p for p in points if p.key not in done]
    local = executor is None or executor.kind == "local"
    job = SweepJob(settings, batch_size, device, need_calibration=any(p.method == "structured" for p in todo),
                   progress=progress and local, dense=dense if local else None)  # Ray workers load their own
    run_jobs(job, todo, executor or Executor(), lambda p, rec: append_locked(out / POINTS, rec), progress=progress,
             desc=f"sensitivity w{worker}/{workers}")
    return summarize(out)


@dataclass(frozen=True)
class SweepJob:
    """The points of one sweep as a job list (``scale.executor``): each worker loads the dense model and the sweep's
    inputs once, then prunes a copy and scores it per point."""

    settings: dict
    batch_size: int = 8
    device: str = "cpu"
    need_calibration: bool = True
    progress: bool = False
    dense: object = None  # the dense backend where the caller has it (a local run); else each worker loads it

    def setup(self) -> dict:
        dense = self.dense if self.dense is not None else dense_backend(self.settings["model"], self.device)
        inputs = sweep_inputs(dense, self.settings, self.batch_size, need_calibration=self.need_calibration,
                              progress=self.progress)
        return {"dense": dense, "inputs": inputs, "dense_enc": None}

    def run(self, state: dict, p: Point) -> dict:
        dense, inputs, criterion = state["dense"], state["inputs"], self.settings["criterion"]
        model = copy.deepcopy(dense.model)
        prune_point(model, p, criterion, inputs.batches)
        reuse = p.stack == "decoder" and p.method != "dense"  # the encoder is the dense one: reuse its outputs
        if reuse and state["dense_enc"] is None:  # the dense encoder's outputs per batch, once per worker
            state["dense_enc"] = [None if b.features is None else dense.encode(b.features, b.frames)
                                  for b in inputs.features]
        m = score_model(model, dense, inputs, state["dense_enc"] if reuse else None)
        return {"key": p.key, "component": p.component, "method": p.method, "sparsity": p.sparsity,
                "criterion": criterion if p.method == "structured" else None, **m, **cost_record(model)}


def dense_backend(model_name: str, device: str = "cpu"):
    """The family's PyTorch backend (``ModelFamily.backend``) for a bundled model name or a model folder."""
    from ..models.family import family_for_folder
    from ..models.registry import resolve_model

    folder = resolve_model(model_name)
    return family_for_folder(folder).backend(folder, device=device)


@dataclass
class SweepInputs:
    """What every model of a sweep decodes: the dev subset's features (computed once), the calibration batches the
    activation / Taylor criteria read, and the decoding options (token cap) the sweep pinned."""

    features: list  # evaluate.runner.FeatureBatch per batch
    batches: list[dict] | None
    options: object  # models.decoding.DecodeOptions


def sweep_inputs(dense, settings: dict, batch_size: int = 8, need_calibration: bool = True,
                 progress: bool = False) -> SweepInputs:
    """The inputs of the sweep pinned by ``settings`` (``sweep.json``) for the dense backend ``dense``."""
    from ..data.datasets import load_dataset, training_utterances
    from ..evaluate.runner import prepare_batch
    from ..models.decoding import DecodeOptions
    from ..models.family import family_for
    from ..models.registry import resolve_model

    data, limit = settings["data"], settings.get("limit")
    utts = load_dataset(data, settings["split"])
    utts = utts[:limit] if limit else utts
    frontend = dense.frontend()
    feats = [prepare_batch(frontend, utts[i : i + batch_size]) for i in range(0, len(utts), batch_size)]
    batches = None
    if need_calibration and settings.get("criterion") in ("activation", "taylor"):
        cal = training_utterances([f"{data}:dev" if data in ("asterisk", "asterisk-multiword") else data],
                                  settings["calibration"])
        labeller = family_for(dense.model).labeller(dense.model, resolve_model(settings["model"]))
        batches = labeller.labelled_batches(cal, batch_size, progress=progress)
    return SweepInputs(feats, batches, DecodeOptions(max_new_tokens=settings["max_new_tokens"]))


def score_model(model, dense, inputs: SweepInputs, encoded: list | None = None) -> dict:
    """WER and friends of ``model`` (a pruned copy of ``dense``'s model) on the sweep's inputs; ``encoded``: encoder
    outputs per batch to reuse (a model whose encoder is the dense one)."""
    from ..evaluate.runner import decode_prepared, score

    be = dense.with_model(model)
    t0 = time.perf_counter()
    encoded = encoded or [None] * len(inputs.features)
    records = [r for b, e in zip(inputs.features, encoded) for r in decode_prepared(be, b, inputs.options, encoded=e)]
    seconds = time.perf_counter() - t0
    m = score(records)
    return {"wer": m["wer"], "cer": m["cer"], "n_utterances": m["n_utterances"], "n_words": m["n_words"],
            "word_errors": m["word_errors"], "n_failed": m["n_failed"],
            "n_tokens": sum(r.get("n_tokens", 0) for r in records), "decode_seconds": seconds}


def claim_sweep_dir(out: Path, settings: dict) -> None:
    """Pin the sweep's settings in ``sweep.json`` (a rerun or another worker must match)."""
    path = out / SWEEP
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            before = None
        if before != settings:
            changed = sorted(k for k in set(settings) | set(before or {}) if (before or {}).get(k) != settings.get(k))
            raise ConfigError(f"holds a sweep with other settings ({', '.join(changed)}); use another --out", out)
    else:
        atomic_write_json(path, settings)


# ----------------------------------------------------------------------------------------------------------------
# Summary and plots


def curves(points: dict[str, dict]) -> dict[str, dict[str, list[dict]]]:
    """``{method: {component: [point records sorted by sparsity]}}`` (the dense point excluded)."""
    out: dict[str, dict[str, list[dict]]] = {}
    for r in points.values():
        if r["method"] == "dense":
            continue
        out.setdefault(r["method"], {}).setdefault(r["component"], []).append(r)
    for per in out.values():
        for c in per:
            per[c].sort(key=lambda r: r["sparsity"])
    return out


def summarize(out: str | Path, plots: bool = True) -> dict:
    """Write ``summary.json`` (and the plots) from every point in ``points.jsonl``; returns the summary."""
    out = Path(out)
    points = read_points(out)
    settings = json.loads((out / SWEEP).read_text(encoding="utf-8")) if (out / SWEEP).exists() else {}
    dense = points.get(DENSE_KEY)
    summary = {"settings": settings, "dense": dense, "n_points": len(points), "curves": {}}
    for method, per in curves(points).items():
        summary["curves"][method] = {
            c: [{k: r[k] for k in ("sparsity", "wer", "cer", "params", "nonzero_params", "flops_encoder",
                                   "flops_decoder_per_token", "decode_seconds") if k in r} for r in rs]
            for c, rs in per.items()
        }
    atomic_write_json(out / SUMMARY, summary)
    if plots and summary["curves"]:
        plot_sweep(summary, out / "plots")
    return summary


def plot_sweep(summary: dict, folder: str | Path) -> list[Path]:
    """WER vs sparsity, one line per component, one PNG per method; the dense WER as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    base = (summary.get("dense") or {}).get("wer")
    for method, per in summary["curves"].items():
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for c, rs in sorted(per.items()):
            xs, ys = [r["sparsity"] for r in rs], [100 * r["wer"] for r in rs]
            if base is not None:  # every curve starts at the dense model
                xs, ys = [0.0] + xs, [100 * base] + ys
            ax.plot(xs, ys, marker="o", label=c)
        if base is not None:
            ax.axhline(100 * base, color="grey", ls="--", lw=1, label="dense")
        ax.set_xlabel("sparsity of the component")
        ax.set_ylabel("WER % (dev subset)")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        st = summary.get("settings", {})
        how = f"{method}, {st.get('criterion')}" if method == "structured" and st.get("criterion") else method
        ax.set_title(f"{st.get('model', '')}: {how} pruning, one component at a time", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"sensitivity-{method}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths
