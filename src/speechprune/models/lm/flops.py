"""Analytic FLOPs of one LM step (pure functions of the config): 2 x the multiply-adds of the matrix products, as
``torch.utils.flop_counter`` counts them (norms, GELU and softmax left out; the embedding lookup is free)."""

from __future__ import annotations

from .config import LMConfig


def linear_flops(cfg: LMConfig) -> int:
    """The projections, FFNs and the (tied) output layer of one token: the part that does not grow with position."""
    total = 2 * cfg.d_model * cfg.vocab_size
    for i in range(cfg.n_layers):
        heads, ffn = cfg.widths(i)
        total += 2 * 4 * cfg.d_model * heads * cfg.head_dim + 2 * 2 * cfg.d_model * ffn
    return total


def attention_flops(cfg: LMConfig, position: int) -> int:
    """Scores and weighted values of the token at ``position`` (0-based) over the ``position + 1`` it sees."""
    return sum(2 * 2 * (position + 1) * cfg.widths(i)[0] * cfg.head_dim for i in range(cfg.n_layers))


def token_flops(cfg: LMConfig, position: int) -> int:
    return linear_flops(cfg) + attention_flops(cfg, position)


def mean_token_flops(cfg: LMConfig, length: int | None = None) -> float:
    """Per token, averaged over a sequence of ``length`` tokens (default: the full context)."""
    n = length or cfg.context
    return linear_flops(cfg) + sum(attention_flops(cfg, p) for p in range(n)) / n
