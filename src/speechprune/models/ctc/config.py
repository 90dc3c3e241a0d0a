"""The CTC family's model config: an encoder (a Whisper-style Transformer or a Conformer) and a character head.

Saved as ``speechprune_ctc.json`` beside the weights; unknown keys are refused, so a config from another version
or family fails at load with its file named.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

CONFIG_FILE = "speechprune_ctc.json"
WEIGHTS_FILE = "model.safetensors"
INIT_FILE = "init.safetensors"  # the weights the model was trained from (re-initialization, signatures)
FORMAT = 1

# lower-case letters, digits (the English normalizer writes numbers as digits), apostrophe and space
ENGLISH_CHARS = tuple(" '" + "abcdefghijklmnopqrstuvwxyz" + "0123456789")


class CTCConfig(BaseModel):
    """``encoder``: ``whisper`` (Whisper's two-conv stem, learned positions, pre-norm Transformer blocks whose
    names and shapes match a Whisper encoder's, so a pretrained tiny.en / base encoder loads into it) or
    ``conformer`` (two stride-2 Conv2d subsampling, sinusoidal positions, macaron FFNs, self-attention and a
    convolution module with BatchNorm or GroupNorm). ``vocab``: the output symbols after the blank (index 0)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = FORMAT
    encoder: Literal["whisper", "conformer"]
    n_mels: int = Field(default=80, ge=1)
    d_model: int = Field(default=144, ge=8)
    n_layers: int = Field(default=8, ge=1)
    n_heads: int = Field(default=4, ge=1)
    ffn_dim: int = Field(default=576, ge=1)
    max_positions: int = Field(default=1500, ge=1)  # whisper: the learned table (30 s at 50 Hz)
    conv_kernel: int = Field(default=15, ge=3)  # conformer: depthwise kernel (odd)
    conv_norm: Literal["batch", "group"] = "batch"  # conformer: the convolution module's norm
    conv_groups: int = Field(default=8, ge=1)  # conformer: GroupNorm groups
    dropout: float = Field(default=0.1, ge=0, lt=1)
    vocab: tuple[str, ...] = ENGLISH_CHARS
    # a pruned model's per-layer widths: {"heads": [...], "ffn": [...], "ffn_macaron": [...], "conv": [...]};
    # None when every layer has the config's widths
    structure: dict | None = None
    # factorized linears (models.lowrank): {weight site key: rank}; None when there are none
    lowrank: dict[str, int] | None = None

    @model_validator(mode="after")
    def _check(self) -> "CTCConfig":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.encoder == "conformer" and self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd (same-length depthwise convolution), got {self.conv_kernel}")
        if self.encoder == "conformer" and self.conv_norm == "group" and self.d_model % self.conv_groups:
            raise ValueError(f"d_model {self.d_model} is not divisible by conv_groups {self.conv_groups}")
        if len(set(self.vocab)) != len(self.vocab) or any(len(c) != 1 for c in self.vocab) or not self.vocab:
            raise ValueError("vocab must list distinct single characters")
        return self

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def stride(self) -> int:
        """Input frames per encoder position (the stem's subsampling)."""
        return 2 if self.encoder == "whisper" else 4
