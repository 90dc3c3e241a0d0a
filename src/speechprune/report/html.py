"""One self-contained HTML page from run folders: every known JSON record found under them, as tables and plots.

``collect`` walks the folders and reads what it recognizes by name and shape (never by folder layout alone):

* ``report.json``            the main job's summary (``report.summary``): one row per backend, WER next to latency
* ``metrics.json``           an evaluation (``evaluate.runner``)
* ``bench.json``             a benchmark (``bench.latency``)
* ``prune.json``             a structured prune (``prune.run``): params and FLOPs per step
* ``sweep.json`` + ``points.jsonl``  a sensitivity sweep (``analysis.sensitivity``)
* a plan record (``analysis.plan``: keys ``plan`` and ``uniform``)
* ``*.jsonl`` records of ``bench/unstructured.py`` (with ``storage.json`` beside them) and of ``bench/lowrank.py``:
  WER, disk and latency against sparsity per method, low-rank WER against parameters (``report.sparsity``)
* any other JSON holding a list of flat records (ablation or signature summaries): a generic table

Other JSON files are listed as skipped, with the reason. ``render`` turns the collection into HTML with WER-vs-latency,
WER-vs-size and WER-vs-sparsity plots (inline base64 PNG; no external resources, no links) and tables.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

SKIP_NAMES = {"run.json", "tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json",
              "preprocessor_config.json", "processor_config.json", "vocabulary.json", "special_tokens_map.json",
              "added_tokens.json", "vocab.json", "normalizer.json", "summary.json.tmp"}
MAX_FILES = 2000
MAX_ROWS = 60


@dataclass
class Collection:
    main: list[dict] = field(default_factory=list)  # {source, title, rows}
    evals: list[dict] = field(default_factory=list)  # {source, metrics}
    benches: list[dict] = field(default_factory=list)  # {source, record}
    prunes: list[dict] = field(default_factory=list)  # {source, record}
    sweeps: list[dict] = field(default_factory=list)  # {source, settings, points}
    plans: list[dict] = field(default_factory=list)  # {source, record}
    sparsity: list[dict] = field(default_factory=list)  # {source, points, storage}: bench/unstructured.py results
    lowrank: list[dict] = field(default_factory=list)  # {source, points}: bench/lowrank.py results
    ablations: list[dict] = field(default_factory=list)  # {source, summary}: analyze ablation's summary.json
    signatures: list[dict] = field(default_factory=list)  # {source, record}: analyze signatures' signatures.json
    tables: list[dict] = field(default_factory=list)  # {source, rows}: any other list of records
    skipped: list[str] = field(default_factory=list)  # "path: why"

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return e


def _flat_rows(obj) -> list[dict] | None:
    """The first list of flat records (dicts of scalars) in ``obj`` (itself, or a value of a dict)."""
    candidates = [obj] + (list(obj.values()) if isinstance(obj, dict) else [])
    for c in candidates:
        if isinstance(c, list) and c and all(isinstance(r, dict) for r in c):
            rows = [{k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) or v is None} for r in c]
            if any(rows):
                return rows
        if isinstance(c, dict) and c and all(isinstance(v, dict) for v in c.values()) and c is not obj:
            rows = [{"key": k, **{kk: vv for kk, vv in v.items() if isinstance(vv, (int, float, str, bool))}}
                    for k, v in c.items()]
            if any(len(r) > 1 for r in rows):
                return rows
    return None


def collect(dirs: list[str | Path]) -> Collection:
    """Everything ``render`` can show from the folders ``dirs`` (searched recursively)."""
    from ..analysis.sensitivity import POINTS, SWEEP, read_points

    col = Collection()
    files: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise ConfigError("run folder not found", d)
        files += [d] if d.is_file() else sorted(p for p in d.rglob("*.json*") if p.is_file())
    if len(files) > MAX_FILES:
        raise ConfigError(f"{len(files)} JSON files under the given folders; name narrower run folders")
    sweep_dirs = {p.parent for p in files if p.name == SWEEP}
    sparsity_dirs = set()
    for p in files:
        if p.suffix == ".jsonl" and p.parent not in sweep_dirs and _read_results(p, col):
            sparsity_dirs.add(p.parent)
    for p in files:
        if p.name in SKIP_NAMES or p.name.startswith(".") or p.suffix != ".json":
            continue
        if p.parent in sweep_dirs and p.name in (SWEEP, "summary.json"):
            continue  # read with the sweep
        if p.parent in sparsity_dirs and p.name == "storage.json":
            continue  # read with the sparsity results
        obj = _read_json(p)
        src = str(p)
        if isinstance(obj, Exception):
            col.skipped.append(f"{src}: unreadable ({obj.__class__.__name__})")
        elif not isinstance(obj, dict):
            rows = _flat_rows(obj)
            (col.tables.append({"source": src, "rows": rows}) if rows else col.skipped.append(f"{src}: not a record"))
        elif p.name == "report.json" and isinstance(obj.get("rows"), list):
            col.main.append({"source": src, "title": obj.get("title", src), "rows": obj["rows"],
                             "environment": obj.get("environment")})
        elif "wer" in obj and "n_utterances" in obj:
            col.evals.append({"source": src, "metrics": obj})
        elif isinstance(obj.get("backends"), dict) and "latency_ratio" in obj:
            col.benches.append({"source": src, "record": obj})
        elif isinstance(obj.get("dense"), dict) and isinstance(obj.get("steps"), list):
            col.prunes.append({"source": src, "record": obj})
        elif isinstance(obj.get("plan"), dict) and isinstance(obj.get("uniform"), dict):
            col.plans.append({"source": src, "record": obj})
        elif {"rule", "classes", "table", "targets", "methods", "metrics"} <= set(obj):
            col.ablations.append({"source": src, "summary": obj})
        elif {"before", "after", "rows", "layers"} <= set(obj) and isinstance(obj["rows"], list):
            col.signatures.append({"source": src, "record": obj})
        else:
            rows = _flat_rows(obj)
            if rows:
                col.tables.append({"source": src, "rows": rows})
            else:
                col.skipped.append(f"{src}: unknown record (keys: {', '.join(list(obj)[:6])})")
    for d in sorted(sweep_dirs):
        settings = _read_json(d / SWEEP)
        points = list(read_points(d).values())
        if isinstance(settings, Exception) or not points:
            col.skipped.append(f"{d}: sensitivity sweep without finished points")
            continue
        col.sweeps.append({"source": str(d / POINTS), "settings": settings, "points": points})
    return col


def _read_results(path: Path, col: Collection) -> bool:
    """Add the ``bench/unstructured.py`` or ``bench/lowrank.py`` records in the JSONL file ``path`` to ``col``
    (other JSONL files, e.g. hypotheses, are not results and are passed over); True when it held sparsity points."""
    from ..io import read_jsonl_tolerant
    from .sparsity import is_lowrank_point, is_sparsity_point

    try:
        records = list(read_jsonl_tolerant(path))
    except (OSError, UnicodeDecodeError) as e:
        col.skipped.append(f"{path}: unreadable ({e.__class__.__name__})")
        return False
    points = [r for r in records if is_sparsity_point(r)]
    lowrank = [r for r in records if is_lowrank_point(r)]
    if lowrank:
        col.lowrank.append({"source": str(path), "points": lowrank})
    if not points:
        return False
    storage = _read_json(path.parent / "storage.json") if (path.parent / "storage.json").is_file() else None
    if isinstance(storage, Exception) or not (isinstance(storage, dict) and "rows" in storage and "crossover" in storage):
        if storage is not None:
            col.skipped.append(f"{path.parent / 'storage.json'}: not a storage curve")
        storage = None
    col.sparsity.append({"source": str(path), "points": points, "storage": storage})
    return True


# ----------------------------------------------------------------------------------------------------------------
# Rendering


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pct(v):
    return None if v is None else round(100 * v, 2)


def _points_latency_size(col: Collection) -> tuple[list, list]:
    """(label, WER %, latency ms) and (label, WER %, params M) of every model with both numbers."""
    lat, size = [], []
    for m in col.main:
        for r in m["rows"]:
            if r.get("wer") is None:
                continue
            label = f"{r.get('backend')} ({Path(m['source']).parent.name})"
            if r.get("latency_ms_median") is not None:
                lat.append((label, 100 * r["wer"], r["latency_ms_median"]))
            if r.get("params_m") is not None:
                size.append((label, 100 * r["wer"], r["params_m"]))
    return lat, size


def _scatter(points: list[tuple], xlabel: str, title: str, extra=None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, y, x in points:
        ax.scatter([x], [y])
        ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if extra:
        extra(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("WER %")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def _sweep_plot(sweep: dict) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = sweep["points"]
    dense = next((p for p in pts if p.get("method") == "dense"), None)
    methods = sorted({p["method"] for p in pts if p.get("method") != "dense"})
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(6.0 * max(1, len(methods)), 4.2), squeeze=False)
    for ax, method in zip(axes[0], methods):
        comps = sorted({p["component"] for p in pts if p["method"] == method})
        for c in comps:
            rs = sorted((p for p in pts if p["method"] == method and p["component"] == c), key=lambda p: p["sparsity"])
            xs, ys = [p["sparsity"] for p in rs], [100 * p["wer"] for p in rs]
            if dense:
                xs, ys = [0.0] + xs, [100 * dense["wer"]] + ys
            ax.plot(xs, ys, marker="o", label=c)
        if dense:
            ax.axhline(100 * dense["wer"], color="grey", ls="--", lw=1)
        crit = sweep["settings"].get("criterion")
        ax.set_title(f"{method} ({crit})" if method == "structured" and crit else method)
        ax.set_xlabel("sparsity of the component")
        ax.set_ylabel("WER %")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{sweep['settings'].get('model')}: WER vs sparsity, one component at a time")
    fig.tight_layout()
    return _png(fig)


def _measured(col: Collection, recipe: str | None) -> str:
    """WER of the evaluations whose model is a prune with ``recipe`` (``.../prune-<recipe stem>/step-N``)."""
    if not recipe:
        return "-"
    tag = f"/prune-{Path(recipe).stem}/"
    out = []
    for e in col.evals:
        st = e["metrics"].get("settings") or {}
        if tag in str(st.get("model", "")) and e["metrics"].get("wer") is not None:
            where = f"{Path(str(st.get('data'))).stem} {st.get('split') or ''}".strip()
            out.append(f"{100 * e['metrics']['wer']:.2f} ({where}, {e['metrics'].get('n_utterances')} utt.)")
    return "; ".join(out) or "-"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}h2{border-bottom:1px solid #ddd;margin-top:1.5em}
.src{color:#777;font-size:12px}.note{color:#555}img{max-width:100%}"""


def ood_pairs(evals: list[dict]) -> list[tuple[dict, dict | None]]:
    """Each in-domain evaluation with its out-of-domain twin (``<its folder>/ood/metrics.json``, written beside it
    by ``eval``, ``run`` and the benches), or None; a twin is not listed on its own."""
    by_source = {e["source"]: e for e in evals}

    def twin(e: dict) -> str:
        return str(Path(e["source"]).parent / "ood" / "metrics.json")

    twins = {twin(e) for e in evals if twin(e) in by_source}
    return [(e, by_source.get(twin(e))) for e in evals if e["source"] not in twins]


def gate_matrix(gates: dict, modules: list[str]) -> tuple[list[str], list[list[float]]]:
    """Rows (``language/task``) and each module's keep share per row from a gated evaluation's ``metrics["gates"]``
    (``by_language_task[<lang>/<task>]["keep"]``, in ``modules`` order)."""
    rows = sorted(gates.get("by_language_task", {}))
    return rows, [[float(gates["by_language_task"][r]["keep"][i]) for i in range(len(modules))] for r in rows]


def _gate_heatmap(metrics: dict) -> str:
    """Which modules each language and task keeps (1: always computed, 0: always skipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modules = list(((metrics.get("settings") or {}).get("gates") or {}).get("modules") or [])
    rows, keep = gate_matrix(metrics["gates"], modules)
    if not rows or not modules:
        return '<p class="note">gated evaluation without per-context keep shares</p>'
    fig, ax = plt.subplots(figsize=(min(14, 2 + 0.18 * len(modules)), 1 + 0.35 * len(rows)))
    im = ax.imshow(keep, aspect="auto", vmin=0, vmax=1, cmap="viridis")
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(len(modules)), modules, rotation=90, fontsize=6)
    ax.set_title("share of clips that compute each module, per language/task", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.02)
    fig.tight_layout()
    return _png(fig)


def _eval_sections(col: Collection) -> list[str]:
    """Every evaluation with its out-of-domain twin beside it (pooled and the mean of sources), and the gates'
    heatmap of gated evaluations."""
    if not col.evals:
        return []
    rows = []
    for e, ood in ood_pairs(col.evals):
        m, st = e["metrics"], e["metrics"].get("settings") or {}
        o = (ood or {}).get("metrics") or {}
        rows.append([e["source"], st.get("model"), st.get("data"), st.get("split"), st.get("backend"),
                     _pct(m.get("wer")), _pct(o.get("wer")), _pct(o.get("macro_wer")), _pct(m.get("cer")), m.get("n_utterances"),
                     m.get("n_failed"), (m.get("runaway") or {}).get("utterances")])
    parts = ["<h2>Evaluations</h2>", _table(
        ["source", "model", "data", "split", "backend", "WER %", "out-of-domain WER %", "OOD mean of sources %",
         "CER %", "utterances", "failed", "runaway"], rows)]
    for e in col.evals:
        if isinstance(e["metrics"].get("gates"), dict):
            g = e["metrics"]["gates"]
            parts.append(f"<h3>Gates: mean skip share {100 * g.get('skip_share', 0):.1f} %</h3>"
                         f"<p class='src'>{html.escape(e['source'])}</p>" + _gate_heatmap(e["metrics"]))
    return parts


def _machine_note(env: dict | None) -> str:
    """Which CPU, instruction sets and kernels made a timing (``bench.environment.machine_line``)."""
    from ..bench.environment import machine_line

    if not env:
        return '<p class="note">machine not recorded</p>'
    text = f"{machine_line(env)}; {env.get('threads')} threads"
    return f'<p class="note">{html.escape(text)}</p>'


def render(col: Collection, title: str = "speechprune report") -> str:
    """The page: plots first, then one table per record kind, then what was skipped."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    lat, size = _points_latency_size(col)

    sweep_size = [(f"{p['component']} {p['method']} {p['sparsity']:g}", 100 * p["wer"], p["nonzero_params"] / 1e6)
                  for s in col.sweeps for p in s["points"] if p.get("nonzero_params") is not None]
    sweep_size += [(p["name"], 100 * p["wer"], p["nonzero_params"] / 1e6) for r in col.sparsity for p in r["points"]]
    sweep_size += [(p["name"], 100 * p["wer_factorized"], p["params"] / 1e6) for r in col.lowrank for p in r["points"]]
    parts.append("<h2>WER vs latency</h2>")
    parts.append(_scatter(lat, "latency per utterance, ms (median)", "WER vs latency") if lat
                 else '<p class="note">no run with both WER and latency (a main-job report.json has both)</p>')
    parts.append("<h2>WER vs size</h2>")
    if size or sweep_size:
        def sweep_overlay(ax):
            if sweep_size:
                ax.scatter([x for _, _, x in sweep_size], [y for _, y, _ in sweep_size], s=10, c="grey", alpha=0.6,
                           label="sweep, sparsity and low-rank points (non-zero params)")
                ax.legend(fontsize=7)
        parts.append(_scatter(size, "parameters, M (non-zero for sweep points)", "WER vs size", sweep_overlay))
    else:
        parts.append('<p class="note">no run with both WER and size</p>')
    parts.append("<h2>WER vs sparsity</h2>")
    if col.sweeps:
        for s in col.sweeps:
            parts.append(_sweep_plot(s))
    if not (col.sweeps or col.sparsity or col.lowrank):
        parts.append('<p class="note">no sensitivity sweep or sparsity results among the inputs</p>')
    parts += _sparsity_sections(col)

    for m in col.main:
        parts.append(f"<h2>{html.escape(m['title'])}</h2><p class='src'>{html.escape(m['source'])}</p>")
        parts.append(_table(["backend", "WER %", "out-of-domain WER %", "OOD mean of sources %", "CER %", "latency ms",
                             "ratio", "encoder GFLOP", "params M", "disk MB"],
                            [[r.get("backend"), _pct(r.get("wer")), _pct(r.get("wer_ood")), _pct(r.get("macro_wer_ood")),
                              _pct(r.get("cer")), r.get("latency_ms_median"), r.get("latency_ratio"),
                              r.get("gflops_encoder"), r.get("params_m"), r.get("disk_mb")]
                             for r in m["rows"]]))
        parts.append(_machine_note(m.get("environment")))
    parts += _eval_sections(col)
    for b in col.benches:
        r = b["record"]
        parts.append(f"<h2>Benchmark {html.escape(str(r.get('model', '')))}</h2><p class='src'>{html.escape(b['source'])}</p>")
        parts.append(_table(["backend", "latency ms", "p90 ms", "encoder ms", "decoder ms/token", "RTF", "ratio", "params M"],
                            [[n, v.get("latency_ms_median"), v.get("latency_ms_p90"), v.get("encoder_ms_median"),
                              v.get("decoder_ms_per_token"), v.get("rtf_median"), r["latency_ratio"].get(n),
                              None if v.get("params") is None else v["params"] / 1e6] for n, v in r["backends"].items()]))
        parts.append(_machine_note(r.get("environment")))
    for p in col.prunes:
        r = p["record"]
        rows = [["dense", r["dense"].get("params"), r["dense"].get("flops_encoder"), r["dense"].get("flops_decoder_per_token"), ""]]
        rows += [[f"step {s.get('step')}", s.get("params"), s.get("flops_encoder"), s.get("flops_decoder_per_token"),
                  ", ".join(s.get("removed_modules", []) + s.get("removed_layers", []))] for s in r["steps"]]
        parts.append(f"<h2>Prune {html.escape(str(r.get('model', '')))} ({html.escape(str((r.get('recipe') or {}).get('name')))})"
                     f"</h2><p class='src'>{html.escape(p['source'])}</p>")
        parts.append(_table(["", "params", "encoder FLOPs", "decoder FLOPs/token", "removed"], rows))
    for s in col.sweeps:
        st = s["settings"]
        parts.append(f"<h2>Sensitivity sweep: {html.escape(str(st.get('model')))} on {html.escape(str(st.get('data')))} "
                     f"{html.escape(str(st.get('split')))} (first {html.escape(str(st.get('limit')))})</h2>"
                     f"<p class='src'>{html.escape(s['source'])}</p>")
        rows = sorted(s["points"], key=lambda p: (p["method"] != "dense", p["method"], p["component"], p["sparsity"]))
        parts.append(_table(["method", "component", "sparsity", "WER %", "params", "non-zero params", "encoder GFLOP",
                             "decoder MFLOP/token"],
                            [[p["method"], p["component"], p["sparsity"], _pct(p["wer"]), p.get("params"),
                              p.get("nonzero_params"), p.get("flops_encoder", 0) / 1e9, p.get("flops_decoder_per_token", 0) / 1e6]
                             for p in rows]))
    for p in col.plans:
        r = p["record"]
        parts.append(f"<h2>Plan for {html.escape(str(r.get('target')))}</h2><p class='src'>{html.escape(p['source'])}</p>")
        rows = []
        for name in ("plan", "uniform"):
            a = r[name]
            real = a.get("realized") or {}
            rows.append([name, ", ".join(f"{c} {v['sparsity']:.3f}" for c, v in a["per_component"].items() if v["sparsity"] > 0),
                         _pct(a.get("predicted_wer_increase")), a.get("predicted_removed"), real.get("params"),
                         real.get("flops_encoder"), real.get("flops_decoder_per_token"),
                         _pct((a.get("check") or {}).get("wer_increase")), _measured(col, a.get("recipe"))])
        parts.append(_table(["allocation", "unit fractions removed", "predicted WER +%", "predicted removed", "params",
                             "encoder FLOPs", "decoder FLOPs/token", "checked WER +% (sweep subset)",
                             "measured WER % (evals of its prune)"], rows))
    parts += _analysis_sections(col)
    for t in col.tables:
        rows = t["rows"][:MAX_ROWS]
        keys = list(dict.fromkeys(k for r in rows for k in r))[:12]
        cut = f" (first {MAX_ROWS} of {len(t['rows'])} rows)" if len(t["rows"]) > MAX_ROWS else ""
        parts.append(f"<h2>{html.escape(Path(t['source']).name)}</h2><p class='src'>{html.escape(t['source'] + cut)}</p>")
        parts.append(_table(keys, [[r.get(k) for k in keys] for r in rows]))
    if col.skipped:
        parts.append("<h2>Skipped inputs</h2><ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in col.skipped) + "</ul>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>\n")


def _analysis_sections(col: Collection) -> list[str]:
    """Layer ablations (heatmaps, the critical/ambient table with its rule, seed stability) and weight-change
    signatures (heatmaps, per-layer values, correlation with an ablation)."""
    from ..analysis.heatmap import heatmap_figure
    from ..analysis.jobs import ablation_heatmaps, signature_heatmaps

    parts = []
    for a in col.ablations:
        sm = a["summary"]
        parts.append(f"<h2>Layer ablation: critical and ambient</h2><p class='src'>{html.escape(a['source'])}</p>")
        thresholds = "; ".join(f"{m}: {i['delta']} < {i['threshold']:g} is ambient ({i['seeds']} seeds)"
                               for m, i in sm["metrics"].items())
        parts.append(f"<p class='note'>{html.escape(sm['rule'])}. {html.escape(thresholds)}</p>")
        for _, kw in ablation_heatmaps(sm):
            parts.append(_png(heatmap_figure(**kw)))
        cols = [(method, metric) for metric in sm["metrics"] for method in sm["methods"]]
        rows = []
        for t in sm["targets"]:
            cells = [t]
            for method, metric in cols:
                entry = (sm["table"].get(t, {}).get(method, {}) or {}).get(metric)
                cells.append("-" if entry is None else f"{entry['class']} ({_fmt(entry['delta'])})")
            rows.append(cells)
        parts.append(_table(["target"] + [f"{method} / {metric}" for method, metric in cols], rows))
        stab = [[metric, method, v.get("mean_spearman"), v.get("min_spearman"), v.get("class_agreement")]
                for metric, by in sm.get("stability", {}).items() for method, v in by.items()]
        if stab:
            parts.append(_table(["metric", "method", "seed Spearman (mean)", "(min)", "class agreement"], stab))
    for g in col.signatures:
        r = g["record"]
        parts.append(f"<h2>Weight-change signatures: {html.escape(str(r['before']))} -> {html.escape(str(r['after']))}"
                     f"</h2><p class='src'>{html.escape(g['source'])}</p>")
        for _, kw in signature_heatmaps(r):
            parts.append(_png(heatmap_figure(**kw)))
        parts.append(_table(["layer", "signature (normalized per stack)"], [[k, v] for k, v in r["layers"].items()]))
        corr = [[metric, method, c.get("spearman"), c.get("n")] for metric, by in (r.get("correlation") or {}).items()
                for method, c in by.items()]
        if corr:
            parts.append(_table(["ablation metric", "method", "Spearman with the signature", "layers"], corr))
    return parts


def _sparsity_sections(col: Collection) -> list[str]:
    """Unstructured results (WER table, every point, disk against dense) and low-rank results, tables and plots."""
    from .sparsity import (figures, has_ood, lowrank_note, lowrank_rows, point_rows, storage_notes, storage_rows,
                           wer_rows)

    parts = []
    for r in col.sparsity:
        pts, storage = r["points"], r["storage"]
        split = next((p.get("split") for p in pts if p.get("split")), "?")
        parts.append(f"<h2>Unstructured pruning: WER % on {html.escape(str(split))} by method and sparsity</h2>"
                     f"<p class='src'>{html.escape(r['source'])}</p>")
        parts += [_png(f) for f in figures(pts, storage).values()]
        parts.append(_table(*wer_rows(pts)))
        if has_ood(pts):
            parts.append("<h3>Out of domain: english-ood (speakers and recordings that no recovery, calibration or "
                         "sweep reads), pooled WER %</h3>" + _table(*wer_rows(pts, key="wer_ood")))
        parts.append(_table(*point_rows(pts)))
        parts.append('<p class="note">Latency: masked-dense models run the same dense kernels as the dense model; '
                     "any difference is noise, not a speed-up.</p>")
        if storage:
            parts.append("<h3>Disk: the compressed format against dense</h3>" + _table(*storage_rows(storage)))
            parts += [f'<p class="note">{html.escape(n)}</p>' for n in storage_notes(storage)]
    for r in col.lowrank:
        parts.append(f"<h2>Low-rank factorization</h2><p class='src'>{html.escape(r['source'])}</p>")
        parts += [_png(f) for f in figures([], None, r["points"]).values()]
        parts.append(_table(*lowrank_rows(r["points"])))
        parts.append(f'<p class="note">{html.escape(lowrank_note(r["points"]))}</p>')
    return parts


def write_html_report(dirs: list[str | Path], out: str | Path, title: str = "speechprune report") -> Path:
    """Collect ``dirs``, write ``out`` (HTML) and, next to it, the collected records (``<stem>.json``)."""
    from ..io import atomic_write_json, atomic_write_text

    out = Path(out)
    col = collect(dirs)
    atomic_write_text(out, render(col, title))
    atomic_write_json(out.with_suffix(".json"), col.to_json())
    return out
