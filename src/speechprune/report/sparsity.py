"""Sparsity results as tables and plots: WER, parameters, disk and latency against sparsity, per method.

Reads the records of ``bench/unstructured.py`` (``points.jsonl``: one per method and sparsity; ``storage.json``:
file sizes over a sparsity grid). Latency is that of masked-dense models: the same dense kernels run, so it is
reported next to the dense figure and never called a speed-up.
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text, read_jsonl_tolerant

SPARSITIES = (0.3, 0.5, 0.7, 0.9)


def _pct(v, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}"


def wer_table(points: list[dict], sparsities=SPARSITIES) -> str:
    """Markdown: one row per method, WER % at each target sparsity (``-`` where not run), dense WER alongside."""
    dense = next((p for p in points if p["method"] == "dense"), None)
    methods = list(dict.fromkeys(p["method"] for p in points if p["method"] != "dense"))
    by = {(p["method"], round(p["target"], 4)): p for p in points if p["method"] != "dense" and p["target"] is not None}
    lines = ["| method | " + " | ".join(f"{100 * s:.0f} %" for s in sparsities) + " | dense |",
             "|---|" + "---:|" * (len(sparsities) + 1)]
    for m in methods:
        if all((m, round(s, 4)) not in by for s in sparsities):
            continue
        cells = [_pct(by[(m, round(s, 4))]["wer"]) if (m, round(s, 4)) in by else "-" for s in sparsities]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_pct(dense and dense['wer'])} |")
    return "\n".join(lines) + "\n"


def points_table(points: list[dict]) -> str:
    """Markdown: every point with sparsity reached, nonzero parameters, disk dense vs sparse, masked-dense latency."""
    lines = ["| method | target | reached | WER % | nonzero M / params M | dense MB | sparse MB (fp32) | sparse MB (fp16) "
             "| layouts | latency ms, dense kernels (dense) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for p in points:
        d = p.get("disk") or {}
        lat = p.get("latency_ms")
        lat_cell = "-" if lat is None else f"{lat:.0f} ({p['latency_ms_dense']:.0f})"
        lines.append(
            f"| {p['method']} | {p.get('pattern') or _pct(p['target'], 0)} | {_pct(p.get('sparsity'), 1)} "
            f"| {_pct(p['wer'])} | {p['nonzero_params'] / 1e6:.2f} / {p['params'] / 1e6:.2f} "
            f"| {d.get('dense_bytes', 0) / 1e6:.1f} | {d.get('sparse_bytes', 0) / 1e6:.1f} "
            f"| {d.get('sparse_fp16_bytes', 0) / 1e6:.1f} "
            f"| {', '.join(f'{k} {v}' for k, v in (d.get('layouts') or {}).items() if v)} "
            f"| {lat_cell} |")
    return "\n".join(lines) + "\n"


def storage_table(storage: dict) -> str:
    """Markdown: file bytes of the model over the sparsity grid, dense vs each sparse variant, and the crossovers."""
    rows = storage["rows"]
    lines = ["| sparsity of the layers | dense fp32 MB | auto fp32 MB | bitmask fp32 MB | csr fp32 MB | dense fp16 MB "
             "| auto fp16 MB | auto fp32 / dense |", "|---:|" + "---:|" * 7]
    for r in rows:
        lines.append(f"| {_pct(r['sparsity'], 1)} | {r['dense'] / 1e6:.2f} | {r['auto'] / 1e6:.2f} "
                     f"| {r['bitmask'] / 1e6:.2f} | {r['csr'] / 1e6:.2f} | {r['dense_fp16'] / 1e6:.2f} "
                     f"| {r['auto_fp16'] / 1e6:.2f} | {r['auto'] / r['dense']:.3f} |")
    c = storage["crossover"]
    lines += ["", "Crossover (sparsity of the pruned layers where the sparse file becomes smaller than dense, from the "
                  "real serialized files, interpolated): " + ", ".join(
                      f"{k} {_pct(v, 1)} %" if v is not None else f"{k} never in range" for k, v in c.items()) + "."]
    lines.append("auto: each matrix in its smallest layout (unpruned ones stay dense); bitmask / csr: forced on every "
                 "matrix, unpruned ones (embeddings) included, so they cross later. Crossovers are interpolated "
                 "between grid points.")
    if "analytic" in storage:
        lines.append("Analytic, per large tensor: " + ", ".join(f"{k} {_pct(v, 1)} %" for k, v in storage["analytic"].items())
                     + ".")
    return "\n".join(lines) + "\n"


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


def plot(points: list[dict], storage: dict | None, out_dir: str | Path) -> list[Path]:
    """``wer_vs_sparsity.png``, ``disk_vs_sparsity.png`` and ``latency_vs_sparsity.png`` in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    written = []
    dense = next((p for p in points if p["method"] == "dense"), None)
    methods = list(dict.fromkeys(p["method"] for p in points if p["method"] != "dense"))
    for key, ylabel, fname in (("wer", "WER % (log)", "wer_vs_sparsity.png"),
                               ("latency_ms", "latency ms per utterance (dense kernels)", "latency_vs_sparsity.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for m in methods:
            pts = sorted((p["sparsity"], p[key]) for p in points if p["method"] == m and p.get(key) is not None)
            if pts:
                ax.plot([100 * x for x, _ in pts], [100 * y if key == "wer" else y for _, y in pts], "o-", label=m)
        ref = dense and (dense.get(key) if key == "wer" else dense.get("latency_ms"))
        if ref is not None:
            ax.axhline(100 * ref if key == "wer" else ref, color="k", ls=":", label="dense")
        if key == "wer":
            ax.set_yscale("log")
        ax.set_xlabel("sparsity of the attention and FFN weights %")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / fname, dpi=120)
        plt.close(fig)
        written.append(out_dir / fname)
    if storage:
        rows = storage["rows"]
        fig, ax = plt.subplots(figsize=(6.5, 4))
        xs = [100 * r["sparsity"] for r in rows]
        for k, style in (("dense", "k-"), ("auto", "o-"), ("bitmask", "s--"), ("csr", "^--"), ("dense_fp16", "k:"),
                         ("auto_fp16", "o:")):
            ax.plot(xs, [r[k] / 1e6 for r in rows], style, label=k, markersize=3)
        ax.set_xlabel("sparsity of the attention and FFN weights %")
        ax.set_ylabel("weights file MB")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "disk_vs_sparsity.png", dpi=120)
        plt.close(fig)
        written.append(out_dir / "disk_vs_sparsity.png")
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
             wer_table(points), "Every point:", "", points_table(points),
             "Latency: masked-dense models run the same dense kernels as the dense model; any difference is noise, "
             "not a speed-up.", ""]
    if storage:
        parts += ["## Disk: the compressed format against dense", "", storage_table(storage)]
    written = plot(points, storage, results_dir)
    parts += ["", *[f"![{p.stem}]({p.name})" for p in written]]
    md = results_dir / "report.md"
    atomic_write_text(md, "\n".join(parts) + "\n")
    return md
