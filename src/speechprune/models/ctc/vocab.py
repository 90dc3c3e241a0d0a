"""Characters <-> ids for CTC (blank = 0), and greedy and prefix beam search over CTC log-probabilities."""

from __future__ import annotations

import math
from collections import defaultdict

import torch

BLANK = 0


class CharVocab:
    def __init__(self, chars: tuple[str, ...]):
        self.chars = tuple(chars)
        self.index = {c: i + 1 for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        """Output classes, blank included."""
        return len(self.chars) + 1

    def unknown(self, text: str) -> set[str]:
        return {c for c in text if c not in self.index}

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (already normalized); ``ValueError`` naming the characters outside the vocabulary."""
        bad = self.unknown(text)
        if bad:
            raise ValueError(f"characters outside the vocabulary: {''.join(sorted(bad))!r}")
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return " ".join("".join(self.chars[i - 1] for i in ids if i != BLANK).split())


def greedy_ctc(log_probs: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    """Best path per item (``log_probs`` ``[N, T, V]``): argmax, repeats merged, blanks dropped."""
    best = log_probs.argmax(dim=-1).cpu()
    out = []
    for row, n in zip(best.tolist(), lengths.tolist()):
        ids, prev = [], BLANK
        for t in row[:n]:
            if t != prev and t != BLANK:
                ids.append(t)
            prev = t
        out.append(ids)
    return out


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def prefix_beam_search(log_probs: torch.Tensor, length: int, beam_size: int, prune_below: float = -12.0,
                       fusion=None) -> list[int]:
    """CTC prefix beam search of one item (``log_probs`` ``[T, V]``, natural log): each prefix carries the
    probability of ending in blank and in its last symbol, so paths that collapse to one text are summed.
    Symbols with log-probability below ``prune_below`` at a frame are not extended (they cannot enter a beam).

    ``fusion`` (shallow fusion with a character LM, ``models.fusion.CharScorer``): a prefix also carries the LM
    term of its characters (``fusion.extend(prefix, c)``: weight * log p_LM(c | prefix) + bonus), which ranks the
    prefixes beside the CTC probability; the final choice adds ``fusion.end(prefix)`` (the LM ending the line)."""
    lp = log_probs[:length].float().cpu()
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}  # prefix -> (p_blank, p_symbol)
    lm_term: dict[tuple[int, ...], float] = {(): 0.0}  # fusion: prefix -> the LM terms of its characters
    for t in range(lp.shape[0]):
        frame = lp[t]
        cands = [int(i) for i in torch.nonzero(frame > prune_below).flatten()] or [int(frame.argmax())]
        nxt: dict[tuple[int, ...], list[float]] = defaultdict(lambda: [-math.inf, -math.inf])
        for prefix, (pb, ps) in beams.items():
            total = _logaddexp(pb, ps)
            for c in cands:
                p = float(frame[c])
                if c == BLANK:
                    e = nxt[prefix]
                    e[0] = _logaddexp(e[0], total + p)
                    continue
                last = prefix[-1] if prefix else None
                ext = prefix + (c,)
                e = nxt[ext]
                if fusion is not None and ext not in lm_term:
                    lm_term[ext] = lm_term[prefix] + fusion.extend(prefix, c)
                # a repeated symbol extends the prefix only after a blank; otherwise it merges into the same one
                e[1] = _logaddexp(e[1], (pb if c == last else total) + p)
                if c == last:
                    same = nxt[prefix]
                    same[1] = _logaddexp(same[1], ps + p)
        if fusion is None:
            ranked = sorted(nxt.items(), key=lambda kv: -_logaddexp(*kv[1]))[:beam_size]
        else:
            ranked = sorted(nxt.items(), key=lambda kv: -(_logaddexp(*kv[1]) + lm_term[kv[0]]))[:beam_size]
        beams = {k: (v[0], v[1]) for k, v in ranked}
        if fusion is not None:
            lm_term = {k: lm_term[k] for k in beams}
            fusion.keep(beams)
    if fusion is None:
        best = max(beams.items(), key=lambda kv: _logaddexp(*kv[1]))[0]
    else:
        best = max(beams.items(), key=lambda kv: _logaddexp(*kv[1]) + lm_term[kv[0]] + fusion.end(kv[0]))[0]
    return list(best)
