"""Least-squares reconstruction after a cut: the pure solver, and the driver on two families."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.numerics import reorder_rtol
from speechprune.models.adapters import adapter_for
from speechprune.prune.reconstruct import ridge_refit
from speechprune.prune.recipe import parse_recipe
from speechprune.prune.structured import prune

from prune.test_structured import FAMILIES, assert_clean, batches
from tiny_models import build_tiny


def test_ridge_refit_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(400, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, generator=g)
    # The targets carry float32 rounding (a sum of 9 terms); the float64 solve passes it on amplified by the inputs'
    # condition number, and the ridge shrinks the solution by ~1e-8 relative.
    x1 = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    tol = float(torch.linalg.cond(x1)) * reorder_rtol(torch.float32, 9) + 1e-8
    scale = float(torch.cat([w.flatten(), b]).abs().max())
    weight, bias = ridge_refit(x, x @ w.T + b, ridge=1e-8)
    torch.testing.assert_close(weight, w, rtol=tol, atol=tol * scale)
    torch.testing.assert_close(bias, b, rtol=tol, atol=tol * scale)
    weight, bias = ridge_refit(x, x @ w.T, ridge=1e-8, bias=False)
    assert bias is None
    torch.testing.assert_close(weight, w, rtol=tol, atol=tol * scale)


def _distance(model, dense, family, data) -> float:
    with torch.no_grad():
        if family == "whisper":
            b = data[0]
            kw = {"input_features": b["input_features"], "decoder_input_ids": b["decoder_input_ids"]}
        else:
            kw = {"input_values": data[0]["input_values"]}
        return float((model(**kw).logits - dense(**kw).logits).pow(2).mean())


@pytest.mark.parametrize("family", FAMILIES)
def test_reconstruction_pulls_a_pruned_model_back_towards_the_dense_one(family):
    dense = build_tiny(family)
    data = batches(dense, family, n=3)
    targets = [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5},
               {"stack": "encoder", "kind": "self_attn", "sparsity": 0.5}]
    plain, rebuilt = copy.deepcopy(dense), copy.deepcopy(dense)
    prune(plain, adapter_for(plain), parse_recipe({"criterion": "magnitude", "targets": targets}), data)
    reports = prune(rebuilt, adapter_for(rebuilt),
                    parse_recipe({"criterion": "magnitude", "reconstruct": True, "targets": targets}), data,
                    reference=dense)
    errors = reports[0].reconstruction
    assert set(errors) == {"encoder.0.ffn", "encoder.1.ffn", "encoder.0.self_attn", "encoder.1.self_attn"}
    assert all(e["error_after"] < e["error_before"] for e in errors.values())
    assert _distance(rebuilt, dense, family, data) < 0.7 * _distance(plain, dense, family, data)
    assert [g.n_units for g in adapter_for(rebuilt).unit_groups(rebuilt)] == \
        [g.n_units for g in adapter_for(plain).unit_groups(plain)]  # same structure, other weights
    assert_clean(rebuilt)
    assert_clean(dense)


def test_reconstruction_needs_calibration_and_a_reference():
    model = build_tiny("whisper")
    recipe = parse_recipe({"reconstruct": True, "targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5}]})
    assert recipe.needs_calibration
    with pytest.raises(ConfigError, match="reconstruction needs calibration batches"):
        prune(model, adapter_for(model), recipe, batches(model, "whisper"))


def test_weighted_refit_equals_the_refit_of_repeated_rows():
    from speechprune.prune.reconstruct import balanced_weights

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randn(40, 3, generator=g)
    w = torch.randint(1, 4, (40,), generator=g)
    weighted = ridge_refit(x, y, ridge=0.0, weights=w.double())
    repeated = ridge_refit(x.repeat_interleave(w, dim=0), y.repeat_interleave(w, dim=0), ridge=0.0)
    for a, b in zip(weighted, repeated):
        torch.testing.assert_close(a, b, rtol=reorder_rtol(torch.float32, 120, 2), atol=1e-6)
    real = torch.tensor([True] * 3 + [False] * 12)
    bw = balanced_weights(real)
    assert bw[:3].sum() == pytest.approx(bw[3:].sum()) and bw[0] == 1.0
    assert torch.equal(balanced_weights(torch.ones(4, dtype=torch.bool)), torch.ones(4, dtype=torch.float64))


def test_whisper_padding_positions_are_found_from_the_features_floor():
    from speechprune.data.features import FeatureFrontend

    fe = FeatureFrontend(80)
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(fe([0.1 * rng.standard_normal(16000).astype(np.float32),  # 1 s of audio
                                 0.1 * rng.standard_normal(48000).astype(np.float32)]))  # 3 s
    model = build_tiny("whisper")
    real = adapter_for(model).real_positions(model, {"input_features": feats}, "encoder")
    assert real.shape == (2, 1500)
    assert abs(int(real[0].sum()) - 50) <= 2 and abs(int(real[1].sum()) - 150) <= 2  # 50 positions per second
    assert adapter_for(model).real_positions(model, {"input_features": feats}, "decoder") is None


def test_speech_weighted_reconstruction_runs_and_weighs_ctc_clips_by_their_own_positions(monkeypatch):
    import speechprune.prune.reconstruct as R
    from calibration_helpers import calibration_batches

    weighted = []
    refit = R.ridge_refit
    monkeypatch.setattr(R, "ridge_refit", lambda *a, weights=None, **k: weighted.append(weights is not None)
                        or refit(*a, weights=weights, **k))
    model = build_tiny("ctc")
    batches = calibration_batches("ctc", n=2)
    real = adapter_for(model).real_positions(model, batches[0], "encoder")
    assert real.tolist()[1].count(True) == model.stem.out_lengths(torch.tensor([44])).item()
    recipe = parse_recipe({"criterion": "magnitude", "reconstruct": True, "reconstruct_weighting": "speech",
                           "targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5}]})
    (report,) = prune(model, adapter_for(model), recipe, batches, reference=copy.deepcopy(model))
    assert report.reconstruction and all(v["error_after"] <= v["error_before"] for v in report.reconstruction.values())
    assert weighted and all(weighted)  # every refit read the weights
