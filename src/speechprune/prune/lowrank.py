"""Low-rank factorization of linear layers: ``W [out, in]`` -> ``B [out, r] @ A [r, in]``, two smaller matmuls.

Pure math first (tensors in, tensors or integers out, testable without a model):

- ``truncated_svd(W, r)``: the best rank-``r`` approximation of the weight (Eckart-Young), split evenly between the
  factors (``A = sqrt(S) Vh``, ``B = U sqrt(S)``), which keeps both well scaled for fine-tuning afterwards;
- ``whitened_svd(W, G, r)``: activation-aware (SVD-LLM, Wang et al. 2024; ASVD, Yuan et al. 2023, scales by
  activations too): with ``G = X^T X / n`` the second moment of the layer's inputs on calibration audio and
  ``G = L L^T`` (Cholesky), ``||(W - W') X^T||^2 = n ||(W - W') L||^2``, so the SVD of ``W L`` truncated, then
  multiplied back by ``L^-1``, minimizes the error of the layer's OUTPUT on those inputs rather than of its weights;
- ranks: from an energy threshold (``energy_rank``: the share of squared singular values kept), from a parameter
  share per layer (``param_share_rank``) or for a global parameter target (``global_energy_for_params``: one
  energy threshold for every site, found by bisection, whose ranks meet the target).

A factorization is applied only where it is smaller: ``r * (in + out) < in * out`` (``models.lowrank.is_smaller``);
a site whose rank would not save weights stays dense and the plan says so (``Plan.skipped``).

Then the model-level steps: choosing the sites (``lowrank_sites``: the adapter's weight sites of the chosen
components and stacks, ``nn.Linear`` or already ``LowRankLinear``), the input second moments on calibration audio
(``input_grams``: forward pre-hooks owned by a context manager, removed on exit), the plan (``plan_ranks``) and the
surgery (``factorize``), which replaces each site by a ``LowRankLinear``: no hooks or masks remain.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

from ..errors import ConfigError
from ..models.lowrank import LowRankLinear, is_smaller, max_useful_rank
from ..models.units import WeightSite
from .unstructured import DISTILLATION_EXTRAS

DEFAULT_COMPONENTS = ("self_attn", "cross_attn", "ffn")


# --------------------------------------------------------------------------------------------------------------
# Pure math


def _check_rank(weight: torch.Tensor, rank: int) -> None:
    if not 1 <= rank <= min(weight.shape):
        raise ValueError(f"rank {rank} outside 1..{min(weight.shape)} for a {weight.shape[0]}x{weight.shape[1]} weight")


def _split(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    root = s[:rank].sqrt()
    return root[:, None] * vh[:rank], u[:, :rank] * root[None, :]


def truncated_svd(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A [rank, in], B [out, rank])`` with ``B @ A`` the best rank-``rank`` approximation of ``weight`` in the
    Frobenius norm. Computed in float64, returned in ``weight``'s dtype."""
    _check_rank(weight, rank)
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    a, b = _split(u, s, vh, rank)
    return a.to(weight.dtype), b.to(weight.dtype)


def singular_values(weight: torch.Tensor, gram: torch.Tensor | None = None, damping: float = 1e-2) -> torch.Tensor:
    """The singular values (descending, float64) that rank choice reads: of ``weight``, or of ``weight @ L`` with
    ``L`` the Cholesky factor of ``gram`` (activation-aware)."""
    w = weight.detach().double()
    if gram is not None:
        w = w @ whitening(gram, damping)
    return torch.linalg.svdvals(w)


def whitening(gram: torch.Tensor, damping: float = 1e-2) -> torch.Tensor:
    """Lower-triangular ``L`` with ``L L^T = gram + damping * mean(diag(gram)) * I`` (float64).

    The damping makes a rank-deficient second moment (dead inputs, few calibration tokens) invertible; it is raised
    tenfold until the Cholesky factorization succeeds."""
    g = gram.detach().double()
    if g.ndim != 2 or g.shape[0] != g.shape[1]:
        raise ValueError(f"gram must be square, got {tuple(g.shape)}")
    g = 0.5 * (g + g.T)
    scale = g.diagonal().mean().clamp_min(1e-12)
    eye = torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    lam = max(damping, 1e-10)
    for _ in range(8):
        chol, info = torch.linalg.cholesky_ex(g + lam * scale * eye)
        if int(info) == 0:
            return chol
        lam *= 10
    raise ValueError("input second moment is not positive definite even with heavy damping")


def whitened_svd(weight: torch.Tensor, gram: torch.Tensor, rank: int,
                 damping: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """Activation-aware ``(A [rank, in], B [out, rank])``: ``B @ A`` minimizes ``tr((W - BA) G (W - BA)^T)``, the
    squared output error on inputs whose second moment is ``gram`` ``[in, in]`` (damped, see ``whitening``).

    SVD of ``W L = U S Vh``; ``A = sqrt(S_r) Vh_r L^-1``, ``B = U_r sqrt(S_r)``."""
    _check_rank(weight, rank)
    if gram.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"gram {tuple(gram.shape)} does not match the weight's {weight.shape[1]} inputs")
    chol = whitening(gram, damping).to(weight.device)
    u, s, vh = torch.linalg.svd(weight.detach().double() @ chol, full_matrices=False)
    a, b = _split(u, s, vh, rank)
    a = torch.linalg.solve_triangular(chol, a, upper=False, left=False)  # a @ L^-1
    return a.to(weight.dtype), b.to(weight.dtype)


def output_error(weight: torch.Tensor, approx: torch.Tensor, gram: torch.Tensor | None = None) -> float:
    """Relative squared error ``tr(D G D^T) / tr(W G W^T)`` with ``D = W - approx`` (``G = I`` without ``gram``: the
    relative Frobenius error of the weight): the share of the layer's output energy lost on those inputs."""
    w, d = weight.detach().double(), (weight.detach() - approx.detach()).double()
    if gram is None:
        return float((d**2).sum() / (w**2).sum().clamp_min(1e-300))
    g = gram.detach().double()
    return float(((d @ g) * d).sum() / ((w @ g) * w).sum().clamp_min(1e-300))


def energy_rank(svals: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep at least ``energy`` (0 < energy <= 1) of the sum of squares."""
    if not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    sq = svals.double() ** 2
    total = float(sq.sum())
    if total <= 0:
        return 1
    kept = torch.cumsum(sq, 0) / total
    # a tolerance so that energy 1.0 means full rank despite rounding in the cumulative sum
    return min(int((kept < energy - 1e-12).sum()) + 1, len(svals))


def param_share_rank(in_features: int, out_features: int, share: float) -> int:
    """The largest rank whose factors hold at most ``share`` of the dense weights (at least 1)."""
    if not 0 < share <= 1:
        raise ValueError(f"parameter share must be in (0, 1], got {share}")
    rank = math.floor(share * in_features * out_features / (in_features + out_features) + 1e-9)
    return max(1, min(rank, min(in_features, out_features)))


def factorized_params(in_features: int, out_features: int, rank: int | None) -> int:
    """Weights of the site with ``rank`` if that is smaller than dense, else of the dense matrix (biases aside)."""
    if rank is None or not is_smaller(in_features, out_features, rank):
        return in_features * out_features
    return rank * (in_features + out_features)


def global_energy_for_params(spectra: dict[str, tuple[torch.Tensor, int, int]], keep: float,
                             iterations: int = 60) -> tuple[float, dict[str, int]]:
    """One energy threshold for every site such that the factorized sites (dense where not smaller) keep at most
    ``keep`` of these sites' weights: ``(energy, {key: rank})``, the largest such energy by bisection.

    ``spectra``: ``{key: (singular values, in_features, out_features)}``. If even rank 1 everywhere cannot meet the
    target, the ranks at the lowest energy are returned (the caller reports the share reached)."""
    if not 0 < keep <= 1:
        raise ValueError(f"parameter share must be in (0, 1], got {keep}")
    budget = keep * sum(i * o for _, i, o in spectra.values())

    def plan(energy: float) -> dict[str, int]:
        return {k: energy_rank(s, energy) for k, (s, _, _) in spectra.items()}

    def params(ranks: dict[str, int]) -> int:
        return sum(factorized_params(i, o, ranks[k]) for k, (_, i, o) in spectra.items())

    lo, hi = 0.0, 1.0  # params(plan(lo)) <= budget is the invariant sought; energy 1 keeps everything
    if params(plan(hi)) <= budget:
        return hi, plan(hi)
    for _ in range(iterations):
        mid = 0.5 * (lo + hi)
        if params(plan(max(mid, 1e-12))) <= budget:
            lo = mid
        else:
            hi = mid
    energy = max(lo, 1e-12)
    return energy, plan(energy)


# --------------------------------------------------------------------------------------------------------------
# Modules


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The ``[out, in]`` weight a ``nn.Linear`` or ``LowRankLinear`` applies (detached)."""
    if isinstance(module, LowRankLinear):
        return module.dense_weight()
    if type(module) is nn.Linear:
        return module.weight.detach()
    raise TypeError(f"cannot factorize a {type(module).__name__}")


def factorize_linear(module: nn.Module, rank: int, gram: torch.Tensor | None = None,
                     damping: float = 1e-2) -> LowRankLinear:
    """A ``LowRankLinear`` of ``rank`` approximating ``module`` (``nn.Linear`` or a ``LowRankLinear`` of higher
    rank): plain truncated SVD, or activation-aware with ``gram`` (its inputs' second moment). The bias is kept
    as it is, on the ``up`` factor. Refuses a rank that would not make the layer smaller."""
    w = dense_weight(module)
    n_out, n_in = w.shape
    if not is_smaller(n_in, n_out, rank):
        raise ValueError(f"rank {rank} does not make a {n_out}x{n_in} weight smaller "
                         f"(at most rank {max_useful_rank(n_in, n_out)} does)")
    a, b = truncated_svd(w, rank) if gram is None else whitened_svd(w, gram.to(w.device), rank, damping)
    bias = module.bias
    requires_grad = next(module.parameters()).requires_grad
    new = LowRankLinear.from_factors(a, b, None if bias is None else bias.detach(), requires_grad=requires_grad)
    new.train(module.training)
    return new


# --------------------------------------------------------------------------------------------------------------
# Sites, calibration statistics, plans, surgery


def lowrank_sites(model, components: Iterable[str] = DEFAULT_COMPONENTS, stacks: Iterable[str] | None = None,
                  layers: Iterable[int] | None = None) -> list[WeightSite]:
    """The weight sites that can be factorized: linear projections (``nn.Linear`` or already ``LowRankLinear``)
    of ``components`` inside the layers of ``stacks`` (default all) and ``layers`` (default all); never tied
    weights, embeddings, convs or norms."""
    from ..models.adapters import adapter_for

    components, stacks = set(components), None if stacks is None else set(stacks)
    layers = None if layers is None else set(layers)
    out = []
    for s in adapter_for(model).weight_sites(model):
        if s.component not in components or s.layer is None or s.tied:
            continue
        if (stacks is not None and s.stack not in stacks) or (layers is not None and s.layer not in layers):
            continue
        if type(s.module) is nn.Linear or isinstance(s.module, LowRankLinear):
            out.append(s)
    return out


@contextmanager
def _gram_hooks(sites: list[WeightSite]) -> Iterator[dict[str, list]]:
    """Accumulate each site's input second moment ``[sum x x^T, n tokens]`` (float64) while the context is open;
    the forward pre-hooks are removed on exit, whatever happens."""
    acc: dict[str, list] = {}
    handles = []
    last: list = [None, None]  # the last input seen and its Gram: q, k and v read the same tensor in turn

    def make(key: str):
        def pre_hook(mod, args):
            x = args[0]
            if x is last[0]:
                g = last[1]
            else:  # a float32 product per batch (fast), summed over batches in float64
                flat = x.detach().reshape(-1, x.shape[-1]).float()
                g = (flat.T @ flat).double()
                last[0], last[1] = x, g  # holding x keeps its id from being reused by another tensor
            n = x.numel() // x.shape[-1]
            if key in acc:
                acc[key][0] += g
                acc[key][1] += n
            else:
                acc[key] = [g.clone(), n]
        return pre_hook

    try:
        for s in sites:
            handles.append(s.module.register_forward_pre_hook(make(s.key)))
        yield acc
    finally:
        for h in handles:
            h.remove()
        last.clear()


@torch.no_grad()
def input_grams(model, sites: list[WeightSite], batches: list[dict]) -> dict[str, torch.Tensor]:
    """``{site key: X^T X / n}`` (float64, on the model's device) of each site's inputs over ``batches``
    (teacher-forcing dicts ``model(**batch)`` accepts; extra keys such as ``teacher_logits`` are dropped)."""
    was_training = model.training
    model.eval()
    try:
        with _gram_hooks(sites) as acc:
            for b in batches:
                model(**{k: v for k, v in b.items() if k not in DISTILLATION_EXTRAS})
    finally:
        model.train(was_training)
    missing = [s.key for s in sites if s.key not in acc]
    if missing:
        raise ConfigError(f"calibration never reached {missing[0]} ({len(missing)} sites): no inputs to whiten by")
    return {k: g / max(n, 1) for k, (g, n) in acc.items()}


@dataclass
class Plan:
    """Ranks chosen for one factorization step."""

    ranks: dict[str, int]  # site key -> rank, only sites that get smaller
    skipped: dict[str, str] = field(default_factory=dict)  # site key -> why it stays as it is
    energy: float | None = None  # the common threshold found for a global parameter target
    params_before: int = 0  # weights of the chosen sites (biases aside), before and after this step
    params_after: int = 0


def _shape(module: nn.Module) -> tuple[int, int]:
    return module.in_features, module.out_features


def plan_ranks(sites: list[WeightSite], *, rank: int | None = None, rank_fraction: float | None = None,
               energy: float | None = None, params: float | None = None, param_share: dict[str, float] | None = None,
               grams: dict[str, torch.Tensor] | None = None, damping: float = 1e-2) -> Plan:
    """Choose a rank per site from exactly one target:

    ``rank`` (the same rank everywhere, capped by each weight's full rank), ``rank_fraction`` (of each weight's
    full rank ``min(in, out)``), ``energy`` (the share of squared singular values kept, per site), ``params`` (one
    energy threshold for all sites so that they keep that share of their weights), or ``param_share`` (``{key:
    share}``: per site, the largest rank holding that share of the dense weights; the incremental schedule's
    steps). Energies read the singular values of the weight, or with ``grams`` of the whitened weight (the output
    energy). A site already factorized never gets a higher rank; a site that would not get smaller is skipped."""
    given = [x is not None for x in (rank, rank_fraction, energy, params, param_share)]
    if sum(given) != 1:
        raise ValueError("plan_ranks needs exactly one of rank, rank_fraction, energy, params, param_share")
    spectra = {}
    if energy is not None or params is not None:
        for s in sites:
            g = None if grams is None else grams[s.key]
            spectra[s.key] = (singular_values(dense_weight(s.module), g, damping), *_shape(s.module))
    out = Plan(ranks={})
    if params is not None:
        out.energy, wanted = global_energy_for_params(spectra, params)
    else:
        wanted = {}
        for s in sites:
            n_in, n_out = _shape(s.module)
            if rank is not None:
                wanted[s.key] = min(rank, n_in, n_out)
            elif rank_fraction is not None:
                wanted[s.key] = max(1, round(rank_fraction * min(n_in, n_out)))
            elif energy is not None:
                wanted[s.key] = energy_rank(spectra[s.key][0], energy)
            elif s.key in param_share:
                wanted[s.key] = param_share_rank(n_in, n_out, param_share[s.key])
    for s in sites:
        n_in, n_out = _shape(s.module)
        current = getattr(s.module, "rank", None)
        before = factorized_params(n_in, n_out, current)
        out.params_before += before
        r = wanted.get(s.key)
        if r is None:
            out.skipped[s.key] = "no target for this site"
        elif current is not None and r >= current:
            out.skipped[s.key] = f"already rank {current} (target {r})"
        elif not is_smaller(n_in, n_out, r):
            out.skipped[s.key] = (f"rank {r} would not be smaller than the dense {n_out}x{n_in} weight "
                                  f"(at most rank {max_useful_rank(n_in, n_out)} is)")
        else:
            out.ranks[s.key] = r
        out.params_after += factorized_params(n_in, n_out, out.ranks.get(s.key, current))
    return out


@torch.no_grad()
def factorize(sites: list[WeightSite], ranks: dict[str, int], grams: dict[str, torch.Tensor] | None = None,
              damping: float = 1e-2) -> dict[str, float]:
    """Replace every site named in ``ranks`` by a ``LowRankLinear`` of that rank (activation-aware with ``grams``);
    returns ``{key: relative output error}`` (on the calibration inputs with ``grams``; else of the weight)."""
    errors = {}
    for s in sites:
        if s.key not in ranks:
            continue
        g = None if grams is None else grams[s.key]
        before = dense_weight(s.module)
        new = factorize_linear(s.module, ranks[s.key], g, damping)
        errors[s.key] = output_error(before, new.dense_weight(), g)
        s.replace(new)
    return errors
