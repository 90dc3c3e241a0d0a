"""Closed-form reconstruction after a cut: refit each pruned block's output projection by least squares.

A unit group's outputs meet in one linear layer, its *activation site* (``fc2`` for FFN neurons, ``out_proj`` for
heads). After some units are cut, the site's remaining columns are refit so that, on calibration audio, the pruned
block's output matches what the reference (dense) block produced: ``argmin_W,b ||H_kept W^T + b - Y||^2`` with a
small ridge, solved exactly (``ridge_refit``, a pure function). Groups are refit in model order, each on the inputs
the already-refit pruned model gives it, so a later block also absorbs the error left upstream. It costs one
calibration pass per pruned group and no gradient step; on tiny.en (encoder FFN halved) it brought one-shot
held-out dev WER from 58 % to 16-20 % (docs/design.md). Hooks live only inside this module's context managers.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from ..models.units import UnitGroup


def ridge_refit(inputs: torch.Tensor, targets: torch.Tensor, ridge: float = 1e-3, bias: bool = True,
                weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight ``[d_out, d_in]`` (and bias ``[d_out]``) minimizing ``sum_i w_i ||x_i W^T + b - y_i||^2 + penalty``.

    ``inputs`` ``[n, d_in]``, ``targets`` ``[n, d_out]``, ``weights`` ``[n]`` (default 1). The ridge penalty is
    ``ridge`` times the mean diagonal of the (weighted) Gram matrix (scale-free); the bias is not penalized much
    (it shares the ridge). Solved in float64."""
    x = inputs.double()
    if bias:
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
    xw = x if weights is None else x * weights.double().to(x.device)[:, None]
    gram = xw.T @ x
    gram += ridge * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=x.dtype, device=x.device)
    solution = torch.linalg.solve(gram, xw.T @ targets.double())  # [d_in (+1), d_out]
    weight = solution[: inputs.shape[1]].T.to(inputs.dtype)
    return weight, (solution[-1].to(inputs.dtype) if bias else None)


@contextmanager
def _capture(module: nn.Module, what: str) -> Iterator[list[torch.Tensor]]:
    """Collect ``module``'s input (``what="input"``) or output, flattened to ``[tokens, features]``, per call."""
    seen: list[torch.Tensor] = []

    def pre_hook(mod, args):
        seen.append(args[0].detach().reshape(-1, args[0].shape[-1]))

    def hook(mod, args, out):
        seen.append(out.detach().reshape(-1, out.shape[-1]))

    handle = module.register_forward_pre_hook(pre_hook) if what == "input" else module.register_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def balanced_weights(real: torch.Tensor) -> torch.Tensor:
    """Row weights from a real-position mask (``[n]`` bool): real rows 1, padding rows share the real rows' total,
    so speech and padding count alike however short the clips. A pure function."""
    w = torch.ones(real.shape[0], dtype=torch.float64)
    n_real, n_pad = int(real.sum()), int((~real).sum())
    if n_real and n_pad:
        w[~real] = n_real / n_pad
    return w


@torch.no_grad()
def reconstruct(model: nn.Module, reference: nn.Module, pairs: list[tuple[UnitGroup, UnitGroup]],
                batches: list[dict], ridge: float = 1e-3, real_positions=None) -> dict[str, dict[str, float]]:
    """Refit the activation site of every pruned group in ``pairs`` (pruned group, its reference group), in order.

    ``real_positions(batch, stack)``: a ``[batch, positions]`` mask of real (not padding) positions, or None; where
    given, the rows are weighted by :func:`balanced_weights` (the family's adapter knows where padding is).
    Returns ``{pruned group key: {"error_before", "error_after"}}``: the site output's squared error relative to the
    reference's mean square (unweighted), on the calibration batches."""
    was_training = (model.training, reference.training)
    model.eval()
    reference.eval()
    out: dict[str, dict[str, float]] = {}
    try:
        for group, ref in pairs:
            site, ref_site = group.activation_site, ref.activation_site
            with _capture(site, "input") as inputs:
                for b in batches:
                    model(**b)
            with _capture(ref_site, "output") as targets:
                for b in batches:
                    reference(**b)
            x, y = torch.cat(inputs), torch.cat(targets)
            weights = None
            masks = [real_positions(b, group.stack) for b in batches] if real_positions is not None else []
            if masks and all(m is not None for m in masks):
                real = torch.cat([m.reshape(-1).cpu() for m in masks])
                if real.numel() != x.shape[0]:
                    raise ValueError(f"{group.key}: the real-position masks cover {real.numel()} rows, the site "
                                     f"saw {x.shape[0]}")
                weights = balanced_weights(real)
            scale = (y**2).mean().clamp_min(1e-12)
            before = float(((site(x) - y) ** 2).mean() / scale)
            weight, bias = ridge_refit(x, y, ridge, bias=site.bias is not None, weights=weights)
            site.weight.copy_(weight)
            if bias is not None:
                site.bias.copy_(bias)
            out[group.key] = {"error_before": before, "error_after": float(((site(x) - y) ** 2).mean() / scale)}
    finally:
        model.train(was_training[0])
        reference.train(was_training[1])
    return out
