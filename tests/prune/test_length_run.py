"""One recipe prunes and adapts lengths in one recovery (``run_prune`` with ``recovery.length_adaptive``): the step
folder records the buckets, reloads length-adaptive and decodes at each batch's bucket; the shipped adaptation-only
recipe prunes nothing."""

from __future__ import annotations

import json

import pytest

from speechprune.data.manifest import read_manifest
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.models.whisper.family import FAMILY
from speechprune.models.whisper.lengths import LENGTH_KEY
from speechprune.prune.recipe import load_recipe, parse_recipe
from speechprune.prune.run import run_prune
from speechprune.prune.runner import final_model_dir

BUCKETS = [50, 100, 1500]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from models.conftest import write_tiny_whisper_folder
    from transformers import WhisperFeatureExtractor

    _, folder = write_tiny_whisper_folder(tmp_path_factory.mktemp("tinyw"))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def test_a_pruning_recipe_whose_recovery_adapts_lengths_saves_a_length_adaptive_step(tiny_folder, clips, tmp_path,
                                                                                    monkeypatch):
    label = TorchWhisper.labelled_batches

    def short_labels(self, utterances, batch_size, **kw):  # the tiny model has 64 positions, not 224 new tokens
        return label(self, utterances, batch_size, DecodeOptions(max_new_tokens=5), **kw)

    monkeypatch.setattr(TorchWhisper, "labelled_batches", short_labels)
    recipe = parse_recipe({
        "targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5}],
        "recovery": {"data": [str(clips)], "steps": 3, "batch_size": 2, "lr": 1e-3, "encoder_weight": 1.0,
                     "length_adaptive": {"buckets": BUCKETS}}})
    record = run_prune(str(tiny_folder), recipe, tmp_path / "p", progress=False)
    step = record["steps"][0]
    assert step["recovery"]["steps"] == 3 and record["recipe"]["recovery"]["length_adaptive"]["buckets"] == BUCKETS
    assert record["dense"]["flops_encoder"] > step["flops_encoder"] and "length_buckets" not in record["dense"]
    folder = final_model_dir(tmp_path / "p")
    assert json.loads((folder / "config.json").read_text())[LENGTH_KEY] == BUCKETS

    be = TorchWhisper.from_folder(folder)
    assert be.length_buckets == tuple(BUCKETS) and be.model.model.encoder.layers[0].fc1.out_features == 64
    shape = FAMILY.shape_record(be.model)  # pruned FLOPs at each bucket
    flops = shape["flops_encoder_by_bucket"]
    assert shape["length_buckets"] == BUCKETS and flops["1500"] == shape["flops_encoder"] == step["flops_encoder"]
    assert flops["50"] < flops["100"] < flops["1500"] / 10
    from speechprune.data.features import FeatureFrontend
    from speechprune.evaluate.runner import decode_batch

    records = decode_batch(be, FeatureFrontend(80), read_manifest(clips)[:2], DecodeOptions(max_new_tokens=8))
    assert be.last_positions == 50 and all("hypothesis" in r for r in records)  # 0.5 and 0.7 s: 51 and 71 frames


def test_the_shipped_adaptation_recipe_prunes_nothing_and_adapts_to_its_buckets():
    recipe = load_recipe("whisper-tiny.en-length")
    assert [t.remove_layers for t in recipe.targets] == [[]] and not recipe.needs_calibration
    adaptive = recipe.recovery.length_adaptive
    assert adaptive is not None and adaptive.buckets[-1] == 1500 and recipe.recovery.steps > 0
