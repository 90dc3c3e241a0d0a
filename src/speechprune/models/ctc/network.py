"""The CTC family's networks: a Whisper-style Transformer encoder or a Conformer, a shared final norm and a
character head. Pure PyTorch (torchaudio does not import on this torch build).

Both read only the clip's frames (no padding to 30 s): features ``[N, n_mels, T]`` with per-item ``lengths``;
padded frames are zeroed before every convolution and excluded from attention and from the normalization
statistics (the Conformer's BatchNorm and GroupNorm are masked), so an item's output does not depend on what it
is batched with (up to summation order).

Every layer's output can be read through the shared final norm and head (``exit_layer``): intermediate CTC trains
those exits, and a model so trained can be cut to any depth without retraining. LayerDrop skips whole layers while
training.

The ``whisper`` encoder's tensors are those of ``transformers``' ``WhisperEncoder`` with the same shapes, the stem
under ``stem.`` and each FFN under ``ffn.`` (``checkpoint.from_whisper`` maps the names), so a pretrained encoder
loads unchanged. A per-layer ``structure`` (heads, FFN widths, conv channels; 0 = the block is removed) builds a pruned
model's smaller tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .config import CTCConfig


def _mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    """``[N, t]`` True on real frames."""
    return torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]


class Attention(nn.Module):
    """Multi-head self-attention with Whisper's projections (``k_proj`` without bias)."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner)
        self.k_proj = nn.Linear(d_model, inner, bias=False)
        self.v_proj = nn.Linear(d_model, inner)
        self.out_proj = nn.Linear(inner, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape

        def heads(p: nn.Linear) -> torch.Tensor:
            return p(x).view(n, t, self.n_heads, self.head_dim).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q_proj), heads(self.k_proj), heads(self.v_proj),
                                           attn_mask=mask[:, None, None, :])
        return self.out_proj(y.transpose(1, 2).reshape(n, t, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, width: int, activation: str, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, width)
        self.fc2 = nn.Linear(width, d_model)
        self.act = nn.GELU() if activation == "gelu" else nn.SiLU()
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.act(self.fc1(x)), self.dropout, self.training)
        return F.dropout(self.fc2(h), self.dropout, self.training)


class MaskedBatchNorm(nn.BatchNorm1d):
    """BatchNorm over real frames only: padding neither enters the batch statistics nor the running ones."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x [N, C, T]
        if not self.training:  # running statistics: per channel, no gather (and a graph ONNX can trace)
            y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
            return y * mask[:, None, :].to(y.dtype)
        rows = x.transpose(1, 2)[mask]  # [frames, C]
        y = F.batch_norm(rows, self.running_mean, self.running_var, self.weight, self.bias,
                         True, self.momentum, self.eps)
        out = torch.zeros_like(x.transpose(1, 2))
        out[mask] = y
        return out.transpose(1, 2)


class MaskedGroupNorm(nn.Module):
    """GroupNorm per item over real frames only. Each channel's group is a buffer (``group``), so pruning channels
    keeps the others in the groups they were trained in."""

    def __init__(self, groups: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("group", torch.arange(channels) * groups // channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # x [N, C, T]
        m = mask[:, None, :].to(x.dtype)
        frames = m.sum(dim=2)  # [N, 1]
        member = (self.group[:, None] == torch.arange(self.groups, device=x.device)[None, :]).to(x.dtype)  # [C, G]
        count = (frames * member.sum(dim=0)[None, :]).clamp_min(1)  # [N, G]: real frames x channels per group

        def per_group(values: torch.Tensor) -> torch.Tensor:  # [N, C] -> [N, C]: the mean over each one's group
            return ((values @ member) / count) @ member.T

        mean = per_group((x * m).sum(dim=2))[:, :, None]
        var = per_group((((x - mean) * m) ** 2).sum(dim=2))[:, :, None]
        y = (x - mean) / torch.sqrt(var + self.eps)
        return (y * self.weight[None, :, None] + self.bias[None, :, None]) * m


class ConvModule(nn.Module):
    """Conformer convolution module: LayerNorm, a gated linear unit (``value * sigmoid(gate)``: the pointwise conv to
    2 x channels and GLU, as two linear maps so a channel owns one row of each), depthwise conv, BatchNorm or
    GroupNorm, SiLU, a linear map back; ``channels`` (prunable) may be below ``d_model``."""

    def __init__(self, d_model: int, channels: int, kernel: int, norm: str, groups: int, dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(d_model)
        self.value = nn.Linear(d_model, channels)
        self.gate = nn.Linear(d_model, channels)
        self.depthwise = nn.Conv1d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = MaskedBatchNorm(channels) if norm == "batch" else MaskedGroupNorm(groups, channels)
        self.out = nn.Linear(channels, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.layer_norm(x)
        h = (self.value(y) * torch.sigmoid(self.gate(y))) * mask[:, :, None].to(x.dtype)  # [N, T, C]
        h = F.silu(self.norm(self.depthwise(h.transpose(1, 2)), mask)).transpose(1, 2)
        return F.dropout(self.out(h), self.dropout, self.training)


def _width(structure: dict | None, key: str, layer: int, default: int) -> int:
    return int(structure[key][layer]) if structure and key in structure else default


class WhisperBlock(nn.Module):
    """Pre-norm Transformer block with Whisper's names; a block of width 0 is absent (its residual passes)."""

    def __init__(self, cfg: CTCConfig, layer: int):
        super().__init__()
        heads = _width(cfg.structure, "heads", layer, cfg.n_heads)
        ffn = _width(cfg.structure, "ffn", layer, cfg.ffn_dim)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.d_model) if heads else None
        self.self_attn = Attention(cfg.d_model, heads, cfg.head_dim) if heads else None
        self.final_layer_norm = nn.LayerNorm(cfg.d_model) if ffn else None
        self.ffn = FeedForward(cfg.d_model, ffn, "gelu", cfg.dropout) if ffn else None
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.self_attn is not None:
            x = x + F.dropout(self.self_attn(self.self_attn_layer_norm(x), mask), self.dropout, self.training)
        if self.ffn is not None:
            x = x + self.ffn(self.final_layer_norm(x))
        return x


class ConformerBlock(nn.Module):
    """Macaron FFN (half step), self-attention, convolution module, macaron FFN (half step), final LayerNorm."""

    def __init__(self, cfg: CTCConfig, layer: int):
        super().__init__()
        d, s = cfg.d_model, cfg.structure
        ffn1 = _width(s, "ffn_macaron", layer, cfg.ffn_dim)
        heads = _width(s, "heads", layer, cfg.n_heads)
        conv = _width(s, "conv", layer, d)
        ffn2 = _width(s, "ffn", layer, cfg.ffn_dim)
        self.ffn1_layer_norm = nn.LayerNorm(d) if ffn1 else None
        self.ffn1 = FeedForward(d, ffn1, "silu", cfg.dropout) if ffn1 else None
        self.self_attn_layer_norm = nn.LayerNorm(d) if heads else None
        self.self_attn = Attention(d, heads, cfg.head_dim) if heads else None
        self.conv = ConvModule(d, conv, cfg.conv_kernel, cfg.conv_norm, cfg.conv_groups, cfg.dropout) if conv else None
        self.ffn2_layer_norm = nn.LayerNorm(d) if ffn2 else None
        self.ffn = FeedForward(d, ffn2, "silu", cfg.dropout) if ffn2 else None
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.ffn1 is not None:
            x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        if self.self_attn is not None:
            x = x + F.dropout(self.self_attn(self.self_attn_layer_norm(x), mask), self.dropout, self.training)
        if self.conv is not None:
            x = x + self.conv(x, mask)
        if self.ffn is not None:
            x = x + 0.5 * self.ffn(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


def sinusoids(length: int, channels: int) -> torch.Tensor:
    """The sinusoidal position table (Whisper's layout: sines then cosines)."""
    inc = math.log(10000) / (channels // 2 - 1)
    inv = torch.exp(-inc * torch.arange(channels // 2))
    t = torch.arange(length)[:, None] * inv[None, :]
    return torch.cat([torch.sin(t), torch.cos(t)], dim=1)


class WhisperStem(nn.Module):
    """Whisper's stem: conv (k3) GELU, conv (k3, stride 2) GELU, plus the learned positions sliced to the clip."""

    receptive_field = 1

    def __init__(self, cfg: CTCConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(cfg.d_model, cfg.d_model, 3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(cfg.max_positions, cfg.d_model)

    @staticmethod
    def out_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return (lengths + 1) // 2

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = feats * _mask(lengths, feats.shape[-1])[:, None, :].to(feats.dtype)
        h = F.gelu(self.conv1(feats))
        h = h * _mask(lengths, h.shape[-1])[:, None, :].to(h.dtype)
        h = F.gelu(self.conv2(h)).transpose(1, 2)
        t = h.shape[1]
        if t > self.embed_positions.num_embeddings:
            raise ValueError(f"{t} encoder positions exceed the model's {self.embed_positions.num_embeddings}")
        return h + self.embed_positions.weight[:t], self.out_lengths(lengths)


class ConformerStem(nn.Module):
    """Two Conv2d (k3, stride 2, ReLU) over time and mel bins, a linear map to d_model, sinusoidal positions."""

    receptive_field = 7  # input frames the two unpadded convolutions need for one output position

    def __init__(self, cfg: CTCConfig):
        super().__init__()
        c = cfg.d_model
        self.conv1 = nn.Conv2d(1, c, 3, stride=2)
        self.conv2 = nn.Conv2d(c, c, 3, stride=2)
        f = ((cfg.n_mels - 1) // 2 - 1) // 2
        self.proj = nn.Linear(c * f, cfg.d_model)
        self.register_buffer("positions", sinusoids(cfg.max_positions, cfg.d_model), persistent=False)

    @staticmethod
    def out_lengths(lengths: torch.Tensor) -> torch.Tensor:
        return torch.clamp(((lengths - 1) // 2 - 1) // 2, min=0)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = feats * _mask(lengths, feats.shape[-1])[:, None, :].to(feats.dtype)
        h = F.relu(self.conv2(F.relu(self.conv1(feats.transpose(1, 2)[:, None]))))  # [N, C, T', F']
        n, c, t, f = h.shape
        h = self.proj(h.transpose(1, 2).reshape(n, t, c * f))
        if t > self.positions.shape[0]:
            self.positions = sinusoids(t, h.shape[-1]).to(h.device)
        return h + self.positions[:t].to(h.dtype), self.out_lengths(lengths)


class CTCOutput(NamedTuple):
    log_probs: torch.Tensor  # [N, T', V]
    lengths: torch.Tensor  # [N]
    loss: torch.Tensor | None = None  # mean CTC loss per target symbol, when targets were given


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor,
             target_lengths: torch.Tensor) -> torch.Tensor:
    """Mean CTC loss per target symbol (``log_probs`` ``[N, T, V]``, ``targets`` concatenated); infeasible
    alignments count zero."""
    return F.ctc_loss(log_probs.transpose(0, 1), targets, lengths, target_lengths, blank=0, reduction="mean",
                      zero_infinity=True)


@dataclass
class Encoded:
    hidden: torch.Tensor  # [N, T', d] after the last layer run (before the final norm)
    lengths: torch.Tensor  # [N] encoder positions per item
    taps: dict[int, torch.Tensor]  # 1-based layer -> its output, for intermediate CTC


class CTCModel(nn.Module):
    def __init__(self, cfg: CTCConfig):
        super().__init__()
        self.config = cfg
        block = WhisperBlock if cfg.encoder == "whisper" else ConformerBlock
        self.stem = WhisperStem(cfg) if cfg.encoder == "whisper" else ConformerStem(cfg)
        self.layers = nn.ModuleList(block(cfg, i) for i in range(cfg.n_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model)  # shared by the final output and every intermediate exit
        self.head = nn.Linear(cfg.d_model, len(cfg.vocab) + 1)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def reduction_depth(self) -> int:
        """Chained reductions of a forward, for float tolerances (``numerics.reorder_rtol``): the stem, ~6 per
        Transformer layer, ~12 per Conformer block, the head."""
        return 3 + (6 if self.config.encoder == "whisper" else 12) * self.depth + 1

    def encode(self, feats: torch.Tensor, lengths: torch.Tensor, exit_layer: int | None = None,
               taps: tuple[int, ...] = (), layerdrop: tuple[float, ...] | None = None) -> Encoded:
        """Stem and the first ``exit_layer`` layers (all by default); ``taps``: 1-based layers whose outputs are
        kept; ``layerdrop``: per-layer skip probabilities, applied in training mode only."""
        depth = self.depth if exit_layer is None else exit_layer
        if not 1 <= depth <= self.depth:
            raise ValueError(f"exit layer {depth} is outside this model's 1..{self.depth} layers")
        if bool((lengths < self.stem.receptive_field).any()):
            raise ValueError(f"a clip is shorter than the stem's receptive field ({self.stem.receptive_field} frames)")
        h, out_lengths = self.stem(feats, lengths)
        mask = _mask(out_lengths, h.shape[1])
        kept: dict[int, torch.Tensor] = {}
        skip = (torch.rand(depth) < torch.tensor(layerdrop[:depth])) if (layerdrop and self.training) else None
        for i, layer in enumerate(self.layers[:depth]):
            if skip is None or not bool(skip[i]):
                h = layer(h, mask)
            if i + 1 in taps:
                kept[i + 1] = h
        return Encoded(h, out_lengths, kept)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[N, T', V]`` log-probabilities through the shared final norm and head."""
        return F.log_softmax(self.head(self.layer_norm(hidden)).float(), dim=-1)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor | None = None,
                target_lengths: torch.Tensor | None = None, exit_layer: int | None = None) -> CTCOutput:
        """Log-probabilities at ``exit_layer`` (the last layer by default) and, given ``targets``, the CTC loss:
        a batch (``batches.collate``) is its keyword arguments, as calibration reads it."""
        enc = self.encode(features, lengths, exit_layer)
        lp = self.log_probs(enc.hidden)
        loss = None if targets is None else ctc_loss(lp, enc.lengths, targets, target_lengths)
        return CTCOutput(lp, enc.lengths, loss)


def layerdrop_rates(depth: int, rate: float, schedule: str) -> tuple[float, ...]:
    """Per-layer skip probabilities: ``uniform`` (``rate`` everywhere) or ``linear`` (``rate * l / L``: deep
    layers are dropped more, the first almost never)."""
    if schedule == "uniform":
        return tuple(rate for _ in range(depth))
    return tuple(rate * (i + 1) / depth for i in range(depth))
