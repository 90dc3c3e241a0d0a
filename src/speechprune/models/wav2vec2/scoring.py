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

from ..ctc.scoring import ReferenceCTCScorer
from .batches import batch_samples, collate, prepare_clips
from .forward import forward_states, receptive_field


class Wav2Vec2Scorer(ReferenceCTCScorer):
    """Proxy loss and greedy hypotheses of any wav2vec2 model with ``backend``'s tokenizer (its pruned and damaged
    copies) on ``utterances`` (readable within 30 s, with reference texts)."""

    MODEL = "a wav2vec2 model"
    VOCAB = "the wav2vec2 tokenizer's vocabulary"

    def _prepare(self, progress: bool):
        return prepare_clips(self.utterances, self.backend.vocab, receptive_field(self.backend.model),
                             progress=progress)

    def _collate(self, clips: list) -> dict:
        return collate(clips, self.backend.frontend())

    @staticmethod
    def _n_targets(batch: dict) -> int:
        return int((batch["labels"] >= 0).sum())

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
