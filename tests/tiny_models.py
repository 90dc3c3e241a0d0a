"""A tiny random Whisper (no downloads) and a toy tokenizer for unit tests."""

from __future__ import annotations

import torch

# A toy vocabulary: ids 0..59 are text pieces, then the specials an English-only Whisper needs.
SOT, EOT, NO_TS = 60, 61, 62
VOCAB = 64


def tiny_whisper(seed: int = 0, attn_implementation: str = "sdpa", **overrides):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    cfg = dict(
        vocab_size=VOCAB, num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=SOT, eos_token_id=EOT,
        pad_token_id=EOT, bos_token_id=EOT, suppress_tokens=[], begin_suppress_tokens=[EOT],
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(WhisperConfig(**cfg, attn_implementation=attn_implementation))
    with torch.no_grad():  # random init makes near-uniform logits; sharpen them so decoding has clear winners
        model.proj_out.weight.mul_(20.0)
    return model.eval()


class ToyTokenizer:
    """Turns toy ids into letters ('a' + id); stands in for a real tokenizer, which is not under test here."""

    def decode(self, tokens, skip_special_tokens=True):
        return " ".join(chr(ord("a") + t % 26) for t in tokens if t < SOT)


def toy_vocab(**kw):
    from speechprune.models.whisper.decoding import WhisperVocab

    return WhisperVocab(sot=SOT, eot=EOT, no_timestamps=NO_TS, suppress=kw.get("suppress", ()),
                        begin_suppress=kw.get("begin_suppress", (EOT,)))


def make_tiny_wav2vec2(seed: int = 0, **overrides):
    """A random ``Wav2Vec2ForCTC`` (d 32, 2 layers, 4 heads, FFN 64, two convs, 12 labels), every weight random."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    cfg = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
        conv_stride=(5, 4), conv_kernel=(10, 4), vocab_size=12, num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0, pad_token_id=0,
    )
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = Wav2Vec2ForCTC(Wav2Vec2Config(**cfg, attn_implementation="sdpa")).eval()
    randomize(model)
    return model


# A character vocabulary for a tiny wav2vec2 CTC folder: the pad token is the blank, "|" the word delimiter, and the
# characters spell the ``clips`` fixture's references ("tone 0" ... "tone 4").
WAV2VEC2_VOCAB = ("<pad>", "<s>", "</s>", "<unk>", "|", "t", "o", "n", "e", "0", "1", "2", "3", "4", "a", "s")


def tiny_wav2vec2_folder(out, seed: int = 0, **overrides):
    """A Hugging Face ``Wav2Vec2ForCTC`` folder in ``out``: ``make_tiny_wav2vec2`` (its head over
    ``WAV2VEC2_VOCAB``; every weight random, the head sharpened so greedy search emits characters), a
    ``Wav2Vec2CTCTokenizer`` and a ``Wav2Vec2FeatureExtractor`` (normalizing; an attention mask for the
    layer-norm feature encoder only, as transformers ships them). Returns ``out``."""
    import json
    from pathlib import Path

    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = make_tiny_wav2vec2(seed, **{"vocab_size": len(WAV2VEC2_VOCAB), **overrides})
    with torch.no_grad():
        model.lm_head.weight.mul_(5.0)
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(WAV2VEC2_VOCAB)}), encoding="utf-8")
    Wav2Vec2CTCTokenizer(str(out / "vocab.json")).save_pretrained(out)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0, do_normalize=True,
                             return_attention_mask=model.config.feat_extract_norm == "layer").save_pretrained(out)
    model.save_pretrained(out)
    return out


def randomize(model, seed: int = 0):
    """Every parameter random (biases too, norms near 1), so no unit is trivially zero; returns ``model``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight") and "parametrizations" not in name:
                p.copy_(1 + 0.1 * noise)
            else:
                p.copy_(0.2 * noise)
    return model


def build_tiny(family: str, seed: int = 0, **overrides):
    """A tiny random model of ``family`` ("whisper": ``tiny_models.tiny_whisper``, 2+2 layers d 32; "wav2vec2";
    "ctc": a 3-layer Conformer CTC model), every parameter random."""
    if family == "whisper":
        return randomize(tiny_whisper(seed, **overrides), seed)
    if family == "ctc":
        return randomize(tiny_ctc("conformer", "batch", seed, **overrides), seed)
    return make_tiny_wav2vec2(seed, **overrides)


def pruned_tiny_whisper(seed: int = 0):
    """``build_tiny("whisper")`` with 3+3 layers, pruned every way the Whisper adapter can: heads cut to per-layer
    counts (self and cross), uneven FFN widths, removed blocks of every kind and a removed encoder layer."""
    from speechprune.models.adapters import adapter_for

    model = build_tiny("whisper", seed, encoder_layers=3, decoder_layers=3)
    adapter = adapter_for(model)
    groups = {g.key: g for g in adapter.unit_groups(model)}
    for key, keep in [("encoder.0.self_attn", [0, 2]), ("encoder.2.ffn", list(range(0, 64, 3))),
                      ("decoder.0.cross_attn", [1, 3, 2]), ("decoder.1.ffn", list(range(40))),
                      ("decoder.2.self_attn", [3])]:
        adapter.prune_units(model, groups[key], keep)
    for stack, layer, kind in [("decoder", 1, "self_attn"), ("decoder", 2, "cross_attn"), ("decoder", 0, "ffn"),
                               ("encoder", 0, "ffn")]:
        adapter.remove_module(model, stack, layer, kind)
    adapter.remove_layers(model, "encoder", [1])
    return model


def tiny_ctc(encoder="conformer", norm="batch", seed=0, **kw):
    """A 3-layer CTC model of the ``models.ctc`` family (16 mel bins, width 32), BatchNorm statistics randomized."""
    from speechprune.models.ctc import CTCConfig, CTCModel

    cfg = dict(encoder=encoder, n_mels=16, d_model=32, n_layers=3, n_heads=2, ffn_dim=48, conv_kernel=5,
               conv_norm=norm, conv_groups=4, max_positions=300, dropout=0.0)
    cfg.update(kw)
    torch.manual_seed(seed)
    model = CTCModel(CTCConfig(**cfg))
    if norm == "batch" and encoder == "conformer":  # non-trivial running statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()
