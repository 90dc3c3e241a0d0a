"""The LM family's config: a decoder-only Transformer over Whisper's BPE tokens or the CTC family's characters.

Saved as ``speechprune_lm.json`` beside the weights; unknown keys are refused, so a config from another version or
family fails at load with its file named.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_FILE = "speechprune_lm.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = 1


class TokenizerId(BaseModel):
    """Which Whisper tokenizer the ids are (``tokens.tokenizer_identity``): a digest of its vocabulary, merges and
    added tokens, its size, and the recognizer's output width (``config.json`` ``vocab_size``), which
    ``whisper_log_probs`` fills."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(min_length=64, max_length=64)
    size: int = Field(ge=1)
    n_vocab: int = Field(ge=1)


class LMConfig(BaseModel):
    """``tokens``: ``whisper`` (Whisper's BPE; row ``i`` of the output is Whisper id ``i``, or with ``kept`` the
    ``i``-th id of the saved ``whisper_ids`` map, the last row standing for every unseen token) or ``chars`` (row 0
    ends/starts a line, row ``i`` is character ``chars[i - 1]``: the CTC family's class ``i``, so its prefix beam
    search can read the LM at the same index). ``text``: the form of the text it was trained on (``normalized``:
    Whisper's English normalizer, as the references are scored; ``written``: cased and punctuated sentences, as
    Whisper writes them)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = FORMAT
    tokens: Literal["whisper", "chars"]
    text: Literal["normalized", "written"] = "normalized"
    vocab_size: int = Field(ge=2)  # output rows
    d_model: int = Field(default=256, ge=8)
    n_layers: int = Field(default=4, ge=1)
    n_heads: int = Field(default=4, ge=1)
    ffn_dim: int = Field(default=1024, ge=1)
    context: int = Field(default=128, ge=2)  # positions, the first token included
    positions: Literal["learned", "sinusoidal"] = "learned"
    dropout: float = Field(default=0.1, ge=0, lt=1)
    tokenizer: TokenizerId | None = None  # whisper
    kept: bool = False  # whisper: only the ids seen in training (+ one row for the rest)
    unseen_log_prob: float = Field(default=-20.0, lt=0)  # whisper + kept: the score of an id without a row
    chars: tuple[str, ...] | None = None  # chars
    # a pruned model's per-layer widths: {"heads": [...], "ffn": [...], "original": {...}} (0 = removed)
    structure: dict | None = None
    # factorized linears (models.lowrank): {weight site key: rank}; None when there are none
    lowrank: dict[str, int] | None = None

    @model_validator(mode="after")
    def _check(self) -> "LMConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.tokens == "whisper":
            if self.tokenizer is None or self.chars is not None:
                raise ValueError("a whisper-token LM names its tokenizer (and no chars)")
            if not self.kept and self.vocab_size != self.tokenizer.n_vocab:
                raise ValueError(f"vocab_size {self.vocab_size} is not the recognizer's {self.tokenizer.n_vocab}")
            if self.kept and self.vocab_size > self.tokenizer.n_vocab + 1:
                raise ValueError(f"vocab_size {self.vocab_size} keeps more than the {self.tokenizer.n_vocab} ids")
        else:
            if not self.chars or self.tokenizer is not None or self.kept:
                raise ValueError("a character LM lists its chars (and no tokenizer or kept ids)")
            if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
                raise ValueError("chars must be distinct single characters")
            if self.vocab_size != len(self.chars) + 1:
                raise ValueError(f"vocab_size {self.vocab_size} is not len(chars) + 1 = {len(self.chars) + 1}")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def widths(self, layer: int) -> tuple[int, int]:
        """``(heads, ffn width)`` of a layer (0: the block is removed)."""
        s = self.structure or {}
        heads = int(s["heads"][layer]) if "heads" in s else self.n_heads
        ffn = int(s["ffn"][layer]) if "ffn" in s else self.ffn_dim
        return heads, ffn
