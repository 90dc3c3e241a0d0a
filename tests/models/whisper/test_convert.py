"""CT2 -> HF Whisper conversion on a tiny random model (no download), and loading errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechprune.errors import ModelError
from speechprune.models.whisper.convert import convert_ct2_to_hf, whisper_token_ids
from speechprune.models.whisper.load import load_whisper
from speechprune.numerics import rounding_rtol

from closeness import assert_whisper_close



@pytest.fixture(scope="module")
def converted(tiny_ct2, tmp_path_factory):
    _, _, ct2_dir = tiny_ct2
    out = convert_ct2_to_hf(ct2_dir, tmp_path_factory.mktemp("conv") / "hf")
    model, processor = load_whisper(out)
    return out, model, processor


def test_every_parameter_round_trips(tiny_ct2, converted):
    original, _, _ = tiny_ct2
    _, model, _ = converted
    ref = original.state_dict()
    got = model.state_dict()
    assert set(got) == set(ref)
    for name, tensor in ref.items():
        assert got[name].dtype == torch.float32, name
        assert torch.equal(got[name], tensor), name
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()


def test_config_is_derived_from_shapes_and_tokenizer(tiny_ct2, converted, tiny_ids):
    SOT, EOT, NO_TIMESTAMPS = tiny_ids["sot"], tiny_ids["eot"], tiny_ids["no_timestamps"]
    original, _, _ = tiny_ct2
    _, model, processor = converted
    c, o = model.config, original.config
    for key in (
        "vocab_size", "num_mel_bins", "d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads",
        "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions",
        "max_target_positions",
    ):
        assert getattr(c, key) == getattr(o, key), key
    assert (c.decoder_start_token_id, c.eos_token_id, c.pad_token_id) == (SOT, EOT, EOT)
    g = model.generation_config
    assert g.decoder_start_token_id == SOT and g.no_timestamps_token_id == NO_TIMESTAMPS
    assert g.suppress_tokens == [1, 2, 7] and g.begin_suppress_tokens == [220, EOT]
    assert g.alignment_heads == [[1, 0], [1, 3]]
    assert g.is_multilingual is False and not hasattr(g, "lang_to_id")  # else transformers detects a language
    assert model.config._attn_implementation == "sdpa" and not model.training
    tok = processor.tokenizer
    specials = ["<|startoftranscript|>", "<|en|>", "<|notimestamps|>"]
    assert tok.convert_tokens_to_ids(specials) == [SOT, tiny_ids["en"], NO_TIMESTAMPS]
    assert processor.feature_extractor.feature_size == 80


def test_outputs_match_original(tiny_ct2, converted, tiny_ids):
    SOT, NO_TIMESTAMPS = tiny_ids["sot"], tiny_ids["no_timestamps"]
    original, _, _ = tiny_ct2
    _, model, _ = converted
    torch.manual_seed(1)
    feats = torch.randn(2, 80, 3000)
    dec = torch.tensor([[SOT, NO_TIMESTAMPS, 5, 17, 99], [SOT, NO_TIMESTAMPS, 40, 41, 42]])
    with torch.no_grad():
        ref = original(input_features=feats, decoder_input_ids=dec).logits
        got = model(input_features=feats, decoder_input_ids=dec).logits
    assert_whisper_close(got, ref)  # the same weights; the attention kernels may differ


def test_greedy_tokens_match_ctranslate2(tiny_ct2, converted, tiny_ids, strip_prompt):
    """The converted model decodes exactly like the ctranslate2 runtime on the same features."""
    import ctranslate2

    _, _, ct2_dir = tiny_ct2
    _, model, _ = converted
    feats = np.random.default_rng(3).standard_normal((2, 80, 3000)).astype(np.float32)
    ct = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    prompt, EOT = [tiny_ids["sot"], tiny_ids["no_timestamps"]], tiny_ids["eot"]
    # ctranslate2's Whisper generates at most max_length // 2 tokens (openai's sample_len = n_ctx // 2).
    res = ct.generate(ctranslate2.StorageView.from_array(feats), [prompt] * 2, beam_size=1, max_length=40)
    with torch.inference_mode():
        out = model.generate(input_features=torch.from_numpy(feats), max_new_tokens=20, do_sample=False, num_beams=1)
    for row, r in zip(out.tolist(), res):
        hf = [t for t in strip_prompt(row, prompt) if t != EOT]
        assert len(r.sequences_ids[0]) > 5
        assert hf == r.sequences_ids[0]


def test_fp16_ct2_converts_within_fp16_tolerance(tiny_ct2, tmp_path):
    import ctranslate2.converters

    original, hf_dir, _ = tiny_ct2
    ct2_dir = tmp_path / "ct2_f16"
    ctranslate2.converters.TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(
        str(ct2_dir), quantization="float16"
    )
    model, _ = load_whisper(convert_ct2_to_hf(ct2_dir, tmp_path / "hf"))
    u = rounding_rtol(torch.float16)  # round to nearest float16: relative error u, absolute u * 2**-14 if subnormal
    for name, tensor in original.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=u, atol=u * 2**-14, msg=name)


def test_token_ids_of_real_whisper_layouts():
    def tokenizer(first: int) -> dict:
        names = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
                 "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
        return {"added_tokens": [{"id": first + i, "content": n, "special": True} for i, n in enumerate(names)]}

    en = whisper_token_ids(tokenizer(50256), 51864)
    assert (en["sot"], en["eot"], en["no_timestamps"], en["is_multilingual"]) == (50257, 50256, 50265, False)
    multi = whisper_token_ids(tokenizer(50257), 51865)
    assert (multi["sot"], multi["eot"], multi["is_multilingual"]) == (50258, 50257, True)
    assert multi["languages"] == {"<|en|>": 50259, "<|zh|>": 50260}
    assert multi["tasks"] == {"translate": 50261, "transcribe": 50262}
    with pytest.raises(ModelError, match="special tokens"):
        whisper_token_ids({"added_tokens": []}, 100)


def test_load_whisper_errors_are_one_line(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_whisper(tmp_path / "absent")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(ModelError, match="not a Whisper model folder"):
        load_whisper(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))  # no weights
    with pytest.raises(ModelError, match="cannot load Whisper model") as info:
        load_whisper(tmp_path)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)
