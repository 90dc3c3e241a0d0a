"""The CTC family's reference scorer (``models.family.ReferenceScorer``): a damaged CTC model scored on fixed
utterances, for ablation and sensitivity analysis.

``CTCScorer`` prepares once each clip's log-mel frames and its reference as character targets
(``batches.prepare_examples``, the training batches' own preparation). A score is one forward of the model:

* ``proxy``: CTC loss on the references, summed over the clips and divided by their characters (nats per target
  character, lower = better);
* ``records``: greedy CTC hypotheses (the backend's own search).

A forward is cheap next to Whisper's decoding, so nothing of the dense model is cached (``changed`` is accepted and
not read). A reference the vocabulary cannot spell, or that is longer than its clip's encoder positions can align,
is refused up front: a proxy over fewer clips than asked would not compare with another run's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.normalize import normalize_text
from ...errors import ConfigError
from ..decoding import DecodeOptions
from .backend import CTCBackend
from .batches import collate, prepare_examples
from .vocab import BLANK


def _first(ids: list[str], n: int = 3) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


class ReferenceCTCScorer:
    """What every CTC-trained model's reference scorer shares (this family's and ``models.wav2vec2``'s): the
    spelling check, the batches prepared once, the alignability check, ``proxy`` and ``records``. A subclass says
    what it is called (``MODEL``, ``VOCAB``) and gives ``_prepare`` (the clips and the skips by reason),
    ``_collate``, ``_n_targets``, ``_forward`` (``(log_probs, lengths)``) and ``_losses``."""

    MODEL = "a CTC model"
    VOCAB = "the CTC model's vocabulary"

    def __init__(self, backend, utterances: list, batch_size: int = 8, progress: bool = False):
        vocab = backend.vocab
        self.backend = backend
        self.utterances = list(utterances)
        outside = {u.id: vocab.unknown(normalize_text(u.text)) for u in self.utterances}
        outside = {k: v for k, v in outside.items() if v}
        if outside:
            chars = "".join(sorted(set().union(*outside.values())))
            raise ConfigError(f"{len(outside)} reference text(s) hold characters outside {self.VOCAB} "
                              f"({chars!r}: {_first(list(outside))}); the proxy loss spells every reference in it")
        items, skipped = self._prepare(progress)
        if skipped:
            reason, ids = next(iter(skipped.items()))
            raise ConfigError(f"{sum(map(len, skipped.values()))} utterance(s) cannot be scored by {self.MODEL} "
                              f"({reason}: {_first(ids)})")
        self.batches = [self._collate(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
        self.groups = [self.utterances[i : i + batch_size] for i in range(0, len(items), batch_size)]
        self.n_targets = sum(self._n_targets(b) for b in self.batches)
        infeasible = [u.id for b, utts in zip(self.batches, self.groups)
                      for u, loss in zip(utts, self._losses(backend.model, b)) if not torch.isfinite(loss)]
        if infeasible:
            raise ConfigError(f"{len(infeasible)} reference(s) longer than their clip's encoder positions can align "
                              f"under CTC ({_first(infeasible)})")

    def proxy(self, model, changed: dict | None = None) -> float:
        """CTC loss of ``model`` on the references, nats per reference symbol."""
        return sum(float(self._losses(model, b).sum()) for b in self.batches) / self.n_targets

    def records(self, model, changed: dict | None = None) -> list[dict]:
        """Greedy hypotheses of ``model`` as evaluation records, one per utterance."""
        be = self.backend
        records = []
        for b, utts in zip(self.batches, self.groups):
            dec = be.decode(self._forward(model, b), [u.language for u in utts], [u.task for u in utts],
                            DecodeOptions())
            for u, toks, lang in zip(utts, dec.tokens, dec.languages):
                records.append({"id": u.id, "audio": str(u.audio), "language": lang, "task": u.task or "transcribe",
                                "reference": u.text, "hypothesis": be.decode_text(toks)})
        return records


class CTCScorer(ReferenceCTCScorer):
    """Proxy loss and greedy hypotheses of any CTC model with ``backend``'s vocabulary (its pruned and damaged
    copies) on ``utterances`` (readable within 30 s, with reference texts)."""

    backend: CTCBackend

    def _prepare(self, progress: bool):
        model = self.backend.model
        return prepare_examples(self.utterances, self.backend.vocab, model.config.n_mels, model.stem.receptive_field,
                                progress=progress, labelled=True)

    def _collate(self, examples: list) -> dict:
        return collate(examples, self.backend.device)

    @staticmethod
    def _n_targets(batch: dict) -> int:
        return int(batch["target_lengths"].sum())

    @torch.inference_mode()
    def _forward(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(batch["features"], batch["lengths"], exit_layer=self.backend.exit_layer)
        return out.log_probs, out.lengths

    def _losses(self, model, batch: dict) -> torch.Tensor:
        """Each clip's summed CTC loss (nats; ``inf`` where the reference cannot be aligned to the clip)."""
        log_probs, lengths = self._forward(model, batch)
        return F.ctc_loss(log_probs.float().transpose(0, 1), batch["targets"], lengths,
                          batch["target_lengths"], blank=BLANK, reduction="none", zero_infinity=False)
