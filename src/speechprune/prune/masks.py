"""Masks for unstructured and N:M pruning: pure functions from per-weight scores to boolean keep-masks.

Scores are any per-weight importance (``|W|`` for magnitude, ``|W * dL/dW|`` for Taylor, ``|W| * ||x_j||`` for
Wanda); higher = more important. Ties at the threshold are broken by position, so a mask always holds exactly the
requested number of zeros.
"""

from __future__ import annotations

import torch


def check_sparsity(sparsity: float, what: str = "sparsity") -> float:
    """``sparsity`` as a float in [0, 1); ``ValueError`` otherwise (every weight gone is never a valid request)."""
    s = float(sparsity)
    if not 0.0 <= s < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {sparsity!r}")
    return s


def _keep_top(flat: torch.Tensor, n_prune: int) -> torch.Tensor:
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_prune > 0:
        mask[torch.argsort(flat.float(), stable=True)[:n_prune]] = False
    return mask


def layer_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Per tensor: prune the ``sparsity`` share of its lowest-scoring weights."""
    s = check_sparsity(sparsity)
    return {k: _keep_top(v.reshape(-1), int(round(s * v.numel()))).view(v.shape) for k, v in scores.items()}


def row_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Per output row (dim 0) of every tensor: prune the ``sparsity`` share of each row's lowest scores, so every
    row keeps the same count (Wanda's comparison group, where scores are comparable only within a row)."""
    s = check_sparsity(sparsity)
    out = {}
    for k, v in scores.items():
        rows = v.reshape(v.shape[0], -1).float()
        n_prune = int(round(s * rows.shape[1]))
        keep = torch.ones_like(rows, dtype=torch.bool)
        if n_prune > 0:
            idx = torch.argsort(rows, dim=1, stable=True)[:, :n_prune]
            keep.scatter_(1, idx, False)
        out[k] = keep.view(v.shape)
    return out


def global_masks(scores: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Across all tensors together: prune the ``sparsity`` share of the lowest scores (tensors end up with
    different sparsities). Scores must be comparable across tensors (raw magnitudes are; see the criteria)."""
    s = check_sparsity(sparsity)
    keys = list(scores)
    flat = torch.cat([scores[k].reshape(-1).float() for k in keys])
    keep = _keep_top(flat, int(round(s * flat.numel())))
    out, start = {}, 0
    for k in keys:
        n = scores[k].numel()
        out[k] = keep[start:start + n].view(scores[k].shape)
        start += n
    return out


def parse_nm(pattern: str) -> tuple[int, int]:
    """``"2:4"`` -> ``(2, 4)``; ``ValueError`` unless it reads N:M with 0 < N < M."""
    try:
        n, m = (int(x) for x in str(pattern).split(":"))
    except ValueError:
        raise ValueError(f"N:M pattern must read like '2:4', got {pattern!r}") from None
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {pattern!r}")
    return n, m


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """N:M structured sparsity along the input dimension (the last one): in every group of ``m`` consecutive
    weights of a row, keep the ``n`` highest-scoring (2:4 keeps 2 of every 4). The last dim must divide by ``m``."""
    if not 0 < n < m:
        raise ValueError(f"N:M needs 0 < N < M, got {n}:{m}")
    if scores.shape[-1] % m:
        raise ValueError(f"input width {scores.shape[-1]} does not divide into groups of {m}")
    groups = scores.reshape(-1, m).float()
    top = torch.topk(groups, n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return mask.view(scores.shape)


def sparsity(masks_or_tensors: dict[str, torch.Tensor]) -> float:
    """Share of zeros over all entries (masks: False entries; weights: exact zeros)."""
    total = sum(t.numel() for t in masks_or_tensors.values())
    zeros = sum(int((t == 0).sum()) for t in masks_or_tensors.values())
    return zeros / total if total else 0.0
