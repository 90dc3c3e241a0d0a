"""Iterative magnitude pruning with and without rewinding on a tiny random Whisper."""

from __future__ import annotations

import copy

import pytest
import torch
from calibration_helpers import teacher_batches
from tiny_models import build_tiny

from speechprune.errors import ConfigError
from speechprune.prune.imp import imp, round_sparsities
from speechprune.prune.sparse_recipe import parse_sparsify_recipe
from speechprune.prune.unstructured import prunable_sites


def _recipe(rewind, steps=3, rounds=2, sparsity=0.6):
    return parse_sparsify_recipe({"sparsity": sparsity, "imp": {
        "rounds": rounds, "rewind": rewind, "recovery": {"steps": steps, "lr": 1e-2, "batch_size": 2}}})


def test_round_sparsities_prune_the_same_share_of_what_remains():
    s = round_sparsities(0.875, 3)
    assert s == pytest.approx([0.5, 0.75, 0.875])


def _run(rewind, **kw):
    model = build_tiny("whisper")
    pretrained = copy.deepcopy(model.state_dict())
    batches = teacher_batches(copy.deepcopy(model))
    seen = {}

    def callback(event, r, m):
        seen[(event, r)] = {s.key: s.weight.detach().clone() for s in prunable_sites(m)}

    record = imp(model, _recipe(rewind, **kw), batches, callback=callback)
    sites = {s.key: s for s in prunable_sites(model)}
    names = {s.key: n for n, p in model.named_parameters() for s in sites.values() if p is s.weight}
    return model, pretrained, seen, record, names


def test_rewinding_restores_survivors_to_the_pretrained_weights():
    model, pretrained, seen, record, names = _run("pretrained")
    assert abs(record["sparsity"] - 0.6) < 0.01 and len(record["rounds"]) == 2
    for key, w in seen[("pruned", 2)].items():
        p = pretrained[names[key]]
        keep = w != 0
        assert torch.equal(w[keep], p[keep]), key  # survivors: exactly their pretrained values
        assert not torch.equal(seen[("trained", 1)][key], p), key  # though round 1 had trained them
    # masks are nested and pruned weights stayed zero through retraining
    for key in seen[("pruned", 2)]:
        z1 = seen[("pruned", 1)][key] == 0
        assert (seen[("trained", 1)][key][z1] == 0).all()
        assert (seen[("pruned", 2)][key][z1] == 0).all()
        assert (seen[("trained", 2)][key][seen[("pruned", 2)][key] == 0] == 0).all()
    for mod in model.modules():
        assert not mod._forward_hooks and not mod._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())


def test_without_rewinding_survivors_keep_their_trained_values():
    model, pretrained, seen, record, names = _run("none")
    for key, w in seen[("pruned", 2)].items():
        keep = w != 0
        trained = seen[("trained", 1)][key]
        assert torch.equal(w[keep], trained[keep]), key
        assert not torch.equal(w[keep], pretrained[names[key]][keep]), key


def test_rewinding_to_step_k_uses_a_briefly_trained_dense_model():
    model, pretrained, seen, record, names = _run(2)
    key = next(iter(seen[("pruned", 1)]))
    w = seen[("pruned", 1)][key]
    assert not torch.equal(w[w != 0], pretrained[names[key]][w != 0])


def test_imp_refuses_a_recipe_it_cannot_run():
    with pytest.raises(ConfigError, match="MAGNITUDE"):
        parse_sparsify_recipe({"criterion": "wanda", "sparsity": 0.5, "imp": {"rounds": 2}})
    with pytest.raises(ConfigError, match="needs recovery batches"):
        imp(build_tiny("whisper"), _recipe("pretrained"), None)
