"""Lines of text as the LM's training and scoring batches: every line its own sequence from position 0 (as the
LM is read when fused into a search), cut to the context, batched with lines of similar length."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .network import IGNORE
from .tokens import Tokens


@dataclass
class Sequences:
    """Encoded lines in one flat array: line ``i`` is ``rows[starts[i] : starts[i] + lengths[i]]`` (its first row
    starts it, its last ends it unless the line was cut to the context)."""

    rows: np.ndarray  # int64
    starts: np.ndarray
    lengths: np.ndarray
    oov: int  # tokens (read as the unseen row) or characters (dropped) the LM has no row for
    truncated: int  # lines cut to the context
    words: int  # words of the lines, for per-word perplexity

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def targets(self) -> int:
        """Scored positions: every row but each line's first."""
        return int(self.lengths.sum()) - len(self.lengths)


def encode_lines(tokens: Tokens, lines: list[str], context: int, chunk: int = 10000) -> Sequences:
    """``lines`` as rows (``tokens.encode``), each cut to ``context + 1`` rows (``context`` inputs and targets)."""
    parts, lengths, oov, truncated = [], [], 0, 0
    for i in range(0, len(lines), chunk):
        for rows, n_oov in tokens.encode(lines[i : i + chunk]):
            if len(rows) > context + 1:
                rows, truncated = rows[: context + 1], truncated + 1
            parts.append(np.asarray(rows, dtype=np.int64))
            lengths.append(len(rows))
            oov += n_oov
    lengths_a = np.asarray(lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths_a)[:-1]]).astype(np.int64) if lengths else lengths_a
    rows_a = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return Sequences(rows_a, starts, lengths_a, oov, truncated, sum(len(s.split()) for s in lines))


def length_batches(seqs: Sequences, batch_tokens: int, indices: np.ndarray | None = None) -> list[np.ndarray]:
    """Line indices in batches of similar length, each at most ``batch_tokens`` input positions with its padding
    (a longer line alone). Deterministic: sorted by length, then index."""
    idx = np.arange(len(seqs)) if indices is None else np.asarray(indices)
    order = idx[np.lexsort((idx, seqs.lengths[idx]))]
    batches, current, longest = [], [], 0
    for i in order.tolist():
        width = max(longest, int(seqs.lengths[i]) - 1)
        if current and (len(current) + 1) * width > batch_tokens:
            batches.append(np.asarray(current))
            current, width = [], int(seqs.lengths[i]) - 1
        current.append(i)
        longest = width
    if current:
        batches.append(np.asarray(current))
    return batches


def collate(seqs: Sequences, batch: np.ndarray, pad: int, device="cpu") -> dict[str, torch.Tensor]:
    """``{"ids", "targets"}`` ``[B, L]``: each line's rows but the last, and the next rows (``IGNORE`` past its end)."""
    width = int(seqs.lengths[batch].max()) - 1
    ids = np.full((len(batch), width), pad, dtype=np.int64)
    targets = np.full((len(batch), width), IGNORE, dtype=np.int64)
    for j, i in enumerate(batch.tolist()):
        s, n = int(seqs.starts[i]), int(seqs.lengths[i])
        ids[j, : n - 1] = seqs.rows[s : s + n - 1]
        targets[j, : n - 1] = seqs.rows[s + 1 : s + n]
    return {"ids": torch.from_numpy(ids).to(device), "targets": torch.from_numpy(targets).to(device)}


class LMLabeller:
    """The LM family's ``Labeller`` (``models.family``): lines of text as batches of ``batch_size`` lines of similar
    length (``{"ids", "targets"}``: ``model(**batch).loss`` is the next-token loss), for calibration (activations,
    gradients) and recovery. An LM recovers on its text: the next token is the label, so no teacher logits are
    stored (a teacher's full-vocabulary distribution at every position of every batch would not fit in memory);
    ``teacher_hidden`` and ``frames`` are audio-family options and refused."""

    def __init__(self, model, tokens: Tokens):
        self.model, self.tokens = model, tokens

    def labelled_batches(self, lines: list[str], batch_size: int, teacher_logits: bool = False,
                         teacher_hidden: bool = False, progress: bool = False, frames: bool = False) -> list[dict]:
        from ...errors import ConfigError

        if teacher_hidden or frames:
            raise ConfigError("recovery: hidden_weight and length_adaptive act on a speech encoder; an LM recovers "
                              "on its text's next tokens")
        seqs = encode_lines(self.tokens, [str(s) for s in lines], self.model.config.context)
        idx = np.flatnonzero(seqs.lengths >= 2)  # a line of one row scores nothing
        order = idx[np.lexsort((idx, seqs.lengths[idx]))]
        device = next(self.model.parameters()).device
        return [collate(seqs, order[i : i + batch_size], 0, device) for i in range(0, len(order), batch_size)]
