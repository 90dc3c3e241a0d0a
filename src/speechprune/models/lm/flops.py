"""Analytic FLOPs of one LM step (pure functions of the config): 2 x the multiply-adds of the matrix products, as
``torch.utils.flop_counter`` counts them (norms, GELU and softmax left out; the embedding lookup is free)."""

from __future__ import annotations

from .config import LMConfig


def _matmul(cfg: LMConfig, key: str, n_in: int, n_out: int) -> int:
    """2 x the multiply-adds of one token through the weight site ``key`` (``[n_out, n_in]``, or its rank-``r``
    factorization in ``cfg.lowrank``: ``r (n_in + n_out)``)."""
    rank = (cfg.lowrank or {}).get(key)
    return 2 * (n_in * n_out if rank is None else rank * (n_in + n_out))


def linear_flops(cfg: LMConfig) -> int:
    """The projections, FFNs and the (tied) output layer of one token: the part that does not grow with position
    (factorized sites at their rank)."""
    total = 2 * cfg.d_model * cfg.vocab_size
    for i in range(cfg.n_layers):
        heads, ffn = cfg.widths(i)
        inner = heads * cfg.head_dim
        for role in ("q", "k", "v"):
            total += _matmul(cfg, f"decoder.{i}.self_attn.{role}", cfg.d_model, inner)
        total += _matmul(cfg, f"decoder.{i}.self_attn.out", inner, cfg.d_model)
        total += _matmul(cfg, f"decoder.{i}.ffn.in", cfg.d_model, ffn) + _matmul(cfg, f"decoder.{i}.ffn.out", ffn,
                                                                                  cfg.d_model)
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
