"""Shallow fusion of a language model (``models.lm``) into a recognizer's search, family-neutral.

Per emitted token the search ranks ``log p_ASR + weight * log p_LM + bonus`` (``fused_log_probs``); the end of the
transcript adds ``weight * log p_LM(end)`` and no bonus. The LM reads only the transcript: it starts from its line
start (``<|endoftext|>`` for Whisper tokens, row 0 for characters) and never sees a recognizer's prompt.

``FusionLM`` is a loaded LM (``load_fusion_lm`` checks it against the recognizer's vocabulary). A search gets a
fresh scorer from it: ``whisper_scorer`` (``WhisperScorer``: one cached LM step per emitted token for every beam,
the cache reordered with the beams) or ``char_scorer`` (``CharScorer``: CTC prefix beam search, one LM state per
prefix, computed once). With ``weight == 0`` the LM is never stepped. An LM whose context fills restarts from its
line start on the last half-context tokens (a sliding window; the only time a prefix is read again).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..errors import ConfigError, ModelError


def check_weights(weight: float, bonus: float) -> None:
    """One-line ``ConfigError`` unless ``weight`` is finite and >= 0 and ``bonus`` finite."""
    if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"the LM weight must be a finite number >= 0, got {weight!r}")
    if not isinstance(bonus, (int, float)) or not math.isfinite(bonus):
        raise ConfigError(f"the LM length bonus must be a finite number, got {bonus!r}")


def fused_log_probs(asr: torch.Tensor, lm: torch.Tensor | None, weight: float, bonus: torch.Tensor | None
                    ) -> torch.Tensor:
    """``asr + weight * lm + bonus`` (``[N, V]``; ``lm`` None: no LM term; ``bonus`` a ``[V]`` row, 0 at the end
    token, or None)."""
    out = asr
    if lm is not None and weight:
        out = out + weight * lm.to(device=asr.device, dtype=asr.dtype)
    if bonus is not None:
        out = out + bonus.to(device=asr.device, dtype=asr.dtype)
    return out


def bonus_row(width: int, bonus: float, end: int) -> torch.Tensor | None:
    """``[width]`` of ``bonus``, 0 at ``end`` (ending a transcript earns no length bonus); None for no bonus."""
    if not bonus:
        return None
    row = torch.full((width,), float(bonus))
    row[end] = 0.0
    return row


def extension_score(lm_log_prob: float, weight: float, bonus: float) -> float:
    """The LM term of one emitted token (or character)."""
    return weight * lm_log_prob + bonus


class FusionLM:
    """A loaded LM for fusion: the model (eval mode), its token kind (``whisper`` or ``chars``) and the folder it
    came from. ``steps`` counts the LM's ``step`` calls (all scorers together) and ``seconds`` the wall time spent
    in them (the LM's share of a fused search's time)."""

    def __init__(self, model, folder: str | Path | None = None):
        self.model = model.eval()
        self.config = model.config
        self.kind: str = self.config.tokens
        self.folder = None if folder is None else str(folder)
        self.steps = 0
        self.seconds = 0.0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def step(self, ids: torch.Tensor, cache=None):
        self.steps += 1
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.step(ids.to(self.device), cache)
        self.seconds += time.perf_counter() - t0
        return out

    def describe(self) -> dict:
        """What pins a run decoded with this LM (its folder and weights' digest)."""
        from .decoding import state_digest

        return {"folder": self.folder, "digest": state_digest(self.model)}

    def whisper_scorer(self, weight: float, bonus: float, eot: int) -> "WhisperScorer":
        if self.kind != "whisper":
            raise ConfigError("a character LM fuses with CTC models; a Whisper model needs a Whisper-token LM")
        return WhisperScorer(self, weight, bonus, eot)

    def char_scorer(self, weight: float, bonus: float, chars: tuple[str, ...]) -> "CharScorer":
        if self.kind != "chars":
            raise ConfigError("a Whisper-token LM fuses with Whisper models; a CTC model needs a character LM")
        if tuple(self.config.chars) != tuple(chars):
            raise ConfigError(f"the character LM's {len(self.config.chars)} characters are not the CTC model's "
                              f"{len(chars)} (same characters in the same order needed)")
        return CharScorer(self, weight, bonus)

    def _window(self, history: list[list[int]], bos: int) -> torch.Tensor:
        """Each row's line start and last tokens, half a context in all: where a full LM restarts."""
        keep = max(self.config.context // 2 - 1, 0)
        return torch.tensor([[bos] + (h[-keep:] if keep else []) for h in history], dtype=torch.long)

    def advance(self, cache, rows: torch.Tensor, history: list[list[int]], bos: int):
        """Step ``rows`` ``[N]`` after ``cache`` (``history``: each row's tokens so far, ``rows`` included);
        restarts on a window when the context is full. ``(log_probs [N, V], cache)``."""
        if cache.length + 1 > self.config.context:
            return self.step(self._window(history, bos), None)
        return self.step(rows[:, None], cache)


class WhisperScorer:
    """Fusion state of one Whisper beam search: the LM's cache for every row (beam), kept beside the decoder's.
    The search calls ``fuse`` on each step's log-probabilities and ``advance`` after choosing the next tokens."""

    def __init__(self, lm: FusionLM, weight: float, bonus: float, eot: int):
        check_weights(weight, bonus)
        from .lm import whisper_log_probs, whisper_rows

        self.lm, self.weight, self.bonus, self.eot = lm, float(weight), float(bonus), eot
        self._rows, self._full = whisper_rows, whisper_log_probs
        self.bos = int(whisper_rows(lm.model, torch.tensor([eot], device=lm.device))[0])
        self.cache = None
        self.log_probs: torch.Tensor | None = None  # [N, n_vocab]: the LM's scores of each row's next token
        self.history: list[list[int]] = []  # each row's LM rows after the line start
        self._bonus: torch.Tensor | None = None

    @property
    def uses_lm(self) -> bool:
        return self.weight != 0.0

    @property
    def seconds(self) -> float:
        """Wall time in the LM's steps so far (all searches on this LM together)."""
        return self.lm.seconds

    def _start(self, n: int) -> None:
        lp, self.cache = self.lm.step(torch.full((n, 1), self.bos, dtype=torch.long), None)
        self.log_probs = self._full(self.lm.model, lp)
        self.history = [[] for _ in range(n)]

    def fuse(self, asr: torch.Tensor) -> torch.Tensor:
        """``asr`` ``[N, V]`` log-probabilities with the LM's term and the bonus added."""
        width = asr.shape[-1]
        if self._bonus is None:
            self._bonus = bonus_row(width, self.bonus, self.eot)
        lm = None
        if self.uses_lm:
            if self.log_probs is None:
                self._start(asr.shape[0])
            if self.log_probs.shape != asr.shape:
                raise ConfigError(f"the LM scores {self.log_probs.shape[-1]} token ids, the recognizer "
                                  f"{width}; not the recognizer's vocabulary")
            lm = self.log_probs
        return fused_log_probs(asr, lm, self.weight, self._bonus)

    def advance(self, index: torch.Tensor, tokens: torch.Tensor) -> None:
        """Row ``i`` continues row ``index[i]`` with Whisper id ``tokens[i]``: one LM step for every row."""
        if not self.uses_lm or self.cache is None:
            return
        index = index.to(self.lm.device)
        rows = self._rows(self.lm.model, tokens.reshape(-1).to(self.lm.device))
        self.cache = self.cache.select(index)
        self.history = [self.history[r] + [t] for r, t in zip(index.tolist(), rows.tolist())]
        lp, self.cache = self.lm.advance(self.cache, rows, self.history, self.bos)
        self.log_probs = self._full(self.lm.model, lp)


class CharScorer:
    """Fusion state of one CTC prefix beam search over characters: prefix -> (LM cache, log-probs of the next
    character), each prefix's step run once; ``extend`` is the LM term of a prefix's next character, ``end`` the
    term of ending the line after it. At most ``max_states`` states are held (then those of the live prefixes)."""

    def __init__(self, lm: FusionLM, weight: float, bonus: float, max_states: int = 512):
        check_weights(weight, bonus)
        from .lm import CHAR_BOUNDARY

        self.lm, self.weight, self.bonus = lm, float(weight), float(bonus)
        self.bos = CHAR_BOUNDARY
        self.max_states = max_states
        self.states: dict[tuple[int, ...], tuple[object, list[float]]] = {}
        self.computed: list[tuple[int, ...]] = []  # prefixes whose LM step ran, in order

    def _state(self, prefix: tuple[int, ...]) -> tuple[object, list[float]]:
        got = self.states.get(prefix)
        if got is not None:
            return got
        if not prefix:
            lp, cache = self.lm.step(torch.tensor([[self.bos]]), None)
        else:
            parent, _ = self._state(prefix[:-1])
            lp, cache = self.lm.advance(parent, torch.tensor([prefix[-1]]), [list(prefix)], self.bos)
        got = (cache, lp[0].tolist())
        self.states[prefix] = got
        self.computed.append(prefix)
        return got

    def extend(self, prefix: tuple[int, ...], c: int) -> float:
        if not self.weight:
            return self.bonus
        return extension_score(self._state(prefix)[1][c], self.weight, self.bonus)

    def end(self, prefix: tuple[int, ...]) -> float:
        return self.weight * self._state(prefix)[1][self.bos] if self.weight else 0.0

    def keep(self, live) -> None:
        """Past ``max_states`` states, drop all but those of ``live`` prefixes and their parents."""
        if len(self.states) <= self.max_states:
            return
        wanted = set()
        for p in live:
            wanted.add(p)
            wanted.add(p[:-1])
        self.states = {p: s for p, s in self.states.items() if p in wanted}


def load_fusion_lm(lm_folder: str | Path, recognizer_folder: str | Path, device: str = "cpu",
                   exported_vocab_size: int | None = None) -> FusionLM:
    """The LM in ``lm_folder``, checked to fuse with the recognizer in ``recognizer_folder`` (a Whisper model: the
    same tokenizer; a CTC model: the same characters; with ``exported_vocab_size`` an exported Whisper folder, its
    tokenizer files and the output width its manifest records). One-line errors naming the LM folder."""
    from .family import family_for_folder
    from .lm import check_vocabulary, is_lm_folder, load_lm, read_config, recognizer_identity

    if not is_lm_folder(lm_folder):
        raise ModelError("not a language model folder (no speechprune_lm.json)", lm_folder)
    config = read_config(lm_folder)
    family = "whisper" if exported_vocab_size is not None else family_for_folder(recognizer_folder).name
    if family == "whisper":
        check_vocabulary(config, recognizer_identity(recognizer_folder, exported_vocab_size), lm_folder)
    elif family == "ctc":
        from .ctc.checkpoint import read_config as ctc_config

        if config.tokens != "chars":
            raise ModelError("a Whisper-token LM does not fuse with a CTC model (it needs a character LM)", lm_folder)
        chars = tuple(ctc_config(recognizer_folder).vocab)
        if tuple(config.chars) != chars:
            raise ModelError(f"the character LM's characters are not the CTC model's ({len(config.chars)} vs "
                             f"{len(chars)}, same order needed)", lm_folder)
    else:
        raise ConfigError(f"shallow fusion works with Whisper and CTC models, not a {family} model")
    return FusionLM(load_lm(lm_folder, device=device), lm_folder)
