"""Mask math and magnitude pruning on tiny random models."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny

from speechprune.prune import masks as M
from speechprune.prune.unstructured import magnitude_prune, prunable_sites


def test_layer_masks_prune_the_smallest_exactly():
    scores = {"a": torch.tensor([[3.0, 1.0], [2.0, 5.0]]), "b": torch.arange(10.0)}
    masks = M.layer_masks(scores, 0.5)
    assert masks["a"].tolist() == [[True, False], [False, True]]
    assert masks["b"].sum() == 5 and not masks["b"][:5].any()


def test_global_masks_follow_scores_across_tensors():
    scores = {"small": torch.full((4,), 0.1), "big": torch.full((4,), 10.0)}
    masks = M.global_masks(scores, 0.5)
    assert not masks["small"].any() and masks["big"].all()


def test_ties_still_give_the_exact_count():
    masks = M.layer_masks({"x": torch.ones(7, 3)}, 0.3)
    assert int((~masks["x"]).sum()) == round(0.3 * 21)


def test_nm_mask_keeps_n_of_every_m():
    scores = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    mask = M.nm_mask(scores, 2, 4)
    assert (mask.view(6, 4, 4).sum(-1) == 2).all()
    kept_min = scores.view(6, 4, 4).masked_fill(~mask.view(6, 4, 4), float("inf"))
    dropped_max = scores.view(6, 4, 4).masked_fill(mask.view(6, 4, 4), float("-inf"))
    assert (kept_min.min(-1).values >= dropped_max.max(-1).values).all()
    with pytest.raises(ValueError, match="divide"):
        M.nm_mask(torch.randn(2, 6), 2, 4)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_impossible_sparsity_is_refused(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        M.layer_masks({"x": torch.ones(4)}, bad)


@pytest.mark.parametrize("family", ["whisper", "wav2vec2"])
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_magnitude_prune_folds_zeros_and_leaves_no_hooks(family, scope):
    model = build_tiny(family)
    parametrized = {n for n, m in model.named_modules() if hasattr(m, "parametrizations")}  # wav2vec2's pos conv
    reached = magnitude_prune(model, 0.6, scope=scope)
    assert reached and abs(M.sparsity({s.key: s.weight for s in prunable_sites(model)}) - 0.6) < 0.01
    if scope == "layer":
        assert all(abs(v - 0.6) < 0.01 for v in reached.values())
    for name, mod in model.named_modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
        assert not hasattr(mod, "parametrizations") or name in parametrized
