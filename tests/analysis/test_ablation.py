import json

import pytest
import torch

from speechprune.analysis.ablation import (
    AblationConfig, Metric, Target, ablated, ablation_targets, init_like, plan, run_ablation, same_distribution,
    summarize, target_sites,
)
from speechprune.errors import ConfigError
from speechprune.models.adapters import adapter_for
from tiny_models import build_tiny, pruned_tiny_whisper

FAMILIES = ["whisper", "wav2vec2"]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(model, before):
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


def _layer_prefix(model, target):
    """The state-dict prefix of a target layer, found through the adapter's weight sites (no module names here)."""
    adapter = adapter_for(model)
    mods = {id(s.module) for s in target_sites(model, adapter, target)}
    names = [n for n, m in model.named_modules() if id(m) in mods]
    return names


@pytest.mark.parametrize("family", FAMILIES)
def test_targets_cover_every_layer_and_block(family):
    model = build_tiny(family, encoder_layers=3, num_hidden_layers=3) if family == "wav2vec2" else \
        build_tiny(family, encoder_layers=3)
    adapter = adapter_for(model)
    layers = ablation_targets(model, adapter)
    stacks = adapter.stacks(model)
    assert [t.key for t in layers] == [f"{s}.{i}" for s in stacks for i in range(adapter.n_layers(model, s))]
    blocks = ablation_targets(model, adapter, modules=True)
    assert {t.component for t in blocks} == ({"self_attn", "ffn"} | ({"cross_attn"} if family == "whisper" else set()))
    # every in-layer weight site belongs to exactly one block target
    sites = [s for s in adapter.weight_sites(model) if s.layer is not None]
    covered = [s.key for t in blocks for s in target_sites(model, adapter, t)]
    assert sorted(covered) == sorted(s.key for s in sites)


@pytest.mark.parametrize("family", FAMILIES)
def test_reinit_changes_exactly_the_chosen_layer_and_restores(family):
    model = build_tiny(family)
    adapter = adapter_for(model)
    before = _state(model)
    source = init_like(model, seed=3)
    target = Target("encoder", 1)
    mods = _layer_prefix(model, target)
    with ablated(model, adapter, target, "reinit", seed=3, source=source) as damaged:
        assert damaged is model
        changed = _changed(model, before)
        assert changed and all(any(k.startswith(m + ".") for m in mods) for k in changed)
        # every parameter of the layer changed, and to the source's values
        want = {k for k in before if any(k.startswith(m + ".") for m in mods)}
        assert changed == want
        src = source.state_dict()
        assert all(torch.equal(model.state_dict()[k], src[k]) for k in changed)
    assert not _changed(model, before)


def test_init_like_is_seeded_and_keeps_a_pruned_structure():
    model = pruned_tiny_whisper()
    a, b, c = init_like(model, 0), init_like(model, 0), init_like(model, 1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(model.state_dict())
    assert all(sa[k].shape == v.shape for k, v in model.state_dict().items())
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_same_distribution_keeps_mean_and_std():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(200, 100, generator=g) * 2.0 + 3.0
    new = same_distribution(t, torch.Generator().manual_seed(1))
    assert new.shape == t.shape and not torch.equal(new, t)
    assert float(new.mean()) == pytest.approx(float(t.mean()), abs=0.03)
    assert float(new.std()) == pytest.approx(float(t.std()), rel=0.02)
    assert torch.equal(same_distribution(torch.tensor([5.0]), g), torch.tensor([5.0]))


@pytest.mark.parametrize("family", FAMILIES)
def test_rerandom_keeps_each_tensors_moments_and_is_seeded(family):
    model = build_tiny(family)
    adapter = adapter_for(model)
    target = Target("encoder", 0, "ffn")
    sites = target_sites(model, adapter, target)
    before = {id(p): p.detach().clone() for s in sites for p in s.module.parameters()}
    with ablated(model, adapter, target, "rerandom", seed=5):
        first = {k: p.detach().clone() for k, p in model.state_dict().items()}
        for s in sites:
            for p in s.module.parameters():
                old, p = before[id(p)], p.detach()
                assert not torch.equal(p, old)
                if p.numel() >= 64:
                    assert float(p.mean()) == pytest.approx(float(old.mean()), abs=0.5 * float(old.std()))
                    assert float(p.std()) == pytest.approx(float(old.std()), rel=0.3)
    with ablated(model, adapter, target, "rerandom", seed=5):
        assert all(torch.equal(v, first[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p, before[id(p)]) for s in sites for p in s.module.parameters())


def _layer_inputs(model, stack_layers):
    """Record the hidden states entering each layer of a ModuleList (by position)."""
    seen, hooks = {}, []
    for i, layer in enumerate(stack_layers):
        def hook(mod, args, kwargs, i=i):
            seen[i] = (args[0] if args else kwargs["hidden_states"]).detach().clone()
        hooks.append(layer.register_forward_pre_hook(hook, with_kwargs=True))
    return seen, hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_skip_makes_the_layer_the_identity(family):
    model = build_tiny(family, encoder_layers=3) if family == "whisper" else build_tiny(family, num_hidden_layers=3)
    adapter = adapter_for(model)
    before = _state(model)

    def layers_of(m):  # the encoder layers' ModuleList, found through the adapter's sites
        first = target_sites(m, adapter_for(m), Target("encoder", 0))[0].parent
        for mod in m.modules():
            if isinstance(mod, torch.nn.ModuleList) and any(first is l or any(first is c for c in l.modules()) for l in mod):
                return mod

    x = torch.randn(1, 80, 3000) if family == "whisper" else torch.randn(1, 1600)
    kw = {"input_features": x, "decoder_input_ids": torch.tensor([[60, 62]])} if family == "whisper" else {"input_values": x}
    seen, hooks = _layer_inputs(model, layers_of(model))
    with torch.no_grad():
        model(**kw)
    for h in hooks:
        h.remove()
    with ablated(model, adapter, Target("encoder", 1), "skip") as damaged:
        assert damaged is not model and adapter.n_layers(damaged, "encoder") == 2
        seen2, hooks = _layer_inputs(damaged, layers_of(damaged))
        with torch.no_grad():
            damaged(**kw)
        for h in hooks:
            h.remove()
    # the layer after the skipped one now receives what the skipped layer received
    assert torch.equal(seen2[1], seen[1])  # both are layer 0's output of the same input: the same computation
    assert torch.equal(seen2[0], seen[0])
    assert not _changed(model, before) and adapter.n_layers(model, "encoder") == 3


def test_skip_a_block_keeps_the_rest_of_the_layer():
    model = build_tiny("whisper")
    adapter = adapter_for(model)
    with ablated(model, adapter, Target("decoder", 0, "cross_attn"), "skip") as damaged:
        keys = [t.key for t in ablation_targets(damaged, adapter, modules=True)]
    assert "decoder.0.cross_attn" not in keys and "decoder.0.self_attn" in keys and "decoder.0.ffn" in keys


def test_bad_method_and_config():
    model = build_tiny("whisper")
    with pytest.raises(ConfigError, match="unknown ablation method"):
        with ablated(model, adapter_for(model), Target("encoder", 0), "zero"):
            pass
    with pytest.raises(ConfigError, match="unknown ablation method 'zero'"):
        AblationConfig(methods=("skip", "zero"))
    with pytest.raises(ConfigError, match="seeds"):
        AblationConfig(seeds=0)


def test_plan_runs_deterministic_methods_once():
    ts = [Target("encoder", 0), Target("decoder", 0)]
    pts = plan(ts, AblationConfig(seeds=3))
    assert len(pts) == 2 * (2 * 3 + 1)
    assert all(s == 0 for s, _, m in pts if m == "skip")
    stored = plan(ts, AblationConfig(seeds=3), stored_source=True)
    assert all(s == 0 for s, _, m in stored if m in ("skip", "reinit"))


def _output_score(model, changed):
    """A cheap deterministic score: how far the encoder's output moved from a fixed reference (Whisper)."""
    torch.manual_seed(0)
    x = torch.randn(1, 80, 3000)
    with torch.no_grad():
        return float(model.get_encoder()(input_features=x).last_hidden_state.pow(2).mean())


class Counting:
    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def __call__(self, model, changed):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return _output_score(model, changed)


def test_run_resumes_without_recomputing(tmp_path):
    model = build_tiny("whisper")
    cfg = AblationConfig(seeds=2, stacks=("encoder",))
    n_points = 2 * (2 * 2 + 1)
    first = Counting(fail_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(model, [Metric("score", first, relative=True, threshold=0.1)], tmp_path, cfg, progress=False)
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == 4  # dense + 3 points, each written as it finished
    second = Counting()
    summary = run_ablation(model, [Metric("score", second, relative=True, threshold=0.1)], tmp_path, cfg,
                           progress=False)
    assert second.calls == 1 + n_points - 4  # nothing finished is recomputed
    third = Counting()
    again = run_ablation(model, [Metric("score", third, relative=True, threshold=0.1)], tmp_path, cfg, progress=False)
    assert third.calls == 0 and again == summary
    recs = [json.loads(l) for l in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len({(r["target"], r["method"], r["seed"]) for r in recs}) == len(recs) == 1 + n_points
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    # other settings in the same folder are refused
    with pytest.raises(ConfigError, match="other settings"):
        run_ablation(model, [Metric("score", Counting(), relative=True, threshold=0.1)], tmp_path,
                     AblationConfig(seeds=3, stacks=("encoder",)), progress=False)


def test_metric_on_fewer_seeds(tmp_path):
    model = build_tiny("whisper")
    cheap, costly = Counting(), Counting()
    run_ablation(model, [Metric("a", cheap, relative=True, threshold=0.1),
                         Metric("b", costly, relative=False, threshold=0.1, seeds=1)],
                 tmp_path, AblationConfig(seeds=2, methods=("rerandom",), stacks=("encoder",)), progress=False)
    assert cheap.calls == 1 + 2 * 2 and costly.calls == 1 + 2


def _rec(target, method, seed, metric, value):
    return {"target": target, "method": method, "seed": seed, "metric": metric, "value": value}


def test_summarize_deltas_classes_stability_and_agreement():
    targets = ["encoder.0", "encoder.1", "encoder.2", "decoder.0"]
    loss = {"encoder.0": 1.05, "encoder.1": 3.0, "encoder.2": 1.5, "decoder.0": 1.02}  # dense 1.0
    recs = [_rec("dense", "dense", 0, "proxy", 1.0), _rec("dense", "dense", 0, "wer", 0.10)]
    for t in targets:
        for seed in (0, 1):
            recs.append(_rec(t, "rerandom", seed, "proxy", loss[t] + 0.001 * seed))
        recs.append(_rec(t, "rerandom", 0, "wer", 0.10 + (loss[t] - 1.0) / 10))
    metrics = [Metric("proxy", None, relative=True, threshold=0.10), Metric("wer", None, relative=False, threshold=0.01, seeds=1)]
    s = summarize(recs, metrics, targets, ["rerandom"])
    assert s["table"]["encoder.1"]["rerandom"]["proxy"]["delta"] == pytest.approx(2.0005)
    assert s["table"]["encoder.0"]["rerandom"]["wer"]["delta"] == pytest.approx(0.005)
    assert s["classes"]["proxy"]["rerandom"] == {"encoder.0": "ambient", "encoder.1": "critical",
                                                 "encoder.2": "critical", "decoder.0": "ambient"}
    assert s["ambient_counts"]["proxy"]["rerandom"] == {"encoder": 1, "decoder": 1}
    st = s["stability"]["proxy"]["rerandom"]
    assert st["mean_spearman"] == pytest.approx(1.0) and st["class_agreement"] == 1.0
    assert st["pairs"][0]["seeds"] == [0, 1] and st["pairs"][0]["n"] == 4
    (ag,) = s["agreement"]
    assert ag["metrics"] == ["proxy", "wer"] and ag["spearman"] == pytest.approx(1.0) and ag["n"] == 4
    assert ag["class_agreement"] == 1.0
    # a reversed seed flips the stability
    flipped = [dict(r, value=2 * 1.0 + 2 - r["value"]) if r["seed"] == 1 else r for r in recs]
    assert summarize(flipped, metrics, targets, ["rerandom"])["stability"]["proxy"]["rerandom"]["mean_spearman"] \
        == pytest.approx(-1.0)
