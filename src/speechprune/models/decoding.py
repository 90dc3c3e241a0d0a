"""What every family's decoding backend shares: how to decode (``DecodeOptions``), what a decode returns (``Decoded``,
with the decoder's wall time in ``DecodeStats``), and the digest of a PyTorch model that a run is pinned to
(``state_digest``). Family-neutral: Whisper's search loops are ``models.whisper.decoding``, CTC's ``models.ctc.vocab``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode. Validated at construction."""

    beam_size: int = 1  # 1 = greedy
    max_new_tokens: int = 224  # the reference implementation's sample_len (half the 448-token context)
    # Beam ranking: None = sum of log-probs / length (the reference implementation's default);
    # a float alpha uses the GNMT penalty ((5 + length) / 6) ** alpha.
    length_penalty: float | None = None
    language: str | None = None  # for utterances with none: None = detect (multilingual) / "en" (English-only)
    task: str = "transcribe"  # for utterances with none
    # Shallow fusion (``models.fusion``): a loaded ``FusionLM`` or None; per emitted token the search ranks
    # log p_ASR + lm_weight * log p_LM + lm_bonus. Greedy (beam 1) with an LM runs the beam search with one beam.
    lm: object | None = None
    lm_weight: float = 0.0
    lm_bonus: float = 0.0

    @property
    def fusion(self) -> bool:
        """Whether decoding adds an LM term or a length bonus (weight and bonus 0: the plain search, exactly)."""
        return self.lm is not None and (self.lm_weight != 0.0 or self.lm_bonus != 0.0)

    def __post_init__(self) -> None:
        if self.beam_size < 1:
            raise ConfigError(f"beam size must be >= 1, got {self.beam_size}")
        if not 1 <= self.max_new_tokens <= 440:
            raise ConfigError(f"max_new_tokens must be in [1, 440], got {self.max_new_tokens}")
        if self.task not in ("transcribe", "translate"):
            raise ConfigError(f"task must be 'transcribe' or 'translate', got {self.task!r}")
        from .fusion import check_weights

        check_weights(self.lm_weight, self.lm_bonus)
        if self.lm is None and (self.lm_weight or self.lm_bonus):
            raise ConfigError("an LM weight or length bonus needs an LM (--lm)")


@dataclass
class DecodeStats:
    """Wall time of the decoder: the first step (prompt + cross-attention K/V) apart from the later ones; with
    shallow fusion ``lm_s``, the part of it spent in the LM's steps."""

    first_step_s: float = 0.0
    later_steps_s: float = 0.0
    later_steps: int = 0  # decoder calls after the first
    lm_s: float = 0.0

    def add(self, other: "DecodeStats") -> None:
        self.first_step_s += other.first_step_s
        self.later_steps_s += other.later_steps_s
        self.later_steps += other.later_steps
        self.lm_s += other.lm_s


@dataclass
class Decoded:
    tokens: list[list[int]]  # generated tokens per item, without prompt and end-of-text
    languages: list[str | None]
    stats: DecodeStats


def state_digest(model: torch.nn.Module, salt: str = "") -> str:
    """A digest of a model's tensors (names, dtypes, shapes, values), and of ``salt`` (how it is run)."""
    h = hashlib.sha256(salt.encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]
