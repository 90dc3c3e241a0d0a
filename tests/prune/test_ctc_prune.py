"""The family-neutral structured pruning core driving the CTC family: Conformer heads, both FFNs, conv channels and
layers chosen by magnitude, removed physically, and the pruned model saved and reloaded to the same outputs."""

import torch

from speechprune.models.adapters import adapter_for
from speechprune.models.ctc import load_ctc, save_ctc
from speechprune.prune.recipe import parse_recipe
from speechprune.prune.structured import prune
from tiny_models import tiny_ctc


def test_a_conformer_is_pruned_by_a_recipe_and_reloads(tmp_path):
    model = tiny_ctc("conformer", "group")
    recipe = parse_recipe({"criterion": "magnitude", "targets": [
        {"stack": "encoder", "kind": "ffn", "sparsity": 0.5},
        {"stack": "encoder", "kind": "ffn_macaron", "sparsity": 0.25},
        {"stack": "encoder", "kind": "conv", "sparsity": 0.5},
        {"stack": "encoder", "kind": "self_attn", "sparsity": 0.5},
        {"stack": "encoder", "n_layers": 1},
        {"stack": "encoder", "remove_modules": [{"layer": 0, "kind": "conv"}]},
    ]})
    adapter = adapter_for(model)
    prune(model, adapter, recipe)
    layers = adapter.structure(model)["encoder"]["layers"]
    assert len(layers) == 2
    assert all(l["ffn"] == 24 and l["ffn_macaron"] == 36 and l["self_attn"] == 1 for l in layers)
    assert layers[0]["conv"] is None or layers[1]["conv"] is None  # layer 0's conv went (if layer 0 stayed)
    assert {l["conv"] for l in layers} <= {None, 16}
    feats, lengths = torch.randn(2, 16, 60), torch.tensor([60, 45])
    save_ctc(model, tmp_path / "p")
    assert torch.equal(load_ctc(tmp_path / "p")(feats, lengths)[0], model.eval()(feats, lengths)[0])


def test_data_driven_criteria_and_reconstruction_read_ctc_training_batches():
    import copy

    import pytest

    from calibration_helpers import calibration_batches
    from tiny_models import build_tiny

    batches = calibration_batches("ctc", n=2)
    for criterion in ("taylor", "activation"):
        model = build_tiny("ctc")
        reference = copy.deepcopy(model)
        recipe = parse_recipe({"criterion": criterion, "reconstruct": True, "targets": [
            {"stack": "encoder", "kind": "conv", "sparsity": 0.5},
            {"stack": "encoder", "kind": "ffn", "sparsity": 0.5}]})
        (report,) = prune(model, adapter_for(model), recipe, batches, reference=reference)
        assert all(v["error_after"] <= v["error_before"] + 1e-6 for v in report.reconstruction.values())
        assert {g.n_units for g in adapter_for(model).unit_groups(model) if g.kind in ("conv", "ffn")} == {16, 24}
        assert not any(p.grad is not None for p in model.parameters())
    with pytest.raises(Exception, match="loss"):
        prune(build_tiny("ctc"), adapter_for(model), parse_recipe({"criterion": "taylor", "targets": [
            {"stack": "encoder", "kind": "ffn", "sparsity": 0.5}]}),
            [{k: v for k, v in b.items() if not k.startswith("target")} for b in batches])


def test_unstructured_and_low_rank_cores_act_on_ctc_weight_sites():
    from calibration_helpers import calibration_batches
    from tiny_models import build_tiny

    from speechprune.prune.lowrank import factorize, input_grams, lowrank_sites, plan_ranks
    from speechprune.prune.sparse_recipe import parse_sparsify_recipe
    from speechprune.prune.unstructured import sparsify

    batches = calibration_batches("ctc", n=2)
    model = build_tiny("ctc")
    rec = sparsify(model, parse_sparsify_recipe({"criterion": "wanda", "sparsity": 0.5}), batches)
    assert abs(rec["sparsity"] - 0.5) < 0.01 and rec["criterion"] == "wanda"
    assert not any(m._forward_pre_hooks for m in model.modules())

    model = build_tiny("ctc")
    sites = lowrank_sites(model, ("self_attn", "ffn"))
    assert {s.component for s in sites} == {"self_attn", "ffn"} and any("ffn_macaron" in s.key for s in sites)
    before = sum(p.numel() for p in model.parameters())
    grams = input_grams(model, sites, batches)
    factorize(sites, plan_ranks(sites, rank=4).ranks, grams)
    assert sum(p.numel() for p in model.parameters()) < before
    assert model(**batches[0]).loss.isfinite()
