"""Annotated heatmaps for analysis tables (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path


def plot_heatmap(values: list[list[float | None]], rows: list[str], cols: list[str], path: str | Path, title: str,
                 **kw) -> Path:
    """Write :func:`heatmap_figure` to ``path`` (PNG). Returns ``path``."""
    import matplotlib.pyplot as plt

    fig = heatmap_figure(values, rows, cols, title, **kw)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def heatmap_figure(values: list[list[float | None]], rows: list[str], cols: list[str], title: str,
                   vmin: float | None = None, vmax: float | None = None, fmt: str = "{:.2f}",
                   marks: list[list[str]] | None = None, cmap: str = "viridis"):
    """A ``rows x cols`` heatmap (matplotlib figure) with each cell's value printed (``None`` = blank, drawn grey)
    and an optional short mark per cell (e.g. ``A``/``C`` for ambient/critical)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = np.array([[math.nan if v is None else float(v) for v in r] for r in values], dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.5, 2.0 + 1.1 * len(cols)), 1.4 + 0.38 * max(len(rows), 1)))
    cm = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(data), aspect="auto", cmap=cm, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize=8)
    lo, hi = im.get_clim()
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = data[i, j]
            if math.isnan(v):
                continue
            text = fmt.format(v) + (f" {marks[i][j]}" if marks and marks[i][j] else "")
            light = (v - lo) / (hi - lo) < 0.5 if hi > lo else True
            ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if light else "black")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig
