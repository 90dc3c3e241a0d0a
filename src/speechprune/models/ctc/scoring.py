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


class CTCScorer:
    """Proxy loss and greedy hypotheses of any CTC model with ``backend``'s vocabulary (its pruned and damaged
    copies) on ``utterances`` (readable within 30 s, with reference texts)."""

    def __init__(self, backend: CTCBackend, utterances: list, batch_size: int = 8, progress: bool = False):
        model, vocab = backend.model, backend.vocab
        self.backend = backend
        self.utterances = list(utterances)
        outside = {u.id: vocab.unknown(normalize_text(u.text)) for u in self.utterances}
        outside = {k: v for k, v in outside.items() if v}
        if outside:
            chars = "".join(sorted(set().union(*outside.values())))
            raise ConfigError(f"{len(outside)} reference text(s) hold characters outside the CTC model's vocabulary "
                              f"({chars!r}: {_first(list(outside))}); the proxy loss spells every reference in it")
        examples, skipped = prepare_examples(self.utterances, vocab, model.config.n_mels, model.stem.receptive_field,
                                             progress=progress, labelled=True)
        if skipped:
            reason, ids = next(iter(skipped.items()))
            raise ConfigError(f"{sum(map(len, skipped.values()))} utterance(s) cannot be scored by a CTC model "
                              f"({reason}: {_first(ids)})")
        self.batches = [collate(examples[i : i + batch_size], backend.device)
                        for i in range(0, len(examples), batch_size)]
        self.groups = [self.utterances[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        self.n_targets = sum(int(b["target_lengths"].sum()) for b in self.batches)
        infeasible = [u.id for b, utts in zip(self.batches, self.groups)
                      for u, loss in zip(utts, self._losses(model, b)) if not torch.isfinite(loss)]
        if infeasible:
            raise ConfigError(f"{len(infeasible)} reference(s) longer than their clip's encoder positions can align "
                              f"under CTC ({_first(infeasible)})")

    @torch.inference_mode()
    def _forward(self, model, batch: dict):
        return model(batch["features"], batch["lengths"], exit_layer=self.backend.exit_layer)

    def _losses(self, model, batch: dict) -> torch.Tensor:
        """Each clip's summed CTC loss (nats; ``inf`` where the reference cannot be aligned to the clip)."""
        out = self._forward(model, batch)
        return F.ctc_loss(out.log_probs.float().transpose(0, 1), batch["targets"], out.lengths,
                          batch["target_lengths"], blank=BLANK, reduction="none", zero_infinity=False)

    def proxy(self, model, changed: dict | None = None) -> float:
        """CTC loss of ``model`` on the references, nats per reference character."""
        return sum(float(self._losses(model, b).sum()) for b in self.batches) / self.n_targets

    def records(self, model, changed: dict | None = None) -> list[dict]:
        """Greedy hypotheses of ``model`` as evaluation records, one per utterance."""
        be = self.backend
        records = []
        for b, utts in zip(self.batches, self.groups):
            out = self._forward(model, b)
            dec = be.decode((out.log_probs, out.lengths), [u.language for u in utts], [u.task for u in utts],
                            DecodeOptions())
            for u, toks, lang in zip(utts, dec.tokens, dec.languages):
                records.append({"id": u.id, "audio": str(u.audio), "language": lang, "task": u.task or "transcribe",
                                "reference": u.text, "hypothesis": be.decode_text(toks)})
        return records
