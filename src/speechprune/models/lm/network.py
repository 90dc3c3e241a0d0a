"""The LM family's network: a decoder-only Transformer (pre-norm, GELU FFN, learned or sinusoidal positions, input
and output embeddings tied) with a KV cache for decoding token by token.

``forward(ids, targets=)`` reads whole sequences (causal attention) and gives the mean cross-entropy and each
target's negative log-likelihood; ``step(ids, cache)`` reads the next token of every row and gives the
log-probabilities of the one after it, the cache carrying each layer's keys and values. A per-layer
``structure`` (heads, FFN widths; 0 = the block is removed) builds a pruned model's smaller tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import LMConfig

IGNORE = -100  # a target that is not scored (padding)


@dataclass
class LMOutput:
    """``loss``: the mean negative log-likelihood of the scored targets; ``nll`` ``[B, T]`` per target (0 where it is
    ``IGNORE``); ``logits`` ``[B, T, V]`` only for a forward without targets."""

    loss: torch.Tensor | None = None
    nll: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@dataclass
class LMCache:
    """What ``step`` has read: each layer's keys and values ``[B, heads, t, head_dim]`` (None for a layer without
    attention) and ``t``, the tokens read. ``select`` keeps rows (beam search reorders and prunes with it)."""

    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    length: int = 0

    def select(self, index: torch.Tensor) -> "LMCache":
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return LMCache([pick(k) for k in self.keys], [pick(v) for v in self.values], self.length)


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """``[length, dim]``: sin in the first half, cos in the second, wavelengths 2 pi .. 10000 * 2 pi."""
    half = dim // 2
    inv = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half - 1, 1))
    angle = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    out = torch.zeros(length, dim)
    out[:, :half], out[:, half : 2 * half] = torch.sin(angle), torch.cos(angle)
    return out


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, head_dim: int, dropout: float):
        super().__init__()
        self.n_heads, self.head_dim, self.dropout = n_heads, head_dim, dropout
        inner = n_heads * head_dim
        self.q_proj = nn.Linear(d_model, inner)
        self.k_proj = nn.Linear(d_model, inner)
        self.v_proj = nn.Linear(d_model, inner)
        self.out_proj = nn.Linear(inner, d_model)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor | None = None, past_v: torch.Tensor | None = None):
        """``x`` ``[B, t, d]`` after ``past`` positions; ``(output, keys, values)`` with the past included."""
        b, t, _ = x.shape

        def heads(p: nn.Linear) -> torch.Tensor:
            return p(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj), heads(self.k_proj), heads(self.v_proj)
        past = 0 if past_k is None else past_k.shape[2]
        if past:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        drop = self.dropout if self.training else 0.0
        if t == 1:  # one new token sees every position read so far
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        elif not past:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        else:
            pos = torch.arange(past + t, device=x.device)
            mask = pos[None, :] <= pos[past:, None]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)), k, v


class FeedForward(nn.Module):
    def __init__(self, d_model: int, width: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(d_model, width)
        self.fc2 = nn.Linear(width, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.dropout(F.gelu(self.fc1(x)), self.dropout, self.training))


class Block(nn.Module):
    """Pre-norm: ``x + attn(norm(x))``, then ``x + ffn(norm(x))``; a removed block (None) passes ``x`` through."""

    def __init__(self, cfg: LMConfig, heads: int, ffn: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.d_model) if heads else None
        self.attn = Attention(cfg.d_model, heads, cfg.head_dim, cfg.dropout) if heads else None
        self.ffn_norm = nn.LayerNorm(cfg.d_model) if ffn else None
        self.ffn = FeedForward(cfg.d_model, ffn, cfg.dropout) if ffn else None
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, past_k=None, past_v=None):
        k = v = None
        if self.attn is not None:
            y, k, v = self.attn(self.attn_norm(x), past_k, past_v)
            x = x + F.dropout(y, self.dropout, self.training)
        if self.ffn is not None:
            x = x + F.dropout(self.ffn(self.ffn_norm(x)), self.dropout, self.training)
        return x, k, v


class LMModel(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = nn.Embedding(config.vocab_size, d)
        if config.positions == "learned":
            self.positions = nn.Embedding(config.context, d)
        else:
            self.positions = None
            self.register_buffer("sinusoids", sinusoids(config.context, d), persistent=False)
        self.layers = nn.ModuleList(Block(config, *config.widths(i)) for i in range(config.n_layers))
        self.norm = nn.LayerNorm(d)
        if config.kept:  # output row i (but the last) is Whisper id whisper_ids[i]
            self.register_buffer("whisper_ids", torch.zeros(config.vocab_size - 1, dtype=torch.long))
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's: N(0, 0.02), the projections back into the residual stream scaled by 1 / sqrt(2 layers)."""
        residual = 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif p.dim() == 1:  # biases
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, std=residual if name.endswith(("out_proj.weight", "fc2.weight")) else 0.02)

    @property
    def depth(self) -> int:
        return len(self.layers)

    def _positions(self, start: int, t: int, device) -> torch.Tensor:
        if start + t > self.config.context:
            raise ValueError(f"position {start + t - 1} is past the LM's context of {self.config.context} tokens")
        if self.positions is not None:
            return self.positions(torch.arange(start, start + t, device=device))
        return self.sinusoids[start : start + t]

    def _run(self, ids: torch.Tensor, cache: LMCache | None) -> tuple[torch.Tensor, LMCache]:
        start = 0 if cache is None else cache.length
        x = F.dropout(self.embed(ids) + self._positions(start, ids.shape[1], ids.device), self.config.dropout,
                      self.training)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, None if cache is None else cache.keys[i], None if cache is None else cache.values[i])
            keys.append(k)
            values.append(v)
        return self.norm(x), LMCache(keys, values, start + ids.shape[1])

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.embed.weight.T  # tied

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None) -> LMOutput:
        """``ids`` ``[B, T]`` from position 0; ``targets`` ``[B, T]`` (``IGNORE`` where unscored), the next tokens."""
        hidden, _ = self._run(ids, None)
        if targets is None:
            return LMOutput(logits=self.logits(hidden))
        scored = targets != IGNORE
        nll = torch.zeros(targets.shape, dtype=torch.float32, device=ids.device)
        nll[scored] = F.cross_entropy(self.logits(hidden[scored]).float(), targets[scored], reduction="none")
        return LMOutput(loss=nll.sum() / scored.sum().clamp(min=1), nll=nll)

    def step(self, ids: torch.Tensor, cache: LMCache | None = None) -> tuple[torch.Tensor, LMCache]:
        """Read ``ids`` ``[B, t]`` (usually ``t = 1``) after what ``cache`` holds (None: from the start); the
        log-probabilities ``[B, V]`` (float32) of the next token after the last one, and the cache extended."""
        hidden, cache = self._run(ids, cache)
        return torch.log_softmax(self.logits(hidden[:, -1]).float(), dim=-1), cache
