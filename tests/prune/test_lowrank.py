"""Low-rank factorization: the SVD math on random matrices, ``LowRankLinear``, and the model-level steps on tiny
random Whispers (activation statistics, plans, surgery, the incremental driver)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from speechprune.errors import ConfigError
from speechprune.numerics import reorder_rtol
from speechprune.models.lowrank import LowRankLinear, is_smaller, lowrank_ranks, max_useful_rank
from speechprune.prune import lowrank as L
from speechprune.prune.lowrank_recipe import load_lowrank_recipe, parse_lowrank_recipe

from closeness import assert_reorder_close
from tiny_models import build_tiny

G = torch.Generator().manual_seed(0)


def _matrix(n_out, n_in, spectrum=None):
    u, _ = torch.linalg.qr(torch.randn(n_out, n_out, generator=G, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n_in, n_in, generator=G, dtype=torch.float64))
    k = min(n_out, n_in)
    s = (torch.linspace(3, 0.1, k, dtype=torch.float64) if spectrum is None
         else torch.tensor(spectrum, dtype=torch.float64))
    return (u[:, :k] * s) @ v[:, :k].T


def _anisotropic_inputs(n, d):
    """Inputs whose features differ in scale by 1000x and are correlated: what layer inputs look like."""
    scales = torch.logspace(-1.5, 1.5, d, dtype=torch.float64)
    mix, _ = torch.linalg.qr(torch.randn(d, d, generator=G, dtype=torch.float64))
    return (torch.randn(n, d, generator=G, dtype=torch.float64) * scales) @ mix.T


# ----- pure math

def assert_product_close(actual, expected, k: int, depth: int = 2):
    """Products of float32 factors rounded from a float64 SVD: the rounding of each factor and of the ``k``-term
    sums, at the scale of the largest singular value (which bounds every |b_i| |a_j| sum)."""
    rtol = reorder_rtol(torch.float32, k, depth)
    scale = float(torch.linalg.matrix_norm(expected.double(), ord=2))
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def test_truncated_svd_is_exact_at_full_rank_and_shaped_as_two_factors():
    w = _matrix(12, 20).float()
    a, b = L.truncated_svd(w, 12)
    assert a.shape == (12, 20) and b.shape == (12, 12) and a.dtype == w.dtype
    assert_product_close(b @ a, w, k=12)


@pytest.mark.parametrize("aware", [False, True])
def test_error_falls_as_the_rank_grows_and_vanishes_at_full_rank(aware):
    w = _matrix(16, 24)
    x = _anisotropic_inputs(400, 24)
    gram = x.T @ x / len(x)
    errors = []
    for r in range(1, 17):
        a, b = L.whitened_svd(w, gram, r, damping=1e-9) if aware else L.truncated_svd(w, r)
        errors.append(L.output_error(w, b @ a, gram if aware else None))
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:]))
    assert errors[-1] < 1e-10 and errors[0] > 0.05


def test_plain_svd_error_is_the_discarded_spectrum():  # Eckart-Young, which the rank choice relies on
    s = [5.0, 3.0, 2.0, 1.0, 0.5]
    w = _matrix(5, 8, s)
    a, b = L.truncated_svd(w, 2)
    assert L.output_error(w, b @ a) == pytest.approx((4 + 1 + 0.25) / (25 + 9 + 4 + 1 + 0.25), rel=1e-9)


def test_energy_threshold_picks_the_smallest_rank_that_keeps_it():
    s = torch.tensor([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22: cumulative .727 .909 .955 1
    assert [L.energy_rank(s, e) for e in (0.5, 0.727, 0.73, 0.9, 0.95, 0.96, 1.0)] == [1, 1, 2, 2, 3, 4, 4]
    w = _matrix(6, 9, [4.0, 2.0, 1.0, 1.0, 0.0, 0.0])
    assert L.energy_rank(L.singular_values(w), 0.9) == 2
    with pytest.raises(ValueError, match="energy"):
        L.energy_rank(s, 0.0)


def test_activation_aware_beats_plain_svd_on_the_output_for_anisotropic_inputs():
    w = _matrix(32, 48, torch.linspace(2, 0.5, 32).tolist())  # a flat spectrum: the weight alone cannot tell
    x = _anisotropic_inputs(2000, 48)
    gram = x.T @ x / len(x)
    for r in (4, 8, 16):
        a, b = L.truncated_svd(w, r)
        a2, b2 = L.whitened_svd(w, gram, r)
        plain = float(((x @ (w - b @ a).T) ** 2).sum())  # measured on the outputs themselves, not by formula
        aware = float(((x @ (w - b2 @ a2).T) ** 2).sum())
        assert aware < 0.5 * plain
        assert L.output_error(w, b2 @ a2, gram) == pytest.approx(aware / float(((x @ w.T) ** 2).sum()), rel=1e-3)


def test_whitening_survives_a_rank_deficient_second_moment():
    x = torch.randn(50, 4, generator=G, dtype=torch.float64) @ torch.randn(4, 10, generator=G, dtype=torch.float64)
    gram = x.T @ x / 50  # rank 4 of 10
    chol = L.whitening(gram, damping=1e-6)
    assert torch.isfinite(chol).all() and torch.allclose(chol @ chol.T, gram, atol=1e-4)


def test_parameter_rules():
    assert is_smaller(384, 384, 191) and not is_smaller(384, 384, 192)
    assert max_useful_rank(384, 384) == 191 and max_useful_rank(384, 1536) == 307 and max_useful_rank(1, 8) == 0
    assert L.param_share_rank(384, 1536, 0.25) == 76  # 76 * 1920 = 145920 <= 147456 < 77 * 1920
    assert L.factorized_params(384, 384, 200) == 384 * 384  # not smaller: stays dense
    spectra = {f"s{i}": (L.singular_values(_matrix(24, 40)), 40, 24) for i in range(3)}
    energy, ranks = L.global_energy_for_params(spectra, 0.5)
    used = sum(L.factorized_params(40, 24, r) for r in ranks.values())
    assert used <= 0.5 * 3 * 40 * 24
    bigger = {k: L.energy_rank(spectra[k][0], min(1.0, energy + 1e-3)) for k in spectra}  # a little more energy
    assert sum(L.factorized_params(40, 24, r) for r in bigger.values()) > 0.5 * 3 * 40 * 24 or bigger == ranks


# ----- the module

def test_lowrank_linear_really_is_two_smaller_matmuls():
    lin = nn.Linear(48, 32)
    new = L.factorize_linear(lin, 8)
    assert isinstance(new, LowRankLinear) and [type(m) for m in new.children()] == [nn.Linear, nn.Linear]
    assert (new.in_features, new.out_features, new.rank) == (48, 32, 8)
    assert sum(p.numel() for p in new.parameters()) == 8 * (48 + 32) + 32 < sum(p.numel() for p in lin.parameters())
    x = torch.randn(5, 48, generator=G)
    assert_reorder_close(new(x), x @ new.down.weight.T @ new.up.weight.T + lin.bias, k=48, depth=2)
    assert torch.equal(new.up.bias, lin.bias.detach())
    with FlopCounterMode(display=False) as counter:
        new(x)
    assert counter.get_total_flops() == 2 * 5 * 8 * (48 + 32)
    with pytest.raises(ValueError, match="would not|does not make"):
        L.factorize_linear(lin, 20)  # 20 * 80 > 48 * 32


def test_refactorizing_a_lowrank_layer_lowers_its_rank_from_its_product():
    lin = nn.Linear(48, 32)
    a = L.factorize_linear(lin, 12)
    b = L.factorize_linear(a, 4)
    direct = L.factorize_linear(lin, 4)
    assert b.rank == 4
    assert_product_close(b.dense_weight(), direct.dense_weight(), k=12, depth=3)  # through the rank-12 product


# ----- on a model

def _batches(model, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_features": torch.randn(2, 80, 3000, generator=g),
             "decoder_input_ids": torch.randint(0, 60, (2, 5), generator=g)} for _ in range(n)]


def _no_hooks(model) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_activation_aware_factorization_of_a_whisper_leaves_plain_modules_and_cuts_the_output_error():
    model = build_tiny("whisper")
    sites = L.lowrank_sites(model)
    assert {s.component for s in sites} == {"self_attn", "cross_attn", "ffn"}
    assert len(sites) == 2 * 6 + 2 * 10  # encoder: q k v out in out; decoder adds cross q k v out
    batches = _batches(model)
    grams = L.input_grams(model, sites, batches)
    assert _no_hooks(model)
    assert set(grams) == {s.key for s in sites} and all(g.shape[0] == s.module.in_features for s, g in
                                                        zip(sites, grams.values()))
    from speechprune.prune.reconstruct import _capture

    by_key = {s.key: s for s in sites}
    for key in ("encoder.0.self_attn.k", "encoder.1.ffn.out", "decoder.1.cross_attn.v"):
        with _capture(by_key[key].module, "input") as seen, torch.no_grad():
            for b in batches:
                model(**b)
        x = torch.cat(seen).double()
        # summed in float32 per batch (2 x 1500 encoder frames at most), then in float64
        assert_reorder_close(grams[key], x.T @ x / len(x), k=3000, depth=1, dtype=torch.float32)
    assert torch.equal(grams["encoder.0.self_attn.q"], grams["encoder.0.self_attn.v"])  # the same inputs
    plain, aware = build_tiny("whisper"), build_tiny("whisper")
    ranks = {s.key: 6 for s in sites}
    L.factorize(L.lowrank_sites(plain), ranks)
    e_aware = L.factorize(L.lowrank_sites(aware), ranks, grams)
    assert _no_hooks(aware) and lowrank_ranks(aware) == ranks
    assert sum(p.numel() for p in aware.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        ref = model.model.encoder(batches[0]["input_features"]).last_hidden_state
        def err(m):
            return float(((m.model.encoder(batches[0]["input_features"]).last_hidden_state - ref) ** 2).mean())

        assert err(aware) < err(plain)
    first = sites[0].key  # the first encoder projection sees the same inputs in both models
    assert e_aware[first] < L.output_error(L.dense_weight(sites[0].module),
                                           L.dense_weight(L.lowrank_sites(plain)[0].module), grams[first])


def test_plans_skip_what_would_not_get_smaller_and_meet_a_parameter_target():
    model = build_tiny("whisper")  # d 32, FFN 64: attention 32x32 (at most rank 15), FFN 64x32 (at most 21)
    sites = L.lowrank_sites(model)
    plan = L.plan_ranks(sites, rank=16)
    assert {k for k in plan.ranks} == {s.key for s in sites if s.component == "ffn"}
    assert all("would not be smaller" in why for why in plan.skipped.values())
    plan = L.plan_ranks(sites, params=0.4)
    assert plan.params_after <= 0.4 * plan.params_before and plan.energy is not None
    plan = L.plan_ranks(sites, rank_fraction=0.25)
    assert set(plan.ranks.values()) == {8} and not plan.skipped
    with pytest.raises(ValueError, match="exactly one"):
        L.plan_ranks(sites, rank=2, energy=0.5)


# ----- recipes and the driver

from speechprune.prune.lowrank_recipe import BUNDLED_LOWRANK  # noqa: E402

RECIPES = sorted(BUNDLED_LOWRANK.glob("*.yaml"))


def test_there_are_lowrank_recipes():
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_lowrank_recipe_loads_and_dry_runs(path):
    from speechprune.prune.lowrank_run import validate_lowrank

    recipe = load_lowrank_recipe(path)
    model = build_tiny("whisper", encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                       decoder_attention_heads=6, d_model=48, encoder_ffn_dim=192, decoder_ffn_dim=192)
    plan = validate_lowrank(recipe, model)
    assert plan.params_after <= plan.params_before and len(plan.ranks) + len(plan.skipped) > 0
    if recipe.recovery is not None:
        assert all(not d.endswith(":test") for d in recipe.recovery.data)


@pytest.mark.parametrize("bad, msg", [
    ({"target": {"energy": 1.2}}, "target.energy: Input should be less than 1"),
    ({"target": {"rank": 0}}, "target.rank: Input should be greater than or equal to 1"),
    ({"target": {"energy": 0.9, "rank": 8}}, "exactly one of"),
    ({"target": {"rank_fraction": 1.0}}, "target.rank_fraction"),
    ({"target": {"params": 0.5}, "method": "qr"}, "method"),
    ({"target": {"params": 0.5}, "sites": {"components": ["conv"]}}, "sites.components"),
    ({"target": {"params": 0.5}, "targets": []}, "targets: unknown key"),
])
def test_impossible_lowrank_recipes_are_refused_in_one_line(bad, msg):
    with pytest.raises(ConfigError, match="bad low-rank recipe: .*" + msg.replace("(", r"\(")) as e:
        parse_lowrank_recipe(bad, "r.yaml")
    assert "\n" not in str(e.value)


def test_a_recipe_naming_absent_layers_is_refused_against_the_model():
    from speechprune.prune.lowrank_run import validate_lowrank

    r = parse_lowrank_recipe({"target": {"rank": 4}, "sites": {"layers": [5]}})
    with pytest.raises(ConfigError, match="layer 5 does not exist"):
        validate_lowrank(r, build_tiny("whisper"))


def test_incremental_schedule_saves_a_smaller_model_at_every_step_and_resumes(tmp_path):
    from export.test_onnx import save_tiny_folder
    from speechprune.models.checkpoint import load_pruned
    from speechprune.prune.lowrank_run import run_lowrank

    src = save_tiny_folder(build_tiny("whisper", seed=3), tmp_path / "src")
    recipe = parse_lowrank_recipe({"method": "svd", "target": {"rank_fraction": 0.25}, "schedule": {"steps": 3},
                                   "sites": {"components": ["ffn", "self_attn"]}})
    record = run_lowrank(str(src), recipe, tmp_path / "out", progress=False)
    steps = record["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert record["dense"]["params"] > steps[0]["params"] > steps[1]["params"] > steps[2]["params"]
    assert record["dense"]["flops_encoder"] > steps[0]["flops_encoder"] > steps[2]["flops_encoder"]
    assert set(steps[-1]["ranks"].values()) == {8}  # a quarter of full rank 32
    for s in steps:
        model, _ = load_pruned(s["folder"])
        assert lowrank_ranks(model) == s["ranks"] and sum(p.numel() for p in model.parameters()) == s["params"]
        assert _no_hooks(model)
    assert (tmp_path / "out" / "model.txt").read_text().strip() == "step-3"
    assert json.loads((tmp_path / "out" / "lowrank.json").read_text())["steps"] == steps
    mtime = (tmp_path / "out" / "step-3" / "model.safetensors").stat().st_mtime_ns
    again = run_lowrank(str(src), recipe, tmp_path / "out", progress=False)  # finished: nothing is redone
    assert again["steps"] == steps and (tmp_path / "out" / "step-3" / "model.safetensors").stat().st_mtime_ns == mtime
    other = parse_lowrank_recipe({"method": "svd", "target": {"rank": 4}})
    with pytest.raises(ConfigError, match="another model or recipe"):
        run_lowrank(str(src), other, tmp_path / "out", progress=False)


def test_cli_factorizes_a_model_dry_runs_and_refuses_bad_recipes_in_one_line(tmp_path):
    from cli_helpers import cli
    from export.test_onnx import save_tiny_folder

    src = save_tiny_folder(build_tiny("whisper", seed=5), tmp_path / "src")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: svd\ntarget: {rank: 6}\nsites: {stacks: [encoder]}\n")
    proc = cli("lowrank", str(src), "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "factorizes 12 of 12 linear layers" in " ".join(proc.stdout.split())
    assert not (tmp_path / "out").exists()
    proc = cli("lowrank", str(src), "--recipe", str(recipe), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    record = json.loads((tmp_path / "out" / "lowrank.json").read_text())
    assert set(record["steps"][0]["ranks"]) == {f"encoder.{i}.{k}" for i in range(2)
                                                for k in ("self_attn.q", "self_attn.k", "self_attn.v",
                                                          "self_attn.out", "ffn.in", "ffn.out")}
    recipe.write_text("method: svd\ntarget: {rank: 6, energy: 0.5}\n")
    proc = cli("lowrank", str(src), "--recipe", str(recipe), "--out", str(tmp_path / "out2"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: {recipe}: bad low-rank recipe: target: a target needs exactly one of")


def test_activation_aware_schedule_recovers_between_steps(tmp_path, clips):
    from export.test_onnx import save_tiny_folder
    from speechprune.prune.lowrank_run import run_lowrank

    # room for 224 new tokens: the driver labels with default decoding, and a random model never stops early
    src = save_tiny_folder(build_tiny("whisper", seed=6, max_target_positions=448), tmp_path / "src")
    recipe = parse_lowrank_recipe({
        "method": "activation", "target": {"params": 0.6}, "schedule": {"steps": 2},
        "sites": {"components": ["ffn"], "stacks": ["encoder"]},
        "calibration": {"data": str(clips), "utterances": 2, "batch_size": 2},
        "recovery": {"data": [str(clips)], "steps": 2, "batch_size": 2, "max_utterances": 2}})
    record = run_lowrank(str(src), recipe, tmp_path / "out", progress=False)
    first, second = record["steps"]
    assert first["recovery"]["steps"] == 2 and second["recovery"]["steps"] == 2
    assert first["site_weights_after"] > second["site_weights_after"]
    dense = first["site_weights_before"]  # the parameter share is of the dense layers: 0.8 after step 1, 0.6 after 2
    assert first["site_weights_after"] <= 0.8 * dense and second["site_weights_after"] <= 0.6 * dense
    assert second["site_weights_before"] == first["site_weights_after"]
    assert all(second["ranks"][k] <= first["ranks"].get(k, 10**6) for k in second["ranks"])
    assert all(0 <= e < 1 for e in first["output_error"].values())
