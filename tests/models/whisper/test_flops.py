import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from speechprune.models.whisper import flops as F
from speechprune.models.whisper.shape import whisper_shape, whisper_shape_from_config

from tiny_models import tiny_whisper


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            fn()
    return counter.get_total_flops()


def test_encoder_formula_matches_torch_flop_counter_on_eager_attention():
    model = tiny_whisper(attn_implementation="eager")
    x = torch.randn(1, 80, 3000)
    want = counted(lambda: model.model.encoder(input_features=x))
    assert F.encoder_flops(whisper_shape(model)).total == want


def test_decoder_formulas_match_torch_flop_counter():
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    model = tiny_whisper(attn_implementation="eager")
    shape = whisper_shape(model)
    enc = torch.randn(1, 1500, 32)
    dec = model.model.decoder
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    prompt = torch.tensor([[60, 62]])

    def first():
        h = dec(input_ids=prompt, encoder_hidden_states=enc, cache=cache, use_cache=True).last_hidden_state
        model.proj_out(h[:, -1])

    assert counted(first) == F.decoder_first_step_flops(shape, 2)

    def later():
        h = dec(input_ids=torch.tensor([[5]]), encoder_hidden_states=enc, cache=cache, use_cache=True).last_hidden_state
        model.proj_out(h[:, -1])

    assert counted(later) == F.decoder_token_flops(shape, 3)  # attends to 2 prompt tokens + itself


def test_tiny_en_numbers_match_the_analytic_reference():
    from transformers import WhisperConfig

    cfg = WhisperConfig(vocab_size=51864, num_mel_bins=80, d_model=384, encoder_layers=4, decoder_layers=4,
                        encoder_attention_heads=6, decoder_attention_heads=6, encoder_ffn_dim=1536, decoder_ffn_dim=1536)
    s = whisper_shape_from_config(cfg)
    e = F.encoder_flops(s)
    assert e.total / 1e9 == pytest.approx(36.94, abs=0.01)
    assert e.ffn / e.total == pytest.approx(0.38, abs=0.01) and e.attn_scores / e.total == pytest.approx(0.37, abs=0.01)
    assert F.decoder_first_step_flops(s, 2) / 1e9 == pytest.approx(3.6, abs=0.05)
    assert F.decoder_token_flops(s, 10) / 1e6 == pytest.approx(65.6, abs=0.2)


def test_removed_blocks_cost_nothing():
    from dataclasses import replace

    from speechprune.models.structure import LayerShape

    s = F.uniform_shape(384, 6, 1536, 4, 4, 51864)
    half = replace(s, encoder=s.encoder[:2] + (LayerShape(None, 0),) * 2)
    full, cut = F.encoder_flops(s), F.encoder_flops(half)
    assert cut.conv == full.conv
    assert cut.ffn == full.ffn // 2 and cut.attn_scores == full.attn_scores // 2


def test_formulas_count_lowrank_projections_as_two_matmuls_like_the_torch_counter():
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    from speechprune.prune.lowrank import factorize, lowrank_sites

    model = tiny_whisper(attn_implementation="eager")
    dense = whisper_shape(model)
    sites = lowrank_sites(model)
    factorize(sites, {s.key: 3 + i % 5 for i, s in enumerate(sites) if s.role != "out" or s.component == "ffn"})
    shape = whisper_shape(model)
    assert F.encoder_flops(shape).total < F.encoder_flops(dense).total
    x = torch.randn(1, 80, 3000)
    assert F.encoder_flops(shape).total == counted(lambda: model.model.encoder(input_features=x))
    enc = torch.randn(1, 1500, 32)
    dec = model.model.decoder
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())

    def step(ids):
        h = dec(input_ids=torch.tensor([ids]), encoder_hidden_states=enc, cache=cache,
                use_cache=True).last_hidden_state
        model.proj_out(h[:, -1])

    assert counted(lambda: step([60, 62])) == F.decoder_first_step_flops(shape, 2)
    assert counted(lambda: step([5])) == F.decoder_token_flops(shape, 3)


def test_bench_flops_count_the_encoder_at_the_positions_each_clip_was_read_at():
    """A length-adaptive backend reads short clips at a bucket: the bench counts the encoder (and the decoder's
    cross-attention) at those positions, the median clip's where they differ."""
    s = F.uniform_shape(384, 6, 1536, 4, 4, 51864)
    full = [{"prompt_len": 3, "n_tokens": 5, "positions": None}] * 3
    short = [{"prompt_len": 3, "n_tokens": 5, "positions": 150}] * 3
    a, b = F.bench_flops(s, full), F.bench_flops(s, short)
    assert a["flops_encoder"] == F.encoder_flops(s).total
    cut = F.at_positions(s, 150)
    assert (cut.n_audio_ctx, cut.n_frames) == (150, 300)
    assert b["flops_encoder"] == F.encoder_flops(cut).total < a["flops_encoder"] / 9
    assert b["flops_decoder_per_token"] < a["flops_decoder_per_token"]  # cross-attention over 150 positions
    assert b["flops_per_utterance_median"] == F.utterance_flops(cut, 3, 5)
    mixed = F.bench_flops(s, [short[0], full[0], {**short[0], "positions": 250}])
    assert mixed["flops_encoder"] == F.encoder_flops(F.at_positions(s, 250)).total  # the median clip's
