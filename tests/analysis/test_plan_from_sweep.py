"""A plan from a sweep folder: costs measured on real pruned copies of a tiny Whisper, WERs synthetic."""

from __future__ import annotations

import copy
import json

import pytest

from speechprune.analysis import sensitivity as S
from speechprune.analysis.plan import write_plan
from speechprune.errors import ConfigError
from speechprune.prune.recipe import load_recipe

LEVELS = (0.25, 0.5, 0.75)
DAMAGE = {"encoder.ffn": lambda s: 0.02 * s, "encoder.self_attn": lambda s: 1.5 * s, "decoder.ffn": lambda s: 0.5 * s}


@pytest.fixture
def sweep(tmp_path, tiny_model):
    out = tmp_path / "sweep"
    out.mkdir()
    (out / S.SWEEP).write_text(json.dumps({"kind": "sensitivity", "model": "tiny", "split": "dev", "limit": 4,
                                           "criterion": "magnitude"}))
    recs = [{"key": "dense", "component": "dense", "method": "dense", "sparsity": 0.0, "wer": 0.1,
             **S.cost_record(tiny_model)}]
    for comp, dmg in DAMAGE.items():
        for s in LEVELS:
            m = copy.deepcopy(tiny_model)
            p = S.Point(comp, "structured", s)
            S.prune_point(m, p)
            recs.append({"key": p.key, "component": comp, "method": "structured", "sparsity": s, "wer": 0.1 + dmg(s),
                         **S.cost_record(m)})
    for r in recs:
        S.append_locked(out / S.POINTS, r)
    return out


def test_plan_meets_the_flops_target_and_beats_uniform(sweep, tiny_model, tmp_path):
    rec = write_plan(sweep, "encoder-flops:0.3", tmp_path / "plan.yaml", model=tiny_model)
    plan, uni = load_recipe(tmp_path / "plan.yaml"), load_recipe(tmp_path / "plan-uniform.yaml")
    assert {t.stack for t in plan.targets} == {"encoder"}  # decoder FFN does not lower encoder FLOPs
    assert len({t.sparsity for t in uni.targets}) == 1 and len(uni.targets) == 2
    dense = rec["dense_total"]
    for name in ("plan", "uniform"):
        removed = dense - rec[name]["realized"]["flops_encoder"]
        assert removed >= 0.3 * dense - 1  # the recipe, applied, meets the target
        assert removed == pytest.approx(rec[name]["predicted_removed"], rel=1e-6)  # costs are exact in units
    # heads come in quarters here, so uniform overshoots; the plan removes at least as much, and predicts no worse
    assert rec["plan"]["realized"]["flops_encoder"] <= rec["uniform"]["realized"]["flops_encoder"]
    assert rec["plan"]["predicted_wer_increase"] <= rec["uniform"]["predicted_wer_increase"]
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["plan"]["recipe"].endswith("plan.yaml")


def test_params_plan_puts_sparsity_where_the_curve_is_flat(sweep, tiny_model, tmp_path):
    rec = write_plan(sweep, "params:0.05", tmp_path / "p.yaml", tmp_path / "u.yaml", model=tiny_model)
    plan, uni = load_recipe(tmp_path / "p.yaml"), load_recipe(tmp_path / "u.yaml")
    s_plan = {(t.stack, t.kind): t.sparsity for t in plan.targets}
    assert s_plan[("encoder", "ffn")] > uni.targets[0].sparsity  # the flat curve takes more than its uniform share
    assert ("encoder", "self_attn") not in s_plan
    assert len(uni.targets) == 3  # every component that lowers params
    assert rec["plan"]["predicted_wer_increase"] < rec["uniform"]["predicted_wer_increase"]
    removed = rec["dense_total"] - rec["plan"]["realized"]["params"]
    assert removed >= 0.05 * rec["dense_total"]


def test_plan_errors_name_the_problem(sweep, tiny_model, tmp_path):
    with pytest.raises(ConfigError, match="exceeds"):
        write_plan(sweep, "encoder-flops:0.99", tmp_path / "p.yaml", model=tiny_model)
    with pytest.raises(ConfigError, match="not a sensitivity sweep"):
        write_plan(tmp_path, "encoder-flops:0.3", tmp_path / "p.yaml", model=tiny_model)


def test_decoder_flops_plan_spares_the_fragile_component(sweep, tiny_model, tmp_path):
    for s in LEVELS:  # decoder self-attention: fragile, as on tiny.en
        m = copy.deepcopy(tiny_model)
        p = S.Point("decoder.self_attn", "structured", s)
        S.prune_point(m, p)
        S.append_locked(sweep / S.POINTS, {"key": p.key, "component": p.component, "method": "structured",
                                           "sparsity": s, "wer": 0.1 + 2.0 * s, **S.cost_record(m)})
    rec = write_plan(sweep, "decoder-flops:0.015", tmp_path / "d.yaml", model=tiny_model)
    plan, uni = load_recipe(tmp_path / "d.yaml"), load_recipe(tmp_path / "d-uniform.yaml")
    assert {(t.stack, t.kind) for t in uni.targets} == {("decoder", "ffn"), ("decoder", "self_attn")}
    assert {(t.stack, t.kind) for t in plan.targets} == {("decoder", "ffn")}  # encoder parts cost nothing per token
    dense = rec["dense_total"]
    for name in ("plan", "uniform"):
        assert dense - rec[name]["realized"]["flops_decoder_per_token"] >= 0.015 * dense - 1
        assert rec[name]["realized"]["flops_encoder"] == rec["plan"]["realized"]["flops_encoder"]
    assert rec["plan"]["predicted_wer_increase"] < rec["uniform"]["predicted_wer_increase"]
