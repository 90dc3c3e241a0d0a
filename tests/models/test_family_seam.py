"""The seam methods every family implements for saving beside other weights, fresh initialization and kept
initial weights (``save_config``, ``fresh``, ``initial_weights``), on tiny random models of all four families."""

from __future__ import annotations

import pytest
import torch
from tiny_models import build_tiny, pruned_tiny_whisper, tiny_ctc, tiny_wav2vec2_folder

from speechprune.models.family import family_for

FAMILIES = ["whisper", "pruned_whisper", "wav2vec2", "ctc_whisper", "ctc_conformer", "lm"]


def _model(name: str, tmp_path):
    if name == "whisper":
        return build_tiny("whisper")
    if name == "pruned_whisper":
        return pruned_tiny_whisper()
    if name == "wav2vec2":
        return build_tiny("wav2vec2")
    if name.startswith("ctc_"):
        return tiny_ctc(name[4:], "batch")
    from models.lm.tiny_lm import tiny_lm

    return tiny_lm("chars")[0]


@pytest.mark.parametrize("name", FAMILIES)
def test_fresh_is_the_same_architecture_initialized_by_the_seed(name, tmp_path):
    model = _model(name, tmp_path)
    family = family_for(model)
    a, b, c = family.fresh(model, 3), family.fresh(model, 3), family.fresh(model, 4)
    assert type(a) is type(model) and not a.training
    shapes = {k: v.shape for k, v in model.named_parameters()}
    assert {k: v.shape for k, v in a.named_parameters()} == shapes
    assert all(torch.equal(v, dict(b.named_parameters())[k]) for k, v in a.named_parameters())
    weights = [k for k, v in a.named_parameters() if v.dim() == 2]
    assert any(not torch.equal(dict(a.named_parameters())[k], dict(c.named_parameters())[k]) for k in weights)
    assert any(not torch.equal(dict(a.named_parameters())[k], dict(model.named_parameters())[k]) for k in weights)


@pytest.mark.parametrize("name", ["ctc_whisper", "ctc_conformer", "lm"])
def test_save_config_writes_what_save_writes_but_the_weights(name, tmp_path):
    model = _model(name, tmp_path)
    family = family_for(model)
    saved = family.save(model, None, tmp_path / "saved")
    (tmp_path / "cfg").mkdir()
    family.save_config(model, None, tmp_path / "cfg")
    config = {f.name: f.read_bytes() for f in saved.iterdir() if f.suffix != ".safetensors"}
    assert config and {f.name: f.read_bytes() for f in (tmp_path / "cfg").iterdir()} == config


def test_save_config_of_a_hugging_face_family_keeps_the_structure_and_the_processor(tmp_path):
    import json

    from speechprune.models.adapters import adapter_for
    from speechprune.models.checkpoint import load_pruned
    from speechprune.models.units import STRUCTURE_KEY
    from speechprune.models.wav2vec2.load import load_wav2vec2

    source = tiny_wav2vec2_folder(tmp_path / "w2v")
    model = load_wav2vec2(source)
    (tmp_path / "cfg").mkdir()
    family_for(model).save_config(model, source, tmp_path / "cfg")
    names = {f.name for f in (tmp_path / "cfg").iterdir()}
    assert {"config.json", "vocab.json", "preprocessor_config.json"} <= names
    assert not any(n.endswith(".safetensors") for n in names)
    assert json.loads((tmp_path / "cfg" / "config.json").read_text())[STRUCTURE_KEY]["family"] == "wav2vec2"
    whisper = pruned_tiny_whisper()
    (tmp_path / "w").mkdir()
    family_for(whisper).save_config(whisper, None, tmp_path / "w")
    assert {f.name for f in (tmp_path / "w").iterdir()} == {"config.json", "generation_config.json"}
    raw = json.loads((tmp_path / "w" / "config.json").read_text())
    assert raw[STRUCTURE_KEY] == json.loads(json.dumps(adapter_for(whisper).structure(whisper)))
    again, _ = load_pruned(_with_weights(whisper, tmp_path / "w"))  # the structure rebuilds the pruned model
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in whisper.state_dict().items()}


def _with_weights(model, folder):
    """``folder`` (config files only) with ``model``'s weights added: a folder the family loads."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items() if k != "proj_out.weight"},
              str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("name", ["whisper", "wav2vec2", "lm"])
def test_families_that_keep_no_initial_weights_say_none(name, tmp_path):
    model = _model(name, tmp_path)
    family = family_for(model)
    source = tiny_wav2vec2_folder(tmp_path / "src") if name == "wav2vec2" else None
    assert family.initial_weights(family.save(model, source, tmp_path / "m")) is None


def test_whisper_reference_batches_teacher_force_the_tokenized_references(tmp_path, clips):
    from models.conftest import write_tiny_whisper_folder
    from speechprune.data.manifest import read_manifest
    from speechprune.models.whisper.family import FAMILY

    model, folder = write_tiny_whisper_folder(tmp_path)
    labeller = FAMILY.labeller(model, folder)
    batches = labeller.reference_batches(read_manifest(clips), 2)
    assert [len(b["input_features"]) for b in batches] == [2, 2, 1]
    b = batches[0]
    # the labels after the prompt are the reference's tokens, then end of text; the inputs are them shifted by one
    want = labeller.tokenizer.encode(" tone 0", add_special_tokens=False) + [labeller.vocab.eot]
    assert [t for t in b["labels"][0].tolist() if t != -100] == want
    pos = [j for j, t in enumerate(b["labels"][0].tolist()) if t != -100]
    assert all(b["decoder_input_ids"][0, j + 1] == b["labels"][0, j] for j in pos[:-1])  # teacher forcing
    with torch.no_grad():
        assert torch.isfinite(model(**b).loss)
