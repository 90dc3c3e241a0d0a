"""Per-weight importance for unstructured and N:M pruning: pure functions from tensors to one score per weight
(same shape as the weight; higher = more important).

- ``magnitude``: ``|W|`` (L1 magnitude).
- ``taylor``: ``|W * dL/dW|``, the first-order estimate of the loss change when one weight is zeroed; call it per
  calibration batch and sum (:func:`speechprune.prune.unstructured.weight_scores` does).
- ``wanda``: ``|W_ij| * ||x_j||_2`` (Sun et al., 2023, "A Simple and Effective Pruning Approach for LLMs"): the
  weight's magnitude times the L2 norm of its input channel over every calibration token. Its scores compare within
  an output row (prune with ``scope: row``); across rows and layers the input norms differ in scale.

Collecting gradients and input norms on a model is :mod:`speechprune.prune.unstructured`'s job.
"""

from __future__ import annotations

import torch

WEIGHT_CRITERIA = ("magnitude", "taylor", "wanda")


def magnitude(weight: torch.Tensor) -> torch.Tensor:
    """``|W|`` per weight."""
    return weight.detach().abs().float()


def taylor(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``|W * dL/dW|`` per weight for one batch's gradient (sum over batches to accumulate)."""
    if grad.shape != weight.shape:
        raise ValueError(f"gradient shape {tuple(grad.shape)} does not match the weight {tuple(weight.shape)}")
    return (weight.detach().float() * grad.detach().float()).abs()


def wanda(weight: torch.Tensor, input_norm: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||x_j||_2``: ``weight`` is ``[out, in, *kernel]`` (a Linear or Conv weight), ``input_norm`` the
    L2 norm of each of the ``in`` input channels over the calibration tokens."""
    if weight.dim() < 2 or input_norm.dim() != 1 or input_norm.numel() != weight.shape[1]:
        raise ValueError(f"input norm of {input_norm.numel()} channels does not fit a weight of shape "
                         f"{tuple(weight.shape)} (inputs on dim 1)")
    scale = input_norm.detach().float().view(1, -1, *([1] * (weight.dim() - 2)))
    return weight.detach().abs().float() * scale.to(weight.device)
