"""Scores of a damaged Whisper model on a fixed set of utterances, for ablation and sensitivity analysis.

``WhisperScorer`` prepares once: the log-mel features, the teacher-forcing batches on the *reference* texts (prompt
and labels built by ``TorchWhisper.labelled_batches``, the same prompt the decoders use), and the dense model's
encoder output per batch. A score then reuses that encoder output whenever the encoder is unchanged (an ablated
decoder layer), so a decoder point costs only decoder passes.

* ``proxy``: teacher-forced cross-entropy on the references, nats per label token (lower = better);
* ``wer``: greedy decoding scored with the evaluation runner's ``score`` (same normalizer as ``speechprune eval``),
  at most ``max_new_tokens`` per utterance (default: twice the longest reference + 8, at most 224) so a broken model
  cannot spend 224 steps of babble per utterance; a longer babble would only add more insertions.
"""

from __future__ import annotations

import torch

from ..data.manifest import Utterance
from ..errors import AudioError, ConfigError
from ..evaluate.backends import TorchWhisper
from ..evaluate.decoding import DecodeOptions


def readable(utterances: list[Utterance]) -> list[Utterance]:
    """The utterances whose audio loads within one 30 s window (the others are left out of the analysis)."""
    from ..data.audio import load_audio
    from ..evaluate.frontend import WINDOW_SECONDS

    out = []
    for u in utterances:
        try:
            load_audio(u.audio, max_seconds=WINDOW_SECONDS)
            out.append(u)
        except AudioError:
            continue
    return out


class WhisperScorer:
    """Proxy loss and WER of any model of the dense model's architecture (damaged copies included) on
    ``utterances``; the dense encoder output is computed once and reused when the encoder is unchanged."""

    def __init__(self, backend: TorchWhisper, utterances: list[Utterance], batch_size: int = 8,
                 max_new_tokens: int | None = None, progress: bool = False):
        utts = readable(utterances)
        if not utts:
            raise ConfigError("no readable utterances to score on")
        if any(not (u.text or "").strip() for u in utts):
            raise ConfigError("every utterance needs a reference text for the proxy loss")
        self.backend = backend
        self.utterances = utts
        self.batch_size = batch_size
        self.batches = backend.labelled_batches(utts, batch_size, DecodeOptions(), pseudo_labels=False,
                                                progress=progress)
        longest = max(int((b["labels"] != -100).sum(dim=1).max()) for b in self.batches)
        self.options = DecodeOptions(max_new_tokens=max_new_tokens or min(224, 2 * longest + 8))
        if sum(len(b["labels"]) for b in self.batches) != len(utts):
            raise ConfigError("some utterances could not be turned into teacher-forcing batches")
        self.device = backend.device
        self.dense_encoder = [self._encode(backend.model, b) for b in self.batches]

    @torch.inference_mode()
    def _encode(self, model, batch) -> torch.Tensor:
        dtype = next(model.parameters()).dtype
        x = batch["input_features"].to(self.device, dtype)
        return model.get_encoder()(input_features=x).last_hidden_state

    def _encoder_outputs(self, model, changed: frozenset):
        for b, enc in zip(self.batches, self.dense_encoder):
            yield b, (self._encode(model, b) if "encoder" in changed else enc)

    @torch.inference_mode()
    def proxy(self, model, changed: frozenset = frozenset({"encoder", "decoder"})) -> float:
        """Mean cross-entropy (nats per reference token) of ``model`` teacher-forced on the references; the
        dense encoder output is reused unless ``"encoder"`` is in ``changed``."""
        total, n = 0.0, 0
        for b, enc in self._encoder_outputs(model, changed):
            ids, labels = b["decoder_input_ids"].to(self.device), b["labels"].to(self.device)
            logits = model(encoder_outputs=(enc,), decoder_input_ids=ids).logits.float()
            mask = labels != -100
            total += float(torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum"))
            n += int(mask.sum())
        return total / n

    def wer(self, model, changed: frozenset = frozenset({"encoder", "decoder"})) -> float:
        """Corpus WER of greedy decoding (the evaluation runner's normalizer and scoring)."""
        from ..evaluate.runner import score

        be = self.backend if model is self.backend.model else TorchWhisper(
            model, self.backend.tokenizer, self.backend.vocab, device=self.device)
        records, k = [], 0
        for _, enc in self._encoder_outputs(model, changed):
            utts = self.utterances[k : k + enc.shape[0]]
            k += len(utts)
            out = be.decode(enc, [u.language for u in utts], [u.task for u in utts], self.options)
            for u, toks, lang in zip(utts, out.tokens, out.languages):
                records.append({"id": u.id, "audio": str(u.audio), "language": lang, "task": u.task or "transcribe",
                                "reference": u.text, "hypothesis": be.decode_text(toks)})
        return score(records)["wer"]
