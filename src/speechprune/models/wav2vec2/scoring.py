"""The wav2vec2 family's reference scorer (``models.family.ReferenceScorer``): a damaged ``Wav2Vec2ForCTC`` scored
on fixed utterances, for ablation and sensitivity analysis.

``Wav2Vec2Scorer`` prepares once each clip's waveform (the backend's front end) and its reference spelled in the
tokenizer's characters (``batches.prepare_clips``). A score is one forward of the model (``forward.forward_states``,
what ``eval`` decodes):

* ``proxy``: CTC loss on the references (the tokenizer's pad token as the blank), summed over the clips and divided
  by their target symbols (nats per symbol, lower = better);
* ``records``: greedy CTC hypotheses (the backend's own search).

Nothing of the dense model is cached (``changed`` is accepted and not read). A reference the vocabulary cannot
spell, or that is longer than its clip's encoder positions can align, is refused up front: a proxy over fewer clips
than asked would not compare with another run's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...data.normalize import normalize_text
from ...errors import ConfigError
from ..decoding import DecodeOptions
from .batches import batch_samples, collate, prepare_clips
from .forward import forward_states, receptive_field


def _first(ids: list[str], n: int = 3) -> str:
    return ", ".join(ids[:n]) + (f" and {len(ids) - n} more" if len(ids) > n else "")


class Wav2Vec2Scorer:
    """Proxy loss and greedy hypotheses of any wav2vec2 model with ``backend``'s tokenizer (its pruned and damaged
    copies) on ``utterances`` (readable within 30 s, with reference texts)."""

    def __init__(self, backend, utterances: list, batch_size: int = 8, progress: bool = False):
        model, vocab = backend.model, backend.vocab
        self.backend = backend
        self.utterances = list(utterances)
        outside = {u.id: vocab.unknown(normalize_text(u.text)) for u in self.utterances}
        outside = {k: v for k, v in outside.items() if v}
        if outside:
            chars = "".join(sorted(set().union(*outside.values())))
            raise ConfigError(f"{len(outside)} reference text(s) hold characters outside the wav2vec2 tokenizer's "
                              f"vocabulary ({chars!r}: {_first(list(outside))}); the proxy loss spells every "
                              "reference in it")
        clips, skipped = prepare_clips(self.utterances, vocab, receptive_field(model), progress=progress)
        if skipped:
            reason, ids = next(iter(skipped.items()))
            raise ConfigError(f"{sum(map(len, skipped.values()))} utterance(s) cannot be scored by a wav2vec2 model "
                              f"({reason}: {_first(ids)})")
        frontend = backend.frontend()
        self.batches = [collate(clips[i : i + batch_size], frontend) for i in range(0, len(clips), batch_size)]
        self.groups = [self.utterances[i : i + batch_size] for i in range(0, len(clips), batch_size)]
        self.n_targets = sum(int((b["labels"] >= 0).sum()) for b in self.batches)
        infeasible = [u.id for b, utts in zip(self.batches, self.groups)
                      for u, loss in zip(utts, self._losses(model, b)) if not torch.isfinite(loss)]
        if infeasible:
            raise ConfigError(f"{len(infeasible)} reference(s) longer than their clip's encoder positions can align "
                              f"under CTC ({_first(infeasible)})")

    @torch.inference_mode()
    def _forward(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(model.parameters()).device
        states = forward_states(model, batch["input_values"].to(device), batch_samples(batch))
        return torch.log_softmax(states.logits.float(), dim=-1), states.lengths

    def _losses(self, model, batch: dict) -> torch.Tensor:
        """Each clip's summed CTC loss (nats; ``inf`` where the reference cannot be aligned to the clip)."""
        log_probs, lengths = self._forward(model, batch)
        labels = batch["labels"].to(log_probs.device)
        real = labels >= 0
        return F.ctc_loss(log_probs.transpose(0, 1), labels[real], lengths, real.sum(dim=-1),
                          blank=self.backend.vocab.blank, reduction="none", zero_infinity=False)

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
