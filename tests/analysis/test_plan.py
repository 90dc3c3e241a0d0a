"""The allocator on synthetic curves: flat curves get the sparsity, the target is met, uniform is beaten."""

from __future__ import annotations

import pytest
import yaml

from speechprune.analysis.plan import Curve, allocate, parse_target, realized, recipe_dict, uniform
from speechprune.errors import ConfigError
from speechprune.prune.recipe import load_recipe

LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _curve(name, n, damage_fn, cost_full=100.0):
    return Curve(name, n, LEVELS, tuple(damage_fn(s) for s in LEVELS), tuple(cost_full * realized(s, n) for s in LEVELS))


def test_flat_curve_gets_more_sparsity_and_target_is_met():
    flat = _curve("encoder.ffn", 1000, lambda s: 0.01 * s)
    steep = _curve("encoder.self_attn", 1000, lambda s: 2.0 * s * s)
    a = allocate([flat, steep], target=80.0)
    assert a.cost >= 80.0 - 1e-9
    assert a.sparsity["encoder.ffn"] > a.sparsity.get("encoder.self_attn", 0.0)
    s, u = uniform([flat, steep], target=80.0)
    assert u.cost >= 80.0 - 1e-9 and 0.35 < s < 0.45  # 40 % of each of two equal costs
    assert a.damage < u.damage


def test_allocation_is_optimal_against_brute_force():
    import itertools

    curves = [_curve("a.ffn", 6, lambda s: s ** 3), _curve("b.ffn", 6, lambda s: 0.5 * s), _curve("c.ffn", 6, lambda s: 3 * s * s, 50.0)]
    target = 90.0
    a = allocate(curves, target)
    best = min(
        sum(c.at(f)[0] for c, f in zip(curves, combo))
        for combo in itertools.product(*[c.candidates() for c in curves])
        if sum(c.at(f)[1] for c, f in zip(curves, combo)) >= target - 1e-9
    )
    assert a.damage == pytest.approx(best, abs=1e-9)
    assert a.cost >= target - 1e-9


def test_heads_are_cut_in_whole_units():
    heads = _curve("encoder.self_attn", 6, lambda s: s)
    for f in heads.candidates():
        assert round(f * 6) == pytest.approx(f * 6)
    a = allocate([heads], target=30.0)
    assert a.sparsity["encoder.self_attn"] == pytest.approx(2 / 6)  # 1/6 is 16.7 < 30, 2/6 is enough
    assert realized(a.sparsity["encoder.self_attn"], 6) == pytest.approx(2 / 6)


def test_noisy_dips_do_not_make_pruning_free():
    dip = Curve("x.ffn", 100, LEVELS, (0.0, -0.05, 0.2, 0.3, 0.4), tuple(100 * s for s in LEVELS))
    d, _ = dip.at(0.3)
    assert d == 0.0
    assert dip.at(0.5)[0] == pytest.approx(0.2)


def test_unreachable_target_and_bad_specs_are_refused():
    c = _curve("encoder.ffn", 100, lambda s: s)
    with pytest.raises(ConfigError, match="exceeds"):
        allocate([c], target=95.0)
    with pytest.raises(ConfigError, match="METRIC"):
        parse_target("flops:0.4")
    with pytest.raises(ConfigError, match="not a number"):
        parse_target("encoder-flops:lots")
    assert parse_target("params:5e6") == ("params", 5e6)


def test_recipe_is_loadable(tmp_path):
    c = _curve("encoder.ffn", 100, lambda s: s)
    a = allocate([c], 40.0)
    obj = recipe_dict(a, "plan", "whisper-tiny.en", "magnitude", a.sparsity)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(obj))
    r = load_recipe(path)
    assert r.targets[0].stack == "encoder" and r.targets[0].kind == "ffn"
    assert r.targets[0].sparsity == pytest.approx(a.sparsity["encoder.ffn"])
