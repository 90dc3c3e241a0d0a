"""The pruning commands run on any family: a CTC folder goes through ``prune`` (calibration, reconstruction,
distillation recovery), ``sparsify`` (Wanda, compressed folder) and ``lowrank`` (activation-aware, recovery,
resume) and comes out smaller, loadable and evaluable."""

from __future__ import annotations

import json

import torch

from speechprune.models.ctc import load_ctc, save_ctc
from speechprune.prune.lowrank_recipe import parse_lowrank_recipe
from speechprune.prune.lowrank_run import run_lowrank
from speechprune.prune.run_unstructured import run_sparsify
from speechprune.prune.runner import final_model_dir
from speechprune.prune.sparse_recipe import parse_sparsify_recipe
from tiny_models import tiny_ctc


def _ctc_folder(tmp_path, encoder="conformer", norm="group"):
    return save_ctc(tiny_ctc(encoder, norm), tmp_path / "dense")


def _recovery(clips, **kw):
    return {"data": [str(clips)], "steps": 3, "batch_size": 2, "lr": 1e-3, "encoder_weight": 1.0, **kw}


def _same_outputs(a, b):
    x, lengths = torch.randn(2, 16, 80), torch.tensor([80, 57])
    with torch.no_grad():
        return torch.equal(a(x, lengths).log_probs, b(x, lengths).log_probs)


def test_prune_command_prunes_recovers_and_saves_a_ctc_model(clips, tmp_path):
    from cli_helpers import cli

    dense = _ctc_folder(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "criterion": "activation", "reconstruct": True,
        "calibration": {"data": str(clips), "utterances": 4, "batch_size": 2},
        "targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5},
                    {"stack": "encoder", "kind": "conv", "sparsity": 0.25}],
        "recovery": _recovery(clips, hidden_weight=1.0)}))
    r = cli("prune", str(dense), "--recipe", str(recipe), "--out", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert record["family"] == "ctc" and record["steps"][0]["recovery"]["steps"] == 3
    assert record["steps"][0]["flops_encoder"] < record["dense"]["flops_encoder"]
    pruned = load_ctc(final_model_dir(tmp_path / "p"))
    assert pruned.layers[0].ffn.fc1.out_features == 24 and pruned.layers[0].conv.value.out_features == 24
    r = cli("eval", str(final_model_dir(tmp_path / "p")), str(clips), "--no-ood", "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr


def test_sparsify_writes_a_ctc_model_and_its_compressed_twin(clips, tmp_path):
    dense = _ctc_folder(tmp_path, "whisper", "batch")
    recipe = parse_sparsify_recipe({"criterion": "wanda", "sparsity": 0.5,
                                    "calibration": {"data": str(clips), "utterances": 4, "batch_size": 2}})
    record = run_sparsify(str(dense), recipe, tmp_path / "s", progress=False)
    assert record["family"] == "ctc" and abs(record["sparsity"] - 0.5) < 0.01
    model, sparse = load_ctc(tmp_path / "s" / "model"), load_ctc(tmp_path / "s" / "sparse")
    assert _same_outputs(model, sparse)
    assert not _same_outputs(model, load_ctc(dense))


def test_lowrank_factorizes_recovers_and_resumes_a_ctc_model(clips, tmp_path, monkeypatch):
    dense = _ctc_folder(tmp_path, "conformer", "batch")
    recipe = parse_lowrank_recipe({
        "method": "activation", "target": {"params": 0.6}, "sites": {"components": ["ffn"], "stacks": ["encoder"]},
        "calibration": {"data": str(clips), "utterances": 4, "batch_size": 2}, "schedule": {"steps": 2},
        "recovery": _recovery(clips)})
    record = run_lowrank(str(dense), recipe, tmp_path / "l", progress=False)
    assert [s["step"] for s in record["steps"]] == [1, 2] and record["steps"][-1]["ranks"]
    assert record["steps"][-1]["params"] < record["dense"]["params"]
    assert record["steps"][-1]["flops_encoder"] < record["dense"]["flops_encoder"]
    from speechprune.models.lowrank import lowrank_ranks

    assert lowrank_ranks(load_ctc(final_model_dir(tmp_path / "l"))) == record["steps"][-1]["ranks"]

    import speechprune.prune.lowrank_run as run

    monkeypatch.setattr(run, "factorize", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert run_lowrank(str(dense), recipe, tmp_path / "l", progress=False)["steps"] == record["steps"]
