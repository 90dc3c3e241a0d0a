"""Scores of a damaged model of any family on a fixed set of utterances, for ablation and sensitivity analysis.

``Scorer`` keeps the utterances that can be scored (audio readable within one 30 s window, a reference text) and
asks the model's family for its reference scorer (``ModelFamily.reference_scorer``), which owns what is
family-specific: the teacher-forced loss and the greedy search, and what of the dense model it reuses (Whisper's
encoder outputs and encoder layer inputs; see ``models/whisper/scoring.py`` and ``models/ctc/scoring.py``).

* ``proxy``: the family's teacher-forced loss on the references per target symbol (Whisper: cross-entropy, nats per
  label token; CTC: CTC loss, nats per character; lower = better);
* ``wer``: greedy hypotheses scored with the evaluation runner's ``score`` (the same normalizer as
  ``speechprune eval``).
"""

from __future__ import annotations

from ..data.manifest import Utterance
from ..errors import AudioError, ConfigError

Changed = dict  # stack -> index of its first changed layer (a skipped layer: the index it had); {} = dense
ALL: Changed = {"encoder": 0, "decoder": 0}  # everything changed: nothing of the dense model is reused


def readable(utterances: list[Utterance]) -> list[Utterance]:
    """The utterances whose audio loads within one 30 s window (the others are left out of the analysis)."""
    from ..data.audio import load_audio
    from ..data.features import WINDOW_SECONDS

    out = []
    for u in utterances:
        try:
            load_audio(u.audio, max_seconds=WINDOW_SECONDS)
            out.append(u)
        except AudioError:
            continue
    return out


class Scorer:
    """Proxy loss and WER of any model of ``backend``'s architecture (damaged copies included) on ``utterances``,
    through the family's reference scorer (``reference``); see the module for what each score is."""

    def __init__(self, backend, utterances: list[Utterance], batch_size: int = 8, max_new_tokens: int | None = None,
                 cache_layers: bool = True, progress: bool = False):
        from ..models.family import family_for

        utts = readable(utterances)
        if not utts:
            raise ConfigError("no readable utterances to score on")
        if any(not (u.text or "").strip() for u in utts):
            raise ConfigError("every utterance needs a reference text for the proxy loss")
        self.backend = backend
        self.reference = family_for(backend.model).reference_scorer(
            backend, utts, batch_size=batch_size, max_new_tokens=max_new_tokens, cache_layers=cache_layers,
            progress=progress)
        self.utterances = self.reference.utterances

    def proxy(self, model, changed: Changed = ALL) -> float:
        """The family's teacher-forced loss of ``model`` on the references (per target symbol). ``changed`` maps
        each changed stack to its first changed layer, so the family may reuse the dense model's work before it."""
        return self.reference.proxy(model, changed)

    def wer(self, model, changed: Changed = ALL) -> float:
        """Corpus WER of greedy decoding (the evaluation runner's normalizer and scoring)."""
        from ..evaluate.runner import score

        return score(self.reference.records(model, changed))["wer"]
