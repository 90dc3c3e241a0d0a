"""The pruning commands run on a Hugging Face ``Wav2Vec2ForCTC`` folder through its family seam: ``prune``
(calibration, distillation recovery; and without either), ``sparsify`` (compressed twin) and ``lowrank``, each
coming out smaller, loadable and evaluable."""

from __future__ import annotations

import json

import torch

from speechprune.models.lowrank import lowrank_ranks
from speechprune.models.wav2vec2.family import FAMILY
from speechprune.prune.lowrank_recipe import parse_lowrank_recipe
from speechprune.prune.lowrank_run import run_lowrank
from speechprune.prune.recipe import parse_recipe
from speechprune.prune.run import run_prune
from speechprune.prune.run_unstructured import run_sparsify
from speechprune.prune.runner import final_model_dir
from speechprune.prune.sparse_recipe import parse_sparsify_recipe
from tiny_models import tiny_wav2vec2_folder


def _recovery(clips, **kw):
    return {"data": [str(clips)], "steps": 3, "batch_size": 2, "lr": 1e-3, "encoder_weight": 1.0, **kw}


def _logits(model):
    x = torch.randn(2, 6000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x).logits


def test_prune_command_prunes_recovers_saves_and_evaluates_a_wav2vec2_model(clips, tmp_path):
    from cli_helpers import cli

    dense = tiny_wav2vec2_folder(tmp_path / "dense")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "criterion": "taylor",
        "calibration": {"data": str(clips), "utterances": 4, "batch_size": 2},
        "targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5},
                    {"stack": "encoder", "kind": "self_attn", "sparsity": 0.5}],
        "recovery": _recovery(clips, hidden_weight=1.0)}))
    r = cli("prune", str(dense), "--recipe", str(recipe), "--out", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr
    record = json.loads((tmp_path / "p" / "prune.json").read_text())
    step = record["steps"][0]
    assert record["family"] == "wav2vec2" and step["recovery"]["steps"] == 3
    assert step["flops_encoder"] < record["dense"]["flops_encoder"] and step["params"] < record["dense"]["params"]
    pruned = FAMILY.load(final_model_dir(tmp_path / "p"))
    layer = pruned.wav2vec2.encoder.layers[0]
    assert layer.feed_forward.intermediate_dense.out_features == 32 and layer.attention.num_heads == 2
    r = cli("eval", str(final_model_dir(tmp_path / "p")), str(clips), "--no-ood", "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n_scored"] == 5


def test_prune_without_calibration_or_recovery_runs_its_steps_and_reloads_exactly(tmp_path):
    dense = tiny_wav2vec2_folder(tmp_path / "dense", num_hidden_layers=3)
    recipe = parse_recipe({"criterion": "magnitude", "schedule": {"steps": 2},
                           "targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5}]})
    record = run_prune(str(dense), recipe, tmp_path / "p", progress=False)
    assert [s["step"] for s in record["steps"]] == [1, 2] and "recovery" not in record["steps"][0]
    final = FAMILY.load(final_model_dir(tmp_path / "p"))
    assert [l.feed_forward.intermediate_dense.out_features for l in final.wav2vec2.encoder.layers] == [32] * 3
    again = FAMILY.load(final_model_dir(tmp_path / "p"))
    assert torch.equal(_logits(final), _logits(again))
    assert not torch.equal(_logits(final), _logits(FAMILY.load(dense)))


def test_sparsify_writes_a_wav2vec2_model_and_its_compressed_twin(clips, tmp_path):
    dense = tiny_wav2vec2_folder(tmp_path / "dense")
    recipe = parse_sparsify_recipe({"criterion": "wanda", "sparsity": 0.5,
                                    "calibration": {"data": str(clips), "utterances": 4, "batch_size": 2}})
    record = run_sparsify(str(dense), recipe, tmp_path / "s", progress=False)
    assert record["family"] == "wav2vec2" and abs(record["sparsity"] - 0.5) < 0.01
    model, sparse = FAMILY.load(tmp_path / "s" / "model"), FAMILY.load(tmp_path / "s" / "sparse")
    assert torch.equal(_logits(model), _logits(sparse))
    assert not torch.equal(_logits(model), _logits(FAMILY.load(dense)))
    assert (tmp_path / "s" / "sparse" / "vocab.json").is_file()  # the tokenizer travels: the folder decodes
    FAMILY.backend(tmp_path / "s" / "sparse")


def test_lowrank_factorizes_and_recovers_a_wav2vec2_model(clips, tmp_path):
    dense = tiny_wav2vec2_folder(tmp_path / "dense")
    recipe = parse_lowrank_recipe({
        "method": "activation", "target": {"params": 0.8}, "sites": {"components": ["ffn"], "stacks": ["encoder"]},
        "calibration": {"data": str(clips), "utterances": 4, "batch_size": 2}, "schedule": {"steps": 1},
        "recovery": _recovery(clips)})
    record = run_lowrank(str(dense), recipe, tmp_path / "l", progress=False)
    last = record["steps"][-1]
    assert last["ranks"] and last["params"] < record["dense"]["params"]
    assert last["flops_encoder"] < record["dense"]["flops_encoder"]
    assert lowrank_ranks(FAMILY.load(final_model_dir(tmp_path / "l"))) == last["ranks"]
