"""Sparsity and low-rank results as tables and plots: WER, parameters, disk and latency against sparsity, per method.

Reads the records of ``bench/unstructured.py`` (``points.jsonl``: one per method and sparsity; ``storage.json``:
file sizes over a sparsity grid) and of ``bench/lowrank.py`` (``lowrank.jsonl``: one per factorized point). Latency of
masked-dense models is that of the same dense kernels, so it is reported next to the dense figure and never called a
speed-up; low-rank models really run two smaller matmuls, so their measured latency ratio is reported as one.

Each table is built once as ``(headers, rows)`` of plain cells; :func:`markdown` writes it for ``report.md`` and the
HTML page (``report.html``) renders the same rows. :func:`figures` builds the plots for both.
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text, read_jsonl_tolerant

SPARSITIES = (0.3, 0.5, 0.7, 0.9)
Table = tuple[list[str], list[list]]


def _pct(v, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def _ms(v, digits: int = 0) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(table: Table, right_from: int = 1) -> str:
    """A markdown table: the first ``right_from`` columns left-aligned, the rest right-aligned."""
    headers, rows = table
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "---|" * right_from + "---:|" * (len(headers) - right_from)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def is_sparsity_point(rec) -> bool:
    """A ``bench/unstructured.py`` record (one method at one target sparsity, or the dense reference)."""
    return isinstance(rec, dict) and {"method", "target", "wer", "nonzero_params", "params"} <= rec.keys()


def is_lowrank_point(rec) -> bool:
    """A ``bench/lowrank.py`` record (one factorized point)."""
    return isinstance(rec, dict) and {"ranks", "wer_factorized", "latency_ratio", "params"} <= rec.keys()


def ood_cell(p: dict, suffix: str = "") -> str:
    """Out-of-domain WER %, pooled (mean of sources), or ``-`` where a record has none."""
    wer = p.get(f"wer_ood{suffix}")
    if wer is None:
        return "-"
    macro = p.get(f"macro_wer_ood{suffix}")
    return _pct(wer) + ("" if macro is None else f" ({_pct(macro)})")


def has_ood(records: list[dict]) -> bool:
    """Whether any record carries out-of-domain WER (records from before issue 16 do not)."""
    return any(k.startswith("wer_ood") for r in records for k in r)


def wer_rows(points: list[dict], sparsities=SPARSITIES, key: str = "wer") -> Table:
    """One row per method, WER % at each target sparsity (``-`` where not run), dense WER alongside; ``key``
    ``wer_ood`` gives the same table out of domain."""
    dense = next((p for p in points if p["method"] == "dense"), None)
    methods = list(dict.fromkeys(p["method"] for p in points if p["method"] != "dense"))
    by = {(p["method"], round(p["target"], 4)): p for p in points if p["method"] != "dense" and p["target"] is not None}
    rows = []
    for m in methods:
        if all((m, round(s, 4)) not in by for s in sparsities):
            continue
        cells = [_pct(by[(m, round(s, 4))].get(key)) if (m, round(s, 4)) in by else "-" for s in sparsities]
        rows.append([m, *cells, _pct(dense and dense.get(key))])
    return ["method", *(f"{100 * s:.0f} %" for s in sparsities), "dense"], rows


def wer_table(points: list[dict], sparsities=SPARSITIES, key: str = "wer") -> str:
    """Markdown of :func:`wer_rows`."""
    return markdown(wer_rows(points, sparsities, key))


def point_rows(points: list[dict]) -> Table:
    """Every point with sparsity reached, nonzero parameters, disk dense vs sparse, masked-dense latency."""
    rows = []
    for p in points:
        d = p.get("disk") or {}
        lat = p.get("latency_ms")
        rows.append([
            p["method"], p.get("pattern") or _pct(p["target"], 0), _pct(p.get("sparsity"), 1), _pct(p["wer"]),
            ood_cell(p),
            f"{p['nonzero_params'] / 1e6:.2f} / {p['params'] / 1e6:.2f}", f"{d.get('dense_bytes', 0) / 1e6:.1f}",
            f"{d.get('sparse_bytes', 0) / 1e6:.1f}", f"{d.get('sparse_fp16_bytes', 0) / 1e6:.1f}",
            ", ".join(f"{k} {v}" for k, v in (d.get("layouts") or {}).items() if v),
            "-" if lat is None else f"{lat:.0f} ({p['latency_ms_dense']:.0f})"])
    return (["method", "target", "reached", "WER %", "out-of-domain WER % (mean of sources)", "nonzero M / params M",
             "dense MB", "sparse MB (fp32)",
             "sparse MB (fp16)", "layouts", "latency ms, dense kernels (dense)"], rows)


def points_table(points: list[dict]) -> str:
    """Markdown of :func:`point_rows`."""
    return markdown(point_rows(points))


def storage_rows(storage: dict) -> Table:
    """File bytes of the model over the sparsity grid, dense vs each sparse variant."""
    rows = [[_pct(r["sparsity"], 1), f"{r['dense'] / 1e6:.2f}", f"{r['auto'] / 1e6:.2f}", f"{r['bitmask'] / 1e6:.2f}",
             f"{r['csr'] / 1e6:.2f}", f"{r['dense_fp16'] / 1e6:.2f}", f"{r['auto_fp16'] / 1e6:.2f}",
             f"{r['auto'] / r['dense']:.3f}"] for r in storage["rows"]]
    return (["sparsity of the layers", "dense fp32 MB", "auto fp32 MB", "bitmask fp32 MB", "csr fp32 MB",
             "dense fp16 MB", "auto fp16 MB", "auto fp32 / dense"], rows)


def storage_notes(storage: dict) -> list[str]:
    """The crossovers and how to read the storage table, one paragraph each."""
    c = storage["crossover"]
    notes = ["Crossover (sparsity of the pruned layers where the sparse file becomes smaller than dense, from the "
             "real serialized files, interpolated): " + ", ".join(
                 f"{k} {_pct(v, 1)} %" if v is not None else f"{k} never in range" for k, v in c.items()) + ".",
             "auto: each matrix in its smallest layout (unpruned ones stay dense); bitmask / csr: forced on every "
             "matrix, unpruned ones (embeddings) included, so they cross later. Crossovers are interpolated "
             "between grid points."]
    if "analytic" in storage:
        notes.append("Analytic, per large tensor: " + ", ".join(f"{k} {_pct(v, 1)} %" for k, v in storage["analytic"].items())
                     + ".")
    return notes


def storage_table(storage: dict) -> str:
    """Markdown: :func:`storage_rows` and :func:`storage_notes`."""
    return markdown(storage_rows(storage), right_from=0) + "\n" + "\n".join(storage_notes(storage)) + "\n"


def lowrank_rows(records: list[dict]) -> Table:
    """One row per factorized point: kept share of the factorized sites' weights, params, FLOPs, WER one-shot and
    recovered, measured latency against the dense model (interleaved, one process)."""
    rows = []
    for r in records:
        d = r["dense"]
        rows.append([
            r["name"], r["method"], f"{r['site_weights'] / r['site_weights_dense']:.2f}",
            f"{r['n_factorized']} of {r['n_factorized'] + r['n_dense']}",
            f"{r['params'] / 1e6:.2f} ({d['params'] / 1e6:.2f})",
            f"{r['flops_encoder'] / 1e9:.2f} ({d['flops_encoder'] / 1e9:.2f})",
            f"{r['flops_decoder_per_token'] / 1e6:.1f} ({d['flops_decoder_per_token'] / 1e6:.1f})",
            _pct(r["wer_factorized"]), _pct(r.get("wer_recovered")), _pct(r.get("wer_dense")),
            ood_cell(r, "_factorized"), ood_cell(r, "_recovered"), ood_cell(r, "_dense"),
            f"{_ms(r.get('latency_ms'))} ({_ms(r.get('latency_ms_dense'))})", f"{r['latency_ratio']:.2f}",
            f"{_ms(r.get('encoder_ms'))} ({_ms(r.get('encoder_ms_dense'))})",
            f"{_ms(r.get('decoder_ms_per_token'), 1)} ({_ms(r.get('decoder_ms_per_token_dense'), 1)})"])
    return (["point", "method", "layers kept share", "low-rank layers", "params M (dense)", "enc GFLOP (dense)",
             "dec MFLOP/token (dense)", "WER one-shot", "WER recovered", "dense WER", "OOD WER one-shot",
             "OOD WER recovered", "dense OOD WER", "latency ms (dense)",
             "latency ratio", "enc ms (dense)", "dec ms/token (dense)"], rows)


def lowrank_note(records: list[dict]) -> str:
    split = {(r.get("split"), r.get("limit")) for r in records}
    where = ", ".join(f"{s}{'' if n is None else f' (first {n})'}" for s, n in sorted(split, key=str))
    return (f"WER on asterisk {where}; OOD: out of domain, english-ood (speakers and recordings that no recovery, "
            "calibration or sweep reads), pooled (mean of sources); latency: batch 1, medians, interleaved with the "
            "dense model. The end-to-end "
            "ratio also moves with the number of tokens decoded (a damaged model may loop to the token limit); "
            "encoder ms and decoder ms/token do not.")


def lowrank_markdown(records: list[dict]) -> str:
    return markdown(lowrank_rows(records), right_from=2) + "\n" + lowrank_note(records) + "\n"


def crossover(xs: list[float], sparse: list[float], dense: list[float]) -> float | None:
    """The first x where ``sparse`` falls below ``dense`` (linear interpolation between grid points); ``None`` if
    it never does, the first x if it always does. A pure function."""
    diff = [s - d for s, d in zip(sparse, dense)]
    if diff and diff[0] < 0:
        return xs[0]
    for i in range(1, len(xs)):
        if diff[i] < 0 <= diff[i - 1]:
            return xs[i - 1] + (xs[i] - xs[i - 1]) * diff[i - 1] / (diff[i - 1] - diff[i])
    return None


SPARSITY_AXIS = "sparsity of the attention and FFN weights %"


def _finished(fig, ax, xlabel: str, ylabel: str):
    """Label, legend, grid and lay out one plot; returns ``fig``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def figures(points: list[dict], storage: dict | None = None, lowrank: list[dict] | None = None) -> dict:
    """Matplotlib figures by file stem: ``wer_vs_sparsity``, ``latency_vs_sparsity`` (from ``points``),
    ``disk_vs_sparsity`` (``storage``) and ``lowrank_wer_vs_params`` (``lowrank``). The caller closes them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    dense = next((p for p in points if p["method"] == "dense"), None)
    methods = list(dict.fromkeys(p["method"] for p in points if p["method"] != "dense"))
    for key, ylabel, name in (("wer", "WER % (log)", "wer_vs_sparsity"),
                              ("latency_ms", "latency ms per utterance (dense kernels)", "latency_vs_sparsity")):
        if not methods:
            break
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for m in methods:
            pts = sorted((p["sparsity"], p[key]) for p in points if p["method"] == m and p.get(key) is not None)
            if pts:
                ax.plot([100 * x for x, _ in pts], [100 * y if key == "wer" else y for _, y in pts], "o-", label=m)
        ref = dense and dense.get(key)
        if ref is not None:
            ax.axhline(100 * ref if key == "wer" else ref, color="k", ls=":", label="dense")
        if key == "wer":
            ax.set_yscale("log")
        figs[name] = _finished(fig, ax, SPARSITY_AXIS, ylabel)
    if storage:
        rows = storage["rows"]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        xs = [100 * r["sparsity"] for r in rows]
        for k, style in (("dense", "k-"), ("auto", "o-"), ("bitmask", "s--"), ("csr", "^--"), ("dense_fp16", "k:"),
                         ("auto_fp16", "o:")):
            ax.plot(xs, [r[k] / 1e6 for r in rows], style, label=k, markersize=3)
        figs["disk_vs_sparsity"] = _finished(fig, ax, SPARSITY_AXIS, "weights file MB")
    if lowrank:
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for key, marker, label in (("wer_factorized", "o", "one-shot"), ("wer_recovered", "s", "recovered")):
            pts = [(r["params"] / 1e6, 100 * r[key], r["name"]) for r in lowrank if r.get(key) is not None]
            ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], marker=marker, label=label)
            for x, y, n in pts:
                ax.annotate(n, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        d = next((r for r in lowrank if r.get("wer_dense") is not None), None)
        if d:
            ax.scatter([d["dense"]["params"] / 1e6], [100 * d["wer_dense"]], marker="*", c="k", label="dense")
        figs["lowrank_wer_vs_params"] = _finished(fig, ax, "parameters, M", "WER %")
    return figs


def plot(points: list[dict], storage: dict | None, out_dir: str | Path, lowrank: list[dict] | None = None) -> list[Path]:
    """The :func:`figures` as PNG files in ``out_dir``."""
    import matplotlib.pyplot as plt

    written = []
    for name, fig in figures(points, storage, lowrank).items():
        path = Path(out_dir) / f"{name}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def write_sparsity_report(results_dir: str | Path, title: str = "Unstructured pruning") -> Path:
    """``report.md`` (tables) and the plots in ``results_dir`` from its ``points.jsonl`` and ``storage.json``."""
    import json

    results_dir = Path(results_dir)
    points = list(read_jsonl_tolerant(results_dir / "points.jsonl"))
    storage_path = results_dir / "storage.json"
    storage = json.loads(storage_path.read_text(encoding="utf-8")) if storage_path.is_file() else None
    split = next((p.get("split") for p in points if p.get("split")), "?")
    parts = [f"# {title}", "", f"WER % on asterisk {split}"
             f"{'' if not points or points[0].get('limit') is None else ' (first ' + str(points[0]['limit']) + ' utterances)'}"
             " by method and sparsity of the attention and FFN weights (one-shot unless the method says IMP):", "",
             wer_table(points), *(["Out of domain (english-ood: speakers and recordings that no recovery, calibration "
                                   "or sweep reads), pooled WER %:", "", wer_table(points, key="wer_ood")]
                                 if has_ood(points) else []),
             "Every point:", "", points_table(points),
             "Latency: masked-dense models run the same dense kernels as the dense model; any difference is noise, "
             "not a speed-up.", ""]
    if storage:
        parts += ["## Disk: the compressed format against dense", "", storage_table(storage)]
    written = plot(points, storage, results_dir)
    parts += ["", *[f"![{p.stem}]({p.name})" for p in written]]
    md = results_dir / "report.md"
    atomic_write_text(md, "\n".join(parts) + "\n")
    return md
