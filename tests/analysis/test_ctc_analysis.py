"""The analyses open any family through its seam: layer ablation, a sensitivity sweep and a checked plan on tiny
random CTC models (a Conformer with BatchNorm and a Whisper-style encoder) saved as folders."""

from __future__ import annotations

import json

import pytest
import torch

from speechprune.analysis import sensitivity as S
from speechprune.analysis.ablation import RECORDS, AblationConfig, Target, ablated, config_targets, init_like
from speechprune.analysis.jobs import ablation_job
from speechprune.analysis.scoring import Scorer
from speechprune.data.manifest import read_manifest
from speechprune.errors import ConfigError
from speechprune.models.adapters import adapter_for
from speechprune.models.ctc.family import FAMILY
from tiny_models import randomize, tiny_ctc

ENCODERS = [("conformer", "batch"), ("whisper", "batch")]


@pytest.fixture(scope="module", params=ENCODERS, ids=[e for e, _ in ENCODERS])
def ctc_folder(request, tmp_path_factory):
    encoder, norm = request.param
    return FAMILY.save(tiny_ctc(encoder, norm, seed=1), None, tmp_path_factory.mktemp(encoder) / "dense")


def _records(out):
    return [json.loads(line) for line in (out / RECORDS).read_text().splitlines()]


def test_init_like_is_the_ctc_familys_initialization():
    model = tiny_ctc("conformer", "group", seed=3)
    fresh = init_like(model, 3)
    assert type(fresh) is type(model) and not fresh.training
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters()))
    g = next(g for g in adapter_for(model).unit_groups(model) if g.kind == "conv")
    adapter_for(model).prune_units(model, g, [0, 2, 5])
    assert [p.shape for p in init_like(model, 0).parameters()] == [p.shape for p in model.parameters()]


def test_ablation_scores_every_layer_of_a_ctc_model(ctc_folder, clips, tmp_path):
    out = tmp_path / "abl"
    summary = ablation_job(str(ctc_folder), str(clips), out, split="all", seeds=1, metric="both", batch_size=2,
                           progress=False)
    records = _records(out)
    assert len(records) == 2 + 3 * 3 * 2  # the dense model and 3 layers x 3 methods, each by proxy and WER
    assert summary["targets"] == ["encoder.0", "encoder.1", "encoder.2"]
    assert {t: set(row) for t, row in summary["table"].items()} == {
        f"encoder.{i}": {"reinit", "rerandom", "skip"} for i in range(3)}
    assert (out / "ablation_proxy.png").stat().st_size > 1000 and (out / "ablation_wer.png").stat().st_size > 1000
    # the dense proxy is the baseline recomputed; a skipped layer changes it; the model is restored after each point
    backend = FAMILY.backend(ctc_folder)
    scorer = Scorer(backend, read_manifest(clips), batch_size=2)
    dense = scorer.proxy(backend.model, {})
    assert summary["dense"]["proxy"] == dense
    skipped = {r["target"]: r["value"] for r in records if r["method"] == "skip" and r["metric"] == "proxy"}
    assert all(v != dense for v in skipped.values())
    with ablated(backend.model, adapter_for(backend.model), Target("encoder", 1), "skip") as cut:
        assert scorer.proxy(cut, {"encoder": 1}) == skipped["encoder.1"]
    assert summary["dense"]["wer"] == scorer.wer(backend.model, {})
    # a rerun resumes: nothing is recomputed
    ablation_job(str(ctc_folder), str(clips), out, split="all", seeds=1, metric="both", batch_size=2, progress=False)
    assert _records(out) == records


@pytest.mark.parametrize("encoder", ["whisper", "conformer"])
def test_ctc_block_targets_damage_exactly_what_skipping_them_removes(encoder):
    """--modules on a CTC model: every block the adapter can remove is a target, and reinit and rerandom change
    exactly the parameters that skipping the block removes (its pre-norm, the convolution module's own norms)."""
    model = randomize(tiny_ctc(encoder, "batch", seed=1))  # no weight at its initial value
    adapter = adapter_for(model)
    targets = config_targets(model, adapter, AblationConfig(modules=True))
    kinds = adapter.module_kinds(model, "encoder")
    assert [t.key for t in targets] == [f"encoder.{i}.{k}" for i in range(3) for k in kinds]
    fresh = init_like(model, 5)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for t in targets:
        with ablated(model, adapter, t, "skip") as cut:
            removed = set(before) - {k for k, _ in cut.named_parameters()}
        assert removed, t.key
        for method in ("reinit", "rerandom"):
            with ablated(model, adapter, t, method, seed=0, source=fresh):
                changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
            assert changed == removed, (t.key, method)
        assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


def test_ablation_job_ablates_ctc_blocks(clips, tmp_path):
    folder = FAMILY.save(tiny_ctc("conformer", "batch", seed=1, n_layers=2), None, tmp_path / "dense")
    summary = ablation_job(str(folder), str(clips), tmp_path / "m", split="all", modules=True, methods=("skip",),
                           seeds=1, metric="proxy", limit=1, batch_size=1, progress=False)
    kinds = ("ffn_macaron", "self_attn", "conv", "ffn")
    assert summary["targets"] == [f"encoder.{i}.{k}" for i in range(2) for k in kinds]
    assert "reinit_source" not in summary
    skipped = [r for r in _records(tmp_path / "m") if r["method"] == "skip"]
    assert len(skipped) == 8 and all(r["value"] != summary["dense"]["proxy"] for r in skipped)


def test_reinit_restores_the_initial_weights_a_ctc_folder_keeps(clips, tmp_path):
    from speechprune.models.ctc.checkpoint import save_ctc

    model, init = tiny_ctc("whisper", "batch", seed=1), tiny_ctc("whisper", "batch", seed=7)
    kept = save_ctc(model, tmp_path / "kept", init_state=init.state_dict())
    kw = dict(split="all", methods=("reinit",), metric="proxy", limit=1, batch_size=1, progress=False)
    summary = ablation_job(str(kept), str(clips), tmp_path / "a", seeds=2, **kw)
    assert summary["reinit_source"] == "kept initial weights"
    records = [r for r in _records(tmp_path / "a") if r["method"] == "reinit"]
    assert sorted((r["target"], r["seed"]) for r in records) == [(f"encoder.{i}", 0) for i in range(3)]
    # the layer's parameters are its own W(0): the value is the proxy of the model with them copied in
    backend = FAMILY.backend(kept)
    with torch.no_grad():
        for name, p in backend.model.named_parameters():
            if name.startswith("layers.1."):
                p.copy_(init.state_dict()[name])
    expected = Scorer(backend, read_manifest(clips)[:1], batch_size=1).proxy(backend.model, {"encoder": 1})
    assert next(r["value"] for r in records if r["target"] == "encoder.1") == pytest.approx(expected, rel=1e-6)
    plain = FAMILY.save(model, None, tmp_path / "plain")
    summary = ablation_job(str(plain), str(clips), tmp_path / "b", seeds=1, **kw)
    assert summary["reinit_source"] == "family initialization, seed 0"
    assert summary["table"]["encoder.1"]["reinit"]["proxy"]["delta"] != pytest.approx(
        (expected - summary["dense"]["proxy"]) / summary["dense"]["proxy"])


def test_initial_weights_are_read_where_a_ctc_folder_keeps_them(tmp_path):
    from speechprune.errors import ModelError
    from speechprune.models.ctc.checkpoint import save_ctc

    model, init = tiny_ctc("whisper", "batch", seed=1), tiny_ctc("whisper", "batch", seed=7)
    kept = save_ctc(model, tmp_path / "kept", init_state=init.state_dict())
    again = FAMILY.initial_weights(kept)
    assert all(torch.equal(v, init.state_dict()[k]) for k, v in again.state_dict().items())
    assert FAMILY.initial_weights(FAMILY.save(model, None, tmp_path / "plain")) is None
    # saving from a folder that keeps them keeps them
    assert FAMILY.initial_weights(FAMILY.save(model, kept, tmp_path / "copy")) is not None
    wrong = save_ctc(model, tmp_path / "wrong", init_state=tiny_ctc("whisper", "batch", n_layers=2).state_dict())
    with pytest.raises(ModelError, match="init.safetensors.*weights do not fit"):
        FAMILY.initial_weights(wrong)


def test_sensitivity_sweep_of_a_ctc_model(ctc_folder, clips, tmp_path):
    model = FAMILY.load(ctc_folder)
    methods_of = S.sweepable(model)
    assert methods_of["encoder.ffn"] == ("unstructured", "structured") and methods_of["encoder.norm"] == ()
    if model.config.encoder == "conformer":
        assert methods_of["encoder.ffn_macaron"] == ("structured",)
        assert methods_of["encoder.conv"] == ("unstructured", "structured")
    else:
        assert methods_of["encoder.conv"] == ("unstructured",)  # the stem: no units
    with pytest.raises(ConfigError, match="no requested method applies"):
        S.check_request(list(methods_of), ["encoder.embed"], [0.5], ["structured"], methods_of)
    kw = dict(split="all", components=["encoder.ffn", "encoder.self_attn"], levels=[0.5],
              methods=["structured", "unstructured"], limit=None, max_new_tokens=8, batch_size=2, progress=False)
    out = tmp_path / "sweep"
    summary = S.run_sweep(str(ctc_folder), str(clips), out, **kw)
    points = S.read_points(out)
    assert sorted(points) == sorted(p.key for p in S.sweep_points(kw["components"], [0.5], kw["methods"]))
    dense = points[S.DENSE_KEY]
    assert dense["n_utterances"] == 5 and dense["n_failed"] == 0
    assert {k for k in S.COST_KEYS if k in dense} == {"params", "nonzero_params", "flops_encoder"}
    assert dense["params"] == sum(p.numel() for p in model.parameters())
    for comp in kw["components"]:
        st, un = points[f"{comp}|structured|0.5"], points[f"{comp}|unstructured|0.5"]
        assert st["params"] < dense["params"] and st["flops_encoder"] < dense["flops_encoder"]
        assert un["params"] == dense["params"] and un["flops_encoder"] == dense["flops_encoder"]
        assert un["nonzero_params"] < dense["nonzero_params"]
    assert set(summary["curves"]) == {"structured", "unstructured"}
    # a rerun finds everything done; a lost point is redone alone
    lines = (out / S.POINTS).read_text().splitlines()
    S.run_sweep(str(ctc_folder), str(clips), out, **kw)
    assert (out / S.POINTS).read_text().splitlines() == lines
    (out / S.POINTS).write_text("\n".join(lines[:-1]) + "\n")
    S.run_sweep(str(ctc_folder), str(clips), out, **kw)
    now = (out / S.POINTS).read_text().splitlines()
    assert now[:-1] == lines[:-1] and json.loads(now[-1])["key"] == json.loads(lines[-1])["key"]


def test_activation_criterion_labels_calibration_with_the_dense_ctc_model(ctc_folder, clips, tmp_path):
    out = tmp_path / "sweep"
    S.run_sweep(str(ctc_folder), str(clips), out, split="all", components=["encoder.ffn"], levels=[0.5],
                methods=["structured"], criterion="activation", calibration=4, limit=None, batch_size=2,
                progress=False)
    points = S.read_points(out)
    assert points["encoder.ffn|structured|0.5"]["criterion"] == "activation"
    assert points["encoder.ffn|structured|0.5"]["params"] < points[S.DENSE_KEY]["params"]


def test_plan_check_on_a_ctc_sweep(clips, tmp_path):
    """A plan that lands exactly on a swept point checks to that point's WER; a CTC model has no decoder FLOPs."""
    from speechprune.analysis.plan import write_plan

    folder = FAMILY.save(tiny_ctc("conformer", "batch", seed=1), None, tmp_path / "dense")
    out = tmp_path / "sweep"
    S.run_sweep(str(folder), str(clips), out, split="all", components=["encoder.conv"], levels=[0.25, 0.5],
                methods=["structured"], limit=None, batch_size=2, progress=False)
    points = S.read_points(out)
    half, dense = points["encoder.conv|structured|0.5"], points[S.DENSE_KEY]
    removed = dense["flops_encoder"] - half["flops_encoder"]
    rec = write_plan(out, f"encoder-flops:{removed}", tmp_path / "p.yaml", check=True)
    for name in ("plan", "uniform"):
        assert rec[name]["realized"]["flops_encoder"] == half["flops_encoder"]
        assert set(rec[name]["realized"]) == {"params", "flops_encoder"}
        assert rec[name]["check"]["wer"] == half["wer"] and rec[name]["check"]["cer"] == half["cer"]
        assert rec[name]["check"]["n_utterances"] == 5
    with pytest.raises(ConfigError, match="no flops_decoder_per_token"):
        write_plan(out, "decoder-flops:0.1", tmp_path / "d.yaml")


def test_analyze_ablation_command_on_a_ctc_folder(clips, tmp_path):
    from cli_helpers import cli

    folder = FAMILY.save(tiny_ctc("whisper", "batch", seed=1), None, tmp_path / "dense")
    r = cli("analyze", "ablation", str(folder), str(clips), "--out", str(tmp_path / "abl"), "--split", "all",
            "--methods", "skip,rerandom", "--seeds", "1", "--metric", "both", "--batch-size", "2")
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "abl" / "summary.json").read_text())
    assert summary["targets"] == ["encoder.0", "encoder.1", "encoder.2"] and set(summary["metrics"]) == {"proxy", "wer"}
    assert len(_records(tmp_path / "abl")) == 2 + 3 * 2 * 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(clips.read_text().replace('"tone 2"', '"tone 日本"').replace('"audio": "c', f'"audio": "{clips.parent}/c'))
    r = cli("analyze", "ablation", str(folder), str(bad), "--out", str(tmp_path / "bad"), "--split", "all")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "日本" in lines[0] and "vocabulary" in lines[0]
