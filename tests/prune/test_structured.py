"""The structured pruning driver on tiny random models of two families: the algorithms never name modules."""

import copy

import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.models.adapters import adapter_for
from speechprune.prune.recipe import parse_recipe
from speechprune.prune.structured import prune

from tiny_models import build_tiny


def batches(model, family: str, n: int = 2) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    if family == "whisper":
        return [{"input_features": torch.randn(2, 80, 3000, generator=g),
                 "decoder_input_ids": torch.tensor([[60, 62, 5, 9]] * 2),
                 "labels": torch.tensor([[-100, 5, 9, 61]] * 2)} for _ in range(n)]
    return [{"input_values": torch.randn(2, 4000, generator=g), "labels": torch.randint(1, 12, (2, 5), generator=g)}
            for _ in range(n)]


def forward(model, family):
    torch.manual_seed(1)
    with torch.no_grad():
        if family == "whisper":
            return model(input_features=torch.randn(1, 80, 3000), decoder_input_ids=torch.tensor([[60, 62, 7]])).logits
        return model(input_values=torch.randn(1, 4000)).logits


def assert_clean(model):
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    # torch.nn.utils.prune leaves `<name>_orig` parameters and `<name>_mask` buffers behind
    assert not any(n.endswith("_orig") for n, _ in model.named_parameters())
    assert not any(n.endswith("_mask") for n, _ in model.named_buffers())


FAMILIES = ["whisper", "wav2vec2"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", ["magnitude", "taylor", "activation", "random"])
def test_ffn_and_heads_shrink_physically_for_every_criterion(family, criterion):
    model = build_tiny(family)
    adapter = adapter_for(model)
    before = sum(p.numel() for p in model.parameters())
    recipe = parse_recipe({"criterion": criterion, "targets": [
        {"stack": "encoder", "kind": "ffn", "sparsity": 0.5},
        {"stack": "encoder", "kind": "self_attn", "sparsity": 0.5, "scope": "global"}]})
    reports = prune(model, adapter, recipe, batches(model, family))
    groups = {g.key: g.n_units for g in adapter.unit_groups(model)}
    assert groups["encoder.0.ffn"] == 32 and groups["encoder.1.ffn"] == 32
    assert groups["encoder.0.self_attn"] + groups["encoder.1.self_attn"] == 4
    assert reports[0].params < before and sum(p.numel() for p in model.parameters()) == reports[0].params
    assert_clean(model)
    assert torch.isfinite(forward(model, family)).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_local_head_selection_removes_whole_attention_blocks(family):
    model = build_tiny(family)
    adapter = adapter_for(model)
    recipe = parse_recipe({"targets": [{"stack": "encoder", "kind": "self_attn", "sparsity": 0.5, "scope": "local"}]})
    (report,) = prune(model, adapter, recipe)
    assert len(report.removed_modules) == 1 and report.removed_modules[0].endswith("self_attn")
    assert sum(1 for g in adapter.unit_groups(model) if g.kind == "self_attn" and g.stack == "encoder") == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_layers_chosen_by_the_criterion_or_named(family):
    model = build_tiny(family, encoder_layers=4) if family == "whisper" else build_tiny(family, num_hidden_layers=4)
    adapter = adapter_for(model)
    recipe = parse_recipe({"targets": [{"stack": "encoder", "remove_layers": [1, 3]}]})
    (report,) = prune(model, adapter, recipe)
    assert report.removed_layers == ["encoder.1", "encoder.3"] and adapter.n_layers(model, "encoder") == 2
    m2 = build_tiny(family, encoder_layers=3) if family == "whisper" else build_tiny(family, num_hidden_layers=3)
    (r2,) = prune(m2, adapter_for(m2), parse_recipe({"targets": [{"stack": "encoder", "n_layers": 1}]}))
    assert len(r2.removed_layers) == 1 and adapter_for(m2).n_layers(m2, "encoder") == 2


def test_incremental_schedule_reaches_the_target_and_reports_every_step():
    model = build_tiny("whisper")
    seen = []
    recipe = parse_recipe({"criterion": "magnitude", "schedule": {"steps": 3}, "targets": [
        {"stack": "decoder", "kind": "ffn", "sparsity": 0.75}]})
    reports = prune(model, adapter_for(model), recipe, on_step=lambda i, m, r: seen.append((i, r.params)))
    assert [i for i, _ in seen] == [1, 2, 3]
    widths = [r.kept_units["decoder.0.ffn"] for r in reports]
    assert widths[0] > widths[1] > widths[2] == 16  # 64 -> ... -> 25 %
    assert seen[0][1] > seen[1][1] > seen[2][1]


def test_pruned_model_saves_and_reloads_to_identical_outputs(tmp_path):
    from speechprune.models.checkpoint import load_pruned, save_pruned

    model = build_tiny("whisper")
    recipe = parse_recipe({"criterion": "taylor", "targets": [
        {"stack": "encoder", "kind": "self_attn", "sparsity": 0.25},
        {"stack": "decoder", "kind": "cross_attn", "sparsity": 0.5, "scope": "local"},
        {"stack": "decoder", "remove_modules": [{"layer": 1, "kind": "ffn"}]}]})
    prune(model, adapter_for(model), recipe, batches(model, "whisper"))
    save_pruned(model, None, tmp_path / "m")
    again, _ = load_pruned(tmp_path / "m")
    assert torch.equal(forward(model, "whisper"), forward(again, "whisper"))
    assert_clean(again)


@pytest.mark.parametrize("family,target,msg", [
    ("whisper", {"stack": "encoder", "remove_layers": [7]}, "layer 7 does not exist"),
    ("whisper", {"stack": "encoder", "remove_layers": [0, 1]}, "every encoder layer"),
    ("wav2vec2", {"stack": "decoder", "kind": "ffn", "sparsity": 0.5}, "no decoder"),
    ("whisper", {"stack": "encoder", "remove_modules": [{"layer": 0, "kind": "conv"}]}, "conv"),
])
def test_impossible_requests_are_refused_before_any_work(family, target, msg):
    model = build_tiny(family)
    snapshot = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match=msg):
        prune(model, adapter_for(model), parse_recipe({"targets": [target]}))
    assert all(torch.equal(snapshot[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bad,msg", [
    ({"targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 1.0}]}, "sparsity"),
    ({"targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5, "sparsty": 1}]}, "unknown key"),
    ({"criterion": "vibes", "targets": [{"stack": "encoder", "n_layers": 1}]}, "criterion"),
    ({"targets": [{"stack": "encoder", "kind": "cross_attn", "sparsity": 0.5}]}, "no cross-attention"),
    ({"targets": []}, "targets"),
])
def test_bad_recipes_are_refused_in_one_line(bad, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        parse_recipe(bad)
    assert "\n" not in str(e.value)
