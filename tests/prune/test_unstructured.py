"""One-shot unstructured and N:M pruning (magnitude, Taylor, Wanda) on tiny random Whisper and Wav2Vec2 models."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny
from calibration_helpers import calibration_batches

from speechprune.errors import ConfigError
from speechprune.importance import weights as W
from speechprune.prune import masks as M
from speechprune.prune.sparse_recipe import parse_sparsify_recipe
from speechprune.prune.unstructured import (input_norm_monitor, prunable_sites, select_masks, sparsify,
                                            weight_scores)

FAMILIES = ("whisper", "wav2vec2")


def _clean(model, parametrized):
    for name, mod in model.named_modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks, name
        assert not mod._backward_hooks, name
        assert not hasattr(mod, "parametrizations") or name in parametrized
    assert all(p.grad is None for p in model.parameters())
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())


def test_row_masks_give_every_row_the_same_count():
    scores = {"w": torch.randn(5, 12, generator=torch.Generator().manual_seed(1))}
    keep = M.row_masks(scores, 0.25)["w"]
    assert (keep.sum(dim=1) == 9).all()
    pruned_max = scores["w"].masked_fill(keep, float("-inf")).max(dim=1).values
    kept_min = scores["w"].masked_fill(~keep, float("inf")).min(dim=1).values
    assert (pruned_max <= kept_min).all()


def test_wanda_keeps_a_channel_with_a_huge_input_norm():
    g = torch.Generator().manual_seed(0)
    w = (0.5 + torch.rand(8, 16, generator=g)) * torch.randn(8, 16, generator=g).sign()
    w[:, 3] *= 0.01  # tiny weights: magnitude drops them
    norm = torch.ones(16)
    norm[3] = 1e4
    wanda = M.row_masks({"w": W.wanda(w, norm)}, 0.75)["w"]
    mag = M.row_masks({"w": W.magnitude(w)}, 0.75)["w"]
    assert wanda[:, 3].all() and not mag[:, 3].any()
    with pytest.raises(ValueError, match="does not fit"):
        W.wanda(w, torch.ones(8))


@pytest.mark.parametrize("family", FAMILIES)
def test_wanda_reads_activations_from_the_model(family):
    model = build_tiny(family)
    sites = {s.key: s for s in prunable_sites(model)}
    up, down = sites["encoder.0.ffn.in"].module, sites["encoder.0.ffn.out"].module
    with torch.no_grad():  # neuron 5: a huge activation, small outgoing weights
        up.bias[5] = 1000.0
        down.weight[:, 5] = 0.02 * down.weight[:, 5].sign()
    batches = calibration_batches(family)
    recipe = parse_sparsify_recipe({"criterion": "wanda", "sparsity": 0.75, "components": ["ffn"]})
    sparsify(model, recipe, batches)
    assert (down.weight[:, 5] != 0).all()  # every row keeps the loud input channel
    assert ((down.weight == 0).sum(dim=1) == round(0.75 * down.weight.shape[1])).all()  # per-row count
    mag = build_tiny(family)
    s = {x.key: x for x in prunable_sites(mag)}
    with torch.no_grad():
        s["encoder.0.ffn.in"].module.bias[5] = 1000.0
        s["encoder.0.ffn.out"].module.weight[:, 5] = 0.02 * s["encoder.0.ffn.out"].module.weight[:, 5].sign()
    sparsify(mag, parse_sparsify_recipe({"criterion": "magnitude", "sparsity": 0.75, "components": ["ffn"]}))
    assert (s["encoder.0.ffn.out"].weight[:, 5] == 0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_input_norms_are_measured_and_hooks_removed(family):
    model = build_tiny(family)
    sites = prunable_sites(model)
    with input_norm_monitor(sites) as norms, torch.no_grad():
        model(**{k: v for k, v in calibration_batches(family, 1)[0].items() if k != "labels"})
    assert set(norms) == {s.key for s in sites}
    assert all(norms[s.key].shape == (s.weight.shape[1],) and (norms[s.key] > 0).all() for s in sites)
    _clean(model, {n for n, m in model.named_modules() if hasattr(m, "parametrizations")})


@pytest.mark.parametrize("family", FAMILIES)
def test_taylor_accumulates_over_batches_and_differs_from_magnitude(family):
    model = build_tiny(family)
    sites = prunable_sites(model)
    b = calibration_batches(family, 2)
    both = weight_scores(model, sites, "taylor", b)
    one = weight_scores(model, sites, "taylor", b[:1])
    two = weight_scores(model, sites, "taylor", b[1:])
    key = sites[0].key
    assert torch.equal(both[key], one[key] + two[key])  # per-batch scores, summed: the same sums either way
    assert (both[key] > 0).any()
    mag = weight_scores(model, sites, "magnitude")
    assert not torch.equal(M.layer_masks(both, 0.5)[key], M.layer_masks(mag, 0.5)[key])
    assert all(p.grad is None for p in model.parameters()) and not model.training
    with pytest.raises(ConfigError, match="needs calibration data"):
        weight_scores(model, sites, "taylor", None)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "wanda"])
def test_sparsify_folds_masks_and_leaves_nothing_behind(family, criterion):
    model = build_tiny(family)
    parametrized = {n for n, m in model.named_modules() if hasattr(m, "parametrizations")}  # wav2vec2's pos conv
    n_params = sum(p.numel() for p in model.parameters())
    zeros_before = sum(int((p == 0).sum()) for p in model.parameters())
    recipe = parse_sparsify_recipe({"criterion": criterion, "sparsity": 0.5})
    record = sparsify(model, recipe, calibration_batches(family) if recipe.needs_calibration else None)
    assert abs(record["sparsity"] - 0.5) < 0.01
    sites = prunable_sites(model)
    assert record["sparsity"] == pytest.approx(M.sparsity({s.key: s.weight for s in sites}))
    zeros = sum(int((s.weight == 0).sum()) for s in sites)
    assert record["nonzero_params"] == n_params - zeros_before - (zeros - sum(  # only the targets lost weights
        int((s.weight == 0).sum()) for s in prunable_sites(build_tiny(family))))
    assert record["params"] == n_params
    _clean(model, parametrized)
    out = model(**{k: v for k, v in calibration_batches(family, 1)[0].items()})
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_global_scope_spreads_sparsity_unevenly_layer_scope_evenly(family):
    model = build_tiny(family)
    site = prunable_sites(model)[0]
    with torch.no_grad():
        site.weight.mul_(10.0)  # one loud tensor: global pruning spares it
    g = sparsify(model, parse_sparsify_recipe({"sparsity": 0.5, "scope": "global"}))
    assert g["sites"][site.key] < 0.1 and abs(g["sparsity"] - 0.5) < 0.01
    assert max(g["sites"].values()) > 0.5
    model2 = build_tiny(family)
    s2 = prunable_sites(model2)[0]
    with torch.no_grad():
        s2.weight.mul_(10.0)
    lay = sparsify(model2, parse_sparsify_recipe({"sparsity": 0.5, "scope": "layer"}))
    assert all(abs(v - 0.5) < 0.01 for v in lay["sites"].values())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_nm_pattern_holds_on_every_pruned_tensor(family, pattern):
    n, m = M.parse_nm(pattern)
    model = build_tiny(family)
    rec = sparsify(model, parse_sparsify_recipe({"criterion": "magnitude", "pattern": pattern}))
    assert rec["sparsity"] == pytest.approx(1 - n / m)
    for s in prunable_sites(model):
        groups = (s.weight != 0).reshape(-1, m).sum(dim=1)
        assert (groups <= n).all() and (groups == n).float().mean() > 0.99, s.key


def test_nm_needs_divisible_widths():
    model = build_tiny("whisper")
    with pytest.raises(ConfigError, match="does not divide into groups of 64"):
        sparsify(model, parse_sparsify_recipe({"pattern": "2:64", "components": ["ffn"]}))


def test_prior_masks_are_never_revived():
    scores = {"w": torch.arange(1.0, 13.0).view(3, 4)}
    prior = {"w": torch.ones(3, 4, dtype=torch.bool)}
    prior["w"][2, 3] = False  # the highest score, already pruned
    keep = select_masks(scores, "layer", sparsity=0.5, prior=prior)["w"]
    assert not keep[2, 3] and int((~keep).sum()) == 6
