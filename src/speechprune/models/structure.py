"""A model family-neutral description of an encoder-decoder's shape, per layer.

Adapters produce it from a live model; FLOP counting, reports and (later) pruning plans read it. A pruned
model's layers may differ from each other: a removed block has ``None`` / width 0.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttentionShape:
    n_heads: int
    head_dim: int

    @property
    def dim(self) -> int:
        return self.n_heads * self.head_dim


@dataclass(frozen=True)
class LayerShape:
    self_attn: AttentionShape | None  # None: the block is removed
    ffn_dim: int  # 0: the block is removed
    cross_attn: AttentionShape | None = None  # decoder layers only
    # low-rank factorized projections: ("self_attn.q", rank), ... (the weight-site key within the layer:
    # <component>.<role>), sorted; such a projection costs rank * (in + out) multiply-adds per token instead of in * out
    ranks: tuple[tuple[str, int], ...] = ()

    def rank(self, name: str) -> int | None:
        """The rank of projection ``name`` ("self_attn.q", "ffn.in", ...), or None when it is dense."""
        return dict(self.ranks).get(name)


@dataclass(frozen=True)
class EncoderDecoderShape:
    d_model: int
    n_mels: int
    n_frames: int  # encoder input frames per window (3000 for Whisper's 30 s)
    n_audio_ctx: int  # encoder output positions per window (1500)
    vocab_size: int
    encoder: tuple[LayerShape, ...]
    decoder: tuple[LayerShape, ...]
    conv_kernel: int = 3  # the two-conv stem (Whisper); 0 = no conv stem
    d_model_decoder: int | None = None  # defaults to d_model

    @property
    def d_dec(self) -> int:
        return self.d_model_decoder or self.d_model
