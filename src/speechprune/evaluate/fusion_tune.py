"""Tuning shallow fusion: a small grid of LM weights (lambda) and length bonuses (beta) decoded on a dev set, the
best by WER. Each batch is encoded once and decoded at every grid point."""

from __future__ import annotations

import dataclasses
import itertools
import math

from ..data.manifest import Utterance
from ..errors import ConfigError
from ..models.decoding import DecodeOptions
from .backends import Backend
from .runner import _batches, decode_prepared, prepare_batch, score

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5)
BONUSES = (0.0, 0.5, 1.0)


def tune_fusion(backend: Backend, utterances: list[Utterance], options: DecodeOptions,
                weights=WEIGHTS, bonuses=BONUSES, batch_size: int = 8) -> dict:
    """Decode ``utterances`` (a dev set) with ``options`` (its ``lm`` set) at every ``(weight, bonus)``; returns
    ``{"best": {"weight", "bonus", "wer"}, "grid": [{"weight", "bonus", "wer", "cer"}, ...]}``. Ties go to the
    smaller weight, then the smaller bonus (the grid's order)."""
    if options.lm is None:
        raise ConfigError("tuning shallow fusion needs an LM (options.lm)")
    if not utterances:
        raise ConfigError("tuning shallow fusion needs dev utterances; got none")
    grid = sorted(set(itertools.product(weights, bonuses)))
    points = [dataclasses.replace(options, lm_weight=float(w), lm_bonus=float(b)) for w, b in grid]  # validated
    records: list[list[dict]] = [[] for _ in points]
    frontend = backend.frontend()
    for utts in _batches(utterances, batch_size):
        batch = prepare_batch(frontend, utts)
        encoded = backend.encode(batch.features, batch.frames) if batch.features is not None else None
        for i, opts in enumerate(points):
            records[i] += decode_prepared(backend, batch, opts, encoded=encoded)
    rows = []
    for (w, b), recs in zip(grid, records):
        m = score(recs)
        rows.append({"weight": w, "bonus": b, "wer": m["wer"], "cer": m["cer"]})
    best = min(rows, key=lambda r: (r["wer"] if math.isfinite(r["wer"]) else math.inf, r["weight"], r["bonus"]))
    return {"best": {k: best[k] for k in ("weight", "bonus", "wer")}, "grid": rows}
