"""Corpus-level WER, CER (jiwer) and BLEU (sacrebleu) on normalized text. Pure functions."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import jiwer
import sacrebleu


@dataclass(frozen=True)
class ErrorCounts:
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_length: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors per reference unit; 0 for an empty corpus with no insertions, inf if only insertions."""
        if self.reference_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.reference_length

    def __add__(self, other: "ErrorCounts") -> "ErrorCounts":
        return ErrorCounts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))


def _counts(refs: list[str], hyps: list[str], unit: str) -> ErrorCounts:
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    total = ErrorCounts()
    pairs = [(r, h) for r, h in zip(refs, hyps) if r.strip()]
    # jiwer refuses empty references: every hypothesis unit against one is an insertion
    for r, h in zip(refs, hyps):
        if not r.strip():
            n = len(h.split()) if unit == "word" else len(h)
            total = total + ErrorCounts(insertions=n)
    if pairs:
        process = jiwer.process_words if unit == "word" else jiwer.process_characters
        out = process([r for r, _ in pairs], [h for _, h in pairs])
        total = total + ErrorCounts(out.substitutions, out.deletions, out.insertions, out.hits + out.substitutions + out.deletions)
    return total


def word_errors(refs: list[str], hyps: list[str]) -> ErrorCounts:
    """Word errors over a corpus (texts already normalized; words split on whitespace)."""
    return _counts(refs, hyps, "word")


def char_errors(refs: list[str], hyps: list[str]) -> ErrorCounts:
    """Character errors over a corpus (spaces count as characters, as in jiwer)."""
    return _counts(refs, hyps, "char")


def bleu(refs: list[str], hyps: list[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenization, case-sensitive) on detokenized text."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)
