"""The pruning commands run on a language model: an LM folder goes through ``prune`` (Taylor importance from text,
recovery by fine-tuning on text), ``sparsify`` and ``lowrank`` (incremental, with recovery between steps) through
the family seam, and comes out smaller, loadable and scoring its text; audio-only recovery options are refused."""

from __future__ import annotations

import json

import pytest
import torch

from models.lm.tiny_lm import tiny_lm
from speechprune.errors import ConfigError
from speechprune.models.lm import load_lm, save_lm
from speechprune.models.lm.batches import collate, encode_lines
from speechprune.models.lm.tokens import tokens_for
from speechprune.prune.lowrank_recipe import parse_lowrank_recipe
from speechprune.prune.lowrank_run import run_lowrank
from speechprune.prune.recipe import parse_recipe
from speechprune.prune.run import run_prune
from speechprune.prune.run_unstructured import run_sparsify
from speechprune.prune.runner import final_model_dir
from speechprune.prune.sparse_recipe import parse_sparsify_recipe

LINES = ["the cat sat on the mat", "seven of clubs", "press one for sales", "a quick brown fox",
         "please hold the line", "the number you have dialed", "goodbye", "your call is important to us"] * 3


@pytest.fixture
def lm_and_text(tmp_path):
    folder = save_lm(tiny_lm("chars")[0], tmp_path / "dense")
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": s}) + "\n" for s in LINES))
    return folder, text


def _loss(model, lines=LINES) -> float:
    seqs = encode_lines(tokens_for(model), lines, model.config.context)
    with torch.no_grad():
        return float(model(**collate(seqs, torch.arange(len(lines)).numpy(), 0)).loss)


def _recovery(text, **kw):
    return {"data": [str(text)], "steps": 4, "batch_size": 4, "lr": 3e-3, **kw}


def test_prune_removes_lm_tensors_by_taylor_from_text_and_recovers_on_text(lm_and_text, tmp_path):
    folder, text = lm_and_text
    recipe = parse_recipe({"criterion": "taylor", "calibration": {"data": [str(text)], "utterances": 8,
                                                                  "batch_size": 4},
                           "targets": [{"stack": "decoder", "kind": "ffn", "sparsity": 0.5},
                                       {"stack": "decoder", "kind": "self_attn", "sparsity": 0.25}],
                           "recovery": _recovery(text)})
    record = run_prune(str(folder), recipe, tmp_path / "p", progress=False)
    assert record["family"] == "lm" and record["steps"][0]["recovery"]["steps"] == 4
    assert record["steps"][0]["params"] < record["dense"]["params"]
    assert record["steps"][0]["flops_decoder_per_token"] < record["dense"]["flops_decoder_per_token"]
    pruned = load_lm(final_model_dir(tmp_path / "p"))
    assert all(b.ffn.fc1.out_features == 24 and b.attn.n_heads == 3 for b in pruned.layers)
    assert not any("mask" in k for k in pruned.state_dict())
    # the recovery trained on the text: the pruned model fits it better after recovery than before
    unrecovered = parse_recipe({**recipe.model_dump(mode="json"), "recovery": None})
    run_prune(str(folder), unrecovered, tmp_path / "q", progress=False)
    before = load_lm(final_model_dir(tmp_path / "q"))
    assert _loss(pruned) < _loss(before)


def test_sparsify_and_incremental_lowrank_run_on_an_lm(lm_and_text, tmp_path):
    folder, text = lm_and_text
    record = run_sparsify(str(folder), parse_sparsify_recipe({
        "criterion": "taylor", "sparsity": 0.5,
        "calibration": {"data": [str(text)], "utterances": 8, "batch_size": 4}}), tmp_path / "s", progress=False)
    assert record["family"] == "lm" and abs(record["sparsity"] - 0.5) < 0.01
    model, sparse = load_lm(tmp_path / "s" / "model"), load_lm(tmp_path / "s" / "sparse")
    assert _loss(model) == pytest.approx(_loss(sparse), rel=1e-5)
    record = run_lowrank(str(folder), parse_lowrank_recipe({
        "method": "svd", "target": {"params": 0.7}, "sites": {"components": ["ffn"]}, "schedule": {"steps": 2},
        "recovery": _recovery(text, steps=2)}), tmp_path / "l", progress=False)
    assert [s["step"] for s in record["steps"]] == [1, 2]
    assert record["steps"][1]["params"] < record["steps"][0]["params"] < record["dense"]["params"]
    assert torch.isfinite(torch.tensor(_loss(load_lm(final_model_dir(tmp_path / "l")))))


def test_audio_only_data_and_options_are_refused_for_an_lm_in_one_line(lm_and_text, tmp_path):
    folder, text = lm_and_text
    base = {"targets": [{"stack": "decoder", "kind": "ffn", "sparsity": 0.5}]}
    for recovery, problem in [(_recovery(text, pack_seconds=10), "pack_seconds act on audio"),
                              ({**_recovery(text), "data": ["synth:4"]}, "speech without text")]:
        with pytest.raises(ConfigError, match=problem):
            run_prune(str(folder), parse_recipe({**base, "recovery": recovery}), tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match="never test"):
        parse_recipe({**base, "recovery": {"data": ["english-text:test"]}})
