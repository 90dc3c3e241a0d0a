"""Federated fine-tuning on Flower's simulation engine: 2 clients, 2 rounds, a tiny Conformer CTC model with federated
dropout; the simulated run must equal the same algorithm computed here step by step."""

from __future__ import annotations

import copy

import pytest
import torch

from speechprune.data.manifest import read_manifest
from speechprune.errors import ConfigError
from speechprune.federated.dropout import DropPlan, average, bytes_of, drop_plan, sub_model, unit_slices
from speechprune.federated.flower import FederatedSettings, client_seed, local_train, run_federated
from speechprune.models.adapters import adapter_for
from speechprune.models.ctc.batches import CTCLabeller

from tiny_models import tiny_ctc


def _clients(model, clips):
    utts = read_manifest(clips)
    batches = CTCLabeller(model).reference_batches(utts, batch_size=2)
    assert [int(b["lengths"].numel()) for b in batches] == [2, 2, 1]
    return [batches[:2], batches[2:]]  # client 0: clips 0-3, client 1: clip 4


def test_two_clients_two_rounds_on_flower_equal_federated_dropout_done_here(clips):
    model = tiny_ctc("conformer", "batch", seed=3).eval()
    adapter = adapter_for(model)
    clients = _clients(model, clips)
    settings = FederatedSettings(rounds=2, local_steps=2, lr=1e-3, aim="ambient", rate=0.5, seed=5)
    layers = {("encoder", 1)}
    start = copy.deepcopy(model)

    traffic = run_federated(model, adapter, clients, settings, layers)

    rows = traffic.rows
    assert sorted((r["round"], r["partition"]) for r in rows) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    full = bytes_of(start.state_dict())
    assert all(0 < r["dropped_share"] < 0.5 and r["bytes_up"] == r["bytes_down"] < full for r in rows)

    # the same rounds computed in this process: each client's draw, sub-model, local steps, then the average; on
    # one thread as Ray's 1-CPU clients run (AdamW's first steps move a weight by ~lr whatever its gradient's size,
    # so the conv bias before BatchNorm, whose gradient is ~0, would amplify another reduction order to ~lr)
    groups = adapter.unit_groups(start)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for rnd in (1, 2):
            updates = []
            for r in sorted((r for r in rows if r["round"] == rnd), key=lambda r: r["client"]):
                seed = client_seed(settings.seed, rnd, r["client"])
                plan = drop_plan(groups, layers, settings.rate, seed)
                sub = sub_model(start, adapter, plan)
                local_train(sub, clients[r["partition"]], settings, rnd, seed)
                updates.append((sub.state_dict(), unit_slices(start, adapter, plan), float(r["examples"])))
            start.load_state_dict(average(start.state_dict(), updates))
    finally:
        torch.set_num_threads(threads)
    got, want = model.state_dict(), start.state_dict()
    changed = 0
    for name, w in want.items():
        # float32 training, the same operations in another process: equal up to reordering in the reductions
        assert torch.allclose(got[name].double(), w.double(), rtol=1e-4, atol=1e-5), name
        changed += not torch.equal(w, tiny_ctc("conformer", "batch", seed=3).state_dict()[name])
    assert changed > 0


def test_bad_federated_settings_are_one_line_errors(clips):
    model = tiny_ctc("conformer", "batch", seed=3).eval()
    adapter = adapter_for(model)
    clients = _clients(model, clips)
    with pytest.raises(ConfigError, match="at least 2 clients"):
        run_federated(model, adapter, clients[:1], FederatedSettings())
    with pytest.raises(ConfigError, match="needs the layers"):
        run_federated(model, adapter, clients, FederatedSettings(aim="critical"))
    with pytest.raises(ValueError, match="rate"):
        FederatedSettings(rate=1.0)
    with pytest.raises(ValueError, match="extra"):
        FederatedSettings(round=3)
    with pytest.raises(ConfigError, match="no batches"):
        local_train(model, [], FederatedSettings(), 1, 0)
    assert DropPlan({}).dropped_share(adapter.unit_groups(model)) == 0.0
