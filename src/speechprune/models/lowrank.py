"""A low-rank linear layer (two smaller matmuls) and how a factorized model is saved and rebuilt.

``LowRankLinear`` replaces an ``nn.Linear`` ``y = W x + b`` (``W``: ``[out, in]``) by ``y = B (A x) + b`` with
``A``: ``[rank, in]`` (``down``, no bias) and ``B``: ``[out, rank]`` (``up``, the bias). It is a plain module (two
``nn.Linear``, no hooks or parametrizations), so torch runs two smaller matmuls, ONNX export traces two MatMuls,
and the state dict holds ``<site>.down.weight``, ``<site>.up.weight`` and ``<site>.up.bias``. It is smaller only
when ``rank * (in + out) < in * out`` (``is_smaller``); the factorization code never builds one that is not.

A saved folder records which weight sites are factorized, family-neutrally, under ``config.json``
``speechprune_lowrank``: ``{site key: rank}`` (the keys of ``adapter.weight_sites``). ``checkpoint.load_pruned``
rebuilds those sites with ``apply_lowrank`` on the meta device after the adapter's ``apply_structure`` and before the
weights are loaded: nothing from the folder is executed. The math that computes the factors lives in
``speechprune.prune.lowrank``.
"""

from __future__ import annotations

import torch
from torch import nn

from speechprune.errors import ModelError
from speechprune.models.units import LOWRANK_KEY  # config attribute / config.json key: {site key: rank}

__all__ = ["LOWRANK_KEY", "LowRankLinear", "apply_lowrank", "is_smaller", "lowrank_ranks", "max_useful_rank"]


def is_smaller(in_features: int, out_features: int, rank: int) -> bool:
    """True when a rank-``rank`` factorization has fewer weights than the dense ``[out, in]`` matrix."""
    return rank * (in_features + out_features) < in_features * out_features


def max_useful_rank(in_features: int, out_features: int) -> int:
    """The largest rank whose factorization is still smaller than the dense matrix (0 if none is)."""
    return (in_features * out_features - 1) // (in_features + out_features)


class LowRankLinear(nn.Module):
    """``up(down(x))``: ``down`` ``in -> rank`` without bias, ``up`` ``rank -> out`` with the bias (if any)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank {rank} outside 1..{min(in_features, out_features)} for a "
                             f"{out_features}x{in_features} weight")
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @property
    def in_features(self) -> int:
        return self.down.in_features

    @property
    def out_features(self) -> int:
        return self.up.out_features

    @property
    def rank(self) -> int:
        return self.down.out_features

    @property
    def bias(self) -> nn.Parameter | None:
        return self.up.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def dense_weight(self) -> torch.Tensor:
        """The ``[out, in]`` product ``B A`` (a new tensor, detached)."""
        return (self.up.weight @ self.down.weight).detach()

    @classmethod
    def from_factors(cls, down: torch.Tensor, up: torch.Tensor, bias: torch.Tensor | None,
                     requires_grad: bool = True) -> "LowRankLinear":
        """A module holding copies of ``down`` ``[rank, in]``, ``up`` ``[out, rank]`` and ``bias`` ``[out]``."""
        rank, n_in = down.shape
        n_out = up.shape[0]
        if up.shape[1] != rank or (bias is not None and tuple(bias.shape) != (n_out,)):
            raise ValueError(f"factor shapes do not chain: down {tuple(down.shape)}, up {tuple(up.shape)}, "
                             f"bias {None if bias is None else tuple(bias.shape)}")
        m = cls(n_in, n_out, rank, bias=bias is not None, device="meta")
        # contiguous copies: SVD factors come out column-major, and a reloaded model must run the same kernels
        m.down.weight = nn.Parameter(down.detach().contiguous().clone(), requires_grad=requires_grad)
        m.up.weight = nn.Parameter(up.detach().contiguous().clone(), requires_grad=requires_grad)
        if bias is not None:
            m.up.bias = nn.Parameter(bias.detach().clone(), requires_grad=requires_grad)
        return m

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def lowrank_ranks(model) -> dict[str, int]:
    """``{site key: rank}`` of every factorized weight site of ``model`` (empty for a model with none)."""
    from speechprune.models.adapters import adapter_for

    return {s.key: s.module.rank for s in adapter_for(model).weight_sites(model) if isinstance(s.module, LowRankLinear)}


def apply_lowrank(model, ranks: dict) -> None:
    """Replace the weight sites named in ``ranks`` (``{site key: rank}``, as ``lowrank_ranks`` gives) by empty
    ``LowRankLinear`` modules of those ranks on the meta device; the weights are loaded afterwards.

    A key that names no ``nn.Linear`` site, or a rank that does not fit, raises a one-line ``ModelError``."""
    from speechprune.models.adapters import adapter_for

    def bad(why: str) -> ModelError:
        return ModelError(f"{LOWRANK_KEY} does not fit this model: {why}")

    if not isinstance(ranks, dict):
        raise bad(f"expected {{site key: rank}}, got {type(ranks).__name__}")
    sites = {s.key: s for s in adapter_for(model).weight_sites(model)}
    for key, rank in ranks.items():
        site = sites.get(key)
        if site is None:
            raise bad(f"no weight site {key!r}")
        linear = site.module
        if type(linear) is not nn.Linear or site.tied:
            raise bad(f"{key} is a {type(linear).__name__}{' (tied)' if site.tied else ''}, not a factorizable Linear")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= min(linear.in_features,
                                                                                        linear.out_features):
            raise bad(f"{key}: rank {rank!r} (the weight is {linear.out_features}x{linear.in_features})")
        site.replace(LowRankLinear(linear.in_features, linear.out_features, rank, bias=linear.bias is not None,
                                   device="meta", dtype=linear.weight.dtype))
