"""save_pruned / load_pruned on tiny random models: bit-identical round trips, stock-HF folders, strict loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechprune.errors import ConfigError, ModelError
from speechprune.models.adapters import adapter_for
from speechprune.models.checkpoint import load_pruned, save_pruned
from speechprune.models.whisper.load import load_whisper
from speechprune.models.whisper.shape import whisper_shape, whisper_shape_from_config

FEATS = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))


def _group(adapter, model, key):
    return next(g for g in adapter.unit_groups(model) if g.key == key)


@pytest.fixture
def processor(tiny_processor):
    return tiny_processor


@pytest.fixture
def whisper(tiny_whisper_d64):
    return tiny_whisper_d64


@torch.no_grad()
def _logits(model, ids=(257, 265, 40, 41)):
    return model(input_features=FEATS, decoder_input_ids=torch.tensor([list(ids)])).logits


def _heavy_surgery(model):
    a = adapter_for(model)
    a.prune_units(model, _group(a, model, "encoder.0.self_attn"), [1, 3])
    a.prune_units(model, _group(a, model, "decoder.1.ffn"), list(range(0, 128, 4)))
    a.remove_module(model, "encoder", 1, "ffn")
    a.remove_module(model, "decoder", 0, "cross_attn")
    return a


def test_pruned_whisper_round_trips_bit_identically(whisper, processor, tmp_path):
    _heavy_surgery(whisper)
    out = save_pruned(whisper, processor, tmp_path / "pruned")
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "processor_config.json"} <= names
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]  # no temporary folder left behind
    config = json.loads((out / "config.json").read_text())
    assert config["speechprune_structure"]["encoder"]["layers"] == [{"self_attn": 2, "ffn": 128},
                                                                    {"self_attn": 4, "ffn": None}]

    model, proc = load_pruned(out)
    assert model is not whisper and not model.training
    assert torch.equal(_logits(model), _logits(whisper))
    assert whisper_shape(model) == whisper_shape(whisper)
    assert whisper_shape_from_config(model.config) == whisper_shape(whisper)
    assert proc.tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 265
    assert model.generation_config.no_timestamps_token_id == 265
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert not any(p.is_meta for p in model.parameters())


def test_load_whisper_and_the_torch_backend_read_pruned_folders(whisper, processor, tmp_path):
    from speechprune.models.decoding import DecodeOptions
    from speechprune.models.registry import resolve_model
    from speechprune.models.whisper.backend import TorchWhisper

    whisper_params = sum(p.numel() for p in whisper.parameters())
    a = _heavy_surgery(whisper)
    a.remove_layers(whisper, "decoder", [0])
    out = save_pruned(whisper, processor, tmp_path / "pruned")
    model, _ = load_whisper(resolve_model(out))
    assert torch.equal(_logits(model), _logits(whisper))
    backend = TorchWhisper.from_folder(out)
    reference = TorchWhisper(whisper, processor.tokenizer, backend.vocab)
    options = DecodeOptions(beam_size=1, max_new_tokens=8)
    got = backend.decode(backend.encode(FEATS.numpy()), [None], [None], options).tokens
    assert got == reference.decode(reference.encode(FEATS.numpy()), [None], [None], options).tokens
    assert backend.params < whisper_params


def test_stock_compatible_folder_loads_with_plain_transformers(whisper, processor, tmp_path):
    from transformers import WhisperForConditionalGeneration, pipeline

    a = adapter_for(whisper)
    a.remove_layers(whisper, "encoder", [0])
    for i in range(2):
        a.prune_units(whisper, _group(a, whisper, f"decoder.{i}.ffn"), list(range(48)))
    assert a.stock_compatible(whisper)
    out = save_pruned(whisper, processor, tmp_path / "stock")
    config = json.loads((out / "config.json").read_text())
    assert (config["encoder_layers"], config["decoder_ffn_dim"], config["encoder_ffn_dim"]) == (1, 48, 128)

    plain = WhisperForConditionalGeneration.from_pretrained(out, local_files_only=True).eval()
    assert torch.equal(_logits(plain), _logits(whisper))
    asr = pipeline("automatic-speech-recognition", model=str(out), device="cpu")
    result = asr(np.zeros(16000, dtype=np.float32), generate_kwargs={"max_new_tokens": 4})
    assert isinstance(result["text"], str)


def test_wav2vec2_round_trips_without_a_processor(build, tmp_path):
    model = build("wav2vec2")
    a = adapter_for(model)
    a.prune_units(model, _group(a, model, "encoder.0.ffn"), [3, 9, 27])
    a.remove_module(model, "encoder", 1, "self_attn")
    out = save_pruned(model, None, tmp_path / "w2v")
    loaded, proc = load_pruned(out)
    x = torch.randn(1, 4000)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    assert proc is None
    assert loaded.config.speechprune_structure == a.structure(model)


def test_processor_files_are_copied_from_a_folder(whisper, processor, tmp_path):
    src = tmp_path / "src"
    processor.save_pretrained(src)
    (src / "model.safetensors").write_bytes(b"not copied")
    out = save_pruned(whisper, src, tmp_path / "out")
    assert (out / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    assert load_pruned(out)[1] is not None
    with pytest.raises(ConfigError, match="not empty"):
        save_pruned(whisper, src, out)
    save_pruned(whisper, src, out, overwrite=True)
    with pytest.raises(ConfigError, match="no processor or tokenizer files"):
        save_pruned(whisper, tmp_path / "out" / "..", tmp_path / "other")  # tmp_path: no processor files


def test_failed_save_leaves_nothing(whisper, tmp_path):
    class Broken:
        def save_pretrained(self, folder):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_pruned(whisper, Broken(), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def _rewrite_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.pop("model.encoder.layers.0.fc1.bias"), "missing"),
    (lambda s: s.update({"model.encoder.layers.1.fc1.weight": torch.zeros(3, 64)}), "unexpected"),
    (lambda s: s.update({"model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(64, 64)}), "size mismatch"),
])
def test_weights_that_do_not_fit_are_refused(whisper, processor, tmp_path, edit, message):
    _heavy_surgery(whisper)
    out = save_pruned(whisper, processor, tmp_path / "pruned")
    _rewrite_weights(out, edit)
    with pytest.raises(ModelError, match=message) as e:
        load_pruned(out)
    assert "\n" not in str(e.value)


def test_structure_that_does_not_fit_is_refused(whisper, processor, tmp_path):
    _heavy_surgery(whisper)
    out = save_pruned(whisper, processor, tmp_path / "pruned")
    config = json.loads((out / "config.json").read_text())
    config["speechprune_structure"]["decoder"]["layers"].append(config["speechprune_structure"]["decoder"]["layers"][0])
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="does not fit"):
        load_pruned(out)
    config["model_type"] = "bert"
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="no pruning adapter for model_type 'bert'"):
        load_pruned(out)


# ----- low-rank factorized models


def _factorize(model, ranks: dict[str, int]):
    from speechprune.prune.lowrank import factorize, lowrank_sites

    factorize(lowrank_sites(model), ranks)
    return model


def test_lowrank_model_round_trips_bit_identically_also_on_top_of_structured_pruning(whisper, processor, tmp_path):
    from speechprune.models.lowrank import LowRankLinear, lowrank_ranks

    _heavy_surgery(whisper)  # encoder.0 keeps 2 heads, decoder.1 FFN 32 wide, removed blocks
    ranks = {"encoder.0.self_attn.q": 5, "encoder.0.ffn.in": 20, "decoder.1.ffn.out": 9, "decoder.1.cross_attn.k": 7}
    _factorize(whisper, ranks)
    out = save_pruned(whisper, processor, tmp_path / "lr")
    config = json.loads((out / "config.json").read_text())
    assert config["speechprune_lowrank"] == ranks
    model, _ = load_pruned(out)
    assert lowrank_ranks(model) == ranks
    assert isinstance(model.model.encoder.layers[0].self_attn.q_proj, LowRankLinear)
    assert torch.equal(_logits(model), _logits(whisper))
    assert whisper_shape(model) == whisper_shape(whisper) == whisper_shape_from_config(model.config)
    assert whisper_shape(model).encoder[0].rank("self_attn.q") == 5
    via_whisper, _ = load_whisper(out)  # the usual loader takes the same path
    assert torch.equal(_logits(via_whisper), _logits(whisper))
    # saving the reloaded model again writes the same description; a dense model writes none
    again = save_pruned(model, processor, tmp_path / "again")
    assert json.loads((again / "config.json").read_text())["speechprune_lowrank"] == ranks
    dense = save_pruned(_fresh_dense(), processor, tmp_path / "dense")
    assert "speechprune_lowrank" not in json.loads((dense / "config.json").read_text())


def _fresh_dense():
    from models.conftest import make_tiny_whisper

    return make_tiny_whisper(seed=1)


def test_lowrank_wav2vec2_round_trips(build, tmp_path):
    from speechprune.models.lowrank import lowrank_ranks

    model = build("wav2vec2")
    ranks = {"encoder.0.self_attn.v": 3, "encoder.1.ffn.in": 10}
    _factorize(model, ranks)
    out = save_pruned(model, None, tmp_path / "w2v")
    loaded, _ = load_pruned(out)
    assert lowrank_ranks(loaded) == ranks
    x = torch.randn(1, 4000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("bad, msg", [
    ({"encoder.9.ffn.in": 4}, "no weight site 'encoder.9.ffn.in'"),
    ({"encoder.0.ffn.in": 0}, "rank 0"),
    ({"encoder.0.ffn.in": "4"}, "rank '4'"),
    ({"encoder.conv.0": 4}, "Conv1d, not a factorizable Linear"),
    ([1, 2], "expected {site key: rank}"),
])
def test_a_bad_lowrank_record_is_refused_in_one_line(whisper, processor, tmp_path, bad, msg):
    out = save_pruned(whisper, processor, tmp_path / "m")
    config = json.loads((out / "config.json").read_text())
    config["speechprune_lowrank"] = bad
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"config.json: speechprune_lowrank does not fit this model: .*"
                       + msg.replace("{", r"\{").replace("}", r"\}")) as e:
        load_pruned(out)
    assert "\n" not in str(e.value)
