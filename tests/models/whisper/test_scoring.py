"""Whisper's reference scorer on a tiny random model saved as a folder: the cached dense encoder output and the
cached encoder layer inputs give the scores a full run gives, and the cached path is the one taken."""

from __future__ import annotations

import pytest

from speechprune.data.manifest import read_manifest
from speechprune.models.adapters import adapter_for
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.models.whisper.family import FAMILY
from speechprune.models.whisper.scoring import ALL


@pytest.fixture(scope="module")
def tiny_backend(tmp_path_factory):
    from models.conftest import write_tiny_whisper_folder
    from transformers import WhisperFeatureExtractor

    _, folder = write_tiny_whisper_folder(tmp_path_factory.mktemp("tinyw"))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return TorchWhisper.from_folder(folder)


def test_cached_encoder_states_score_as_a_full_run(tiny_backend, clips):
    import copy

    be = tiny_backend
    scorer = FAMILY.reference_scorer(be, read_manifest(clips), batch_size=2, max_new_tokens=4)
    dense = scorer.proxy(be.model, {})
    assert dense == scorer.proxy(be.model, ALL) == scorer.proxy(be.model, {"encoder": 1})
    assert sorted(scorer.layer_inputs[0]) == [0, 1]
    cut = copy.deepcopy(be.model)
    adapter_for(cut).remove_layers(cut, "encoder", [1])
    assert scorer.proxy(cut, {"encoder": 1}) == scorer.proxy(cut, ALL) != dense
    records = scorer.records(be.model, {})
    assert [r["id"] for r in records] == [f"c{i}" for i in range(5)]
    assert records == scorer.records(be.model, ALL)
    scorer.layer_inputs[0][1] = scorer.layer_inputs[0][1] * 0  # the cached path is the one taken
    assert scorer.proxy(be.model, {"encoder": 1}) != dense
