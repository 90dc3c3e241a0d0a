"""Federated dropout: a client's physically smaller sub-model, its update scattered back and averaged."""

from __future__ import annotations

import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.federated.dropout import (aimed_layers, average, bytes_of, drop_plan, flat_rate, layer_ranking,
                                          scatter, sub_model, unit_slices)
from speechprune.models.adapters import adapter_for

from tiny_models import build_tiny


@pytest.fixture(params=["whisper", "ctc"])
def model(request):
    return build_tiny(request.param, seed=4).eval()


def _plan(model, rate=0.5, seed=0):
    adapter = adapter_for(model)
    groups = adapter.unit_groups(model)
    stack, layer = groups[0].stack, groups[0].layer
    return adapter, groups, drop_plan(groups, {(stack, layer)}, rate, seed), (stack, layer)


def test_the_plan_drops_the_rate_of_the_chosen_layers_units_only(model):
    adapter, groups, plan, where = _plan(model)
    assert plan.keep and all(k.startswith(f"{where[0]}.{where[1]}.") for k in plan.keep)
    for g in groups:
        if g.key in plan.keep:
            assert len(plan.keep[g.key]) == g.n_units - g.n_units // 2 and len(set(plan.keep[g.key])) == \
                len(plan.keep[g.key])
    assert 0 < plan.dropped_share(groups) < 0.5
    assert drop_plan(groups, {where}, 0.5, 1) != plan  # another client or round draws other units
    with pytest.raises(ConfigError, match="rate"):
        drop_plan(groups, {where}, 1.0, 0)


def test_a_sub_model_is_smaller_and_scatters_back_to_the_global_weights_exactly(model):
    adapter, _, plan, _ = _plan(model)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    sub = sub_model(model, adapter, plan)
    full, small = model.state_dict(), sub.state_dict()
    assert all(torch.equal(before[n], full[n]) for n in full)  # the global model is left as it was
    assert bytes_of(small) < bytes_of(full) and set(small) == set(full)
    slices = unit_slices(model, adapter, plan)
    back = scatter(full, small, slices)  # every kept element lands where it came from
    assert all(torch.equal(back[n], full[n]) for n in full)


def test_a_clients_update_changes_only_the_units_it_kept(model):
    adapter, _, plan, _ = _plan(model)
    sub = sub_model(model, adapter, plan)
    with torch.no_grad():  # a "training step": every weight the client holds moves
        for p in sub.parameters():
            p.add_(1.0)
    slices = unit_slices(model, adapter, plan)
    full = model.state_dict()
    back = scatter(full, sub.state_dict(), slices)
    params = dict(model.named_parameters())
    assert any(n not in params for n in slices) == (model.__class__.__name__ != "WhisperForConditionalGeneration")
    for name, (dim, idx) in slices.items():
        changed = (back[name] != full[name])
        kept = torch.zeros_like(changed).index_fill_(dim, idx, True)
        if name in params:  # kept elements moved, dropped ones kept the global value
            assert torch.equal(changed, kept), name
        else:  # a buffer (BatchNorm statistics; the step above left them): at most the kept elements
            assert not (changed & ~kept).any(), name
    assert all(not torch.equal(back[n], full[n]) for n in params if n not in slices)  # shared weights moved


def test_averaging_weighs_each_element_over_the_clients_that_held_it(model):
    adapter, groups, _, where = _plan(model)
    full = model.state_dict()
    plans = [drop_plan(groups, {where}, 0.5, seed) for seed in (0, 1)]
    updates = []
    for i, plan in enumerate(plans):
        sub = sub_model(model, adapter, plan)
        with torch.no_grad():
            for p in sub.parameters():
                p.fill_(float(i + 1))  # client 0 sends 1s, client 1 sends 2s
        updates.append((sub.state_dict(), unit_slices(model, adapter, plan), 1.0 if i == 0 else 3.0))
    new = average(full, updates)
    name, (dim, idx0) = next(iter(updates[0][1].items()))
    idx1 = updates[1][1][name][1]
    held0 = torch.zeros(full[name].shape[dim], dtype=torch.bool).index_fill_(0, idx0, True)
    held1 = torch.zeros_like(held0).index_fill_(0, idx1, True)
    t = new[name].movedim(dim, 0)
    g = full[name].movedim(dim, 0)
    for i in range(len(held0)):
        want = ((1 * 1.0 + 3 * 2.0) / 4 if held0[i] and held1[i] else 1.0 if held0[i] else 2.0 if held1[i]
                else None)
        if want is None:
            assert torch.equal(t[i], g[i])  # nobody trained it: the global value
        else:
            assert torch.allclose(t[i], torch.full_like(t[i], want))


def _summary(deltas: dict[str, float]) -> dict:
    """An ablation summary's shape (``analysis.ablation.summarize``) with one metric and method."""
    return {"targets": list(deltas) + ["encoder.0.ffn"],
            "table": {**{t: {"reinit": {"wer": {"delta": d}}} for t, d in deltas.items()},
                      "encoder.0.ffn": {"reinit": {"wer": {"delta": 9.0}}}}}


def test_the_ablation_ranking_aims_the_dropout_at_critical_ambient_or_all_layers(model):
    adapter = adapter_for(model)
    groups = adapter.unit_groups(model)
    layers = sorted({(g.stack, g.layer) for g in groups})
    deltas = {f"{s}.{i}": float(k) for k, (s, i) in enumerate(layers)}  # the last layer the most critical
    ranking = layer_ranking(_summary(deltas), "wer", "reinit")
    assert [r[0] for r in ranking] == layers[::-1]  # block targets (encoder.0.ffn) left out
    assert aimed_layers(ranking, "critical", 1) == {layers[-1]} and aimed_layers(ranking, "ambient", 1) == {layers[0]}
    assert aimed_layers(ranking, "flat", 1) == set(layers)
    aimed = drop_plan(groups, aimed_layers(ranking, "critical", 1), 0.5, 0)
    rate = flat_rate(groups, aimed)
    flat = drop_plan(groups, aimed_layers(ranking, "flat", 1), rate, 0)
    # the same share within half of the largest unit (whole units only)
    from speechprune.federated.dropout import unit_params

    total = sum(unit_params(g) * g.n_units for g in groups)
    assert abs(flat.dropped_share(groups) - aimed.dropped_share(groups)) <= max(map(unit_params, groups)) / total
    with pytest.raises(ConfigError, match="aims at 9 layers"):
        aimed_layers(ranking, "ambient", 9)
    with pytest.raises(ConfigError, match="unknown dropout aim"):
        aimed_layers(ranking, "middle", 1)
    with pytest.raises(ConfigError, match="no whole-layer deltas"):
        layer_ranking(_summary(deltas), "cer", "reinit")
