"""``export_hf``: stock-expressible pruned models become plain Hugging Face folders; the rest is refused with why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.export.hf import RECORD_FILE, export_hf, stock_incompatibilities
from speechprune.models.checkpoint import save_pruned
from speechprune.models.whisper.adapter import WhisperAdapter

from models.conftest import make_tiny_whisper, write_tiny_tokenizer

FEATS = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from speechprune.models.whisper.convert import build_processor

    return build_processor(write_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json"), 80)


def _group(adapter, model, key):
    return next(g for g in adapter.unit_groups(model) if g.key == key)


@torch.no_grad()
def _logits(model):
    return model(input_features=FEATS, decoder_input_ids=torch.tensor([[257, 265, 40, 41]])).logits


def test_uniform_cuts_and_removed_layers_export_to_a_stock_folder(processor, tmp_path):
    from transformers import WhisperForConditionalGeneration, pipeline

    model, a = make_tiny_whisper(), WhisperAdapter()
    a.remove_layers(model, "decoder", [1])
    for i in range(2):
        a.prune_units(model, _group(a, model, f"encoder.{i}.ffn"), list(range(0, 128, 2)))
    src = save_pruned(model, processor, tmp_path / "pruned")
    assert "speechprune_structure" in json.loads((src / "config.json").read_text())

    record = export_hf(src, tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "speechprune_structure" not in config
    assert (config["decoder_layers"], config["encoder_ffn_dim"]) == (1, 64)
    assert record["max_abs_logit_diff"] == 0.0
    assert json.loads((tmp_path / "hf" / RECORD_FILE).read_text())["format"] == "hf"
    plain = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    assert torch.equal(_logits(plain), _logits(model))
    asr = pipeline("automatic-speech-recognition", model=str(tmp_path / "hf"), device="cpu")
    assert isinstance(asr(np.zeros(16000, dtype=np.float32), generate_kwargs={"max_new_tokens": 4})["text"], str)


def test_structures_a_stock_config_cannot_hold_are_refused_with_the_reasons(processor, tmp_path):
    model, a = make_tiny_whisper(), WhisperAdapter()
    a.prune_units(model, _group(a, model, "encoder.0.self_attn"), [0, 1])
    a.prune_units(model, _group(a, model, "decoder.1.ffn"), list(range(10)))
    a.remove_module(model, "decoder", 0, "cross_attn")
    reasons = stock_incompatibilities(a.structure(model))
    assert any("encoder layer 0 self_attn keeps 2 of 4 heads" in r for r in reasons)
    assert any("decoder layer 0 has no cross_attn block" in r for r in reasons)
    assert any("decoder FFN widths differ" in r for r in reasons)
    src = save_pruned(model, processor, tmp_path / "pruned")
    with pytest.raises(ConfigError, match=r"pruned: a stock Hugging Face config cannot express") as e:
        export_hf(src, tmp_path / "hf")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "hf").exists()
