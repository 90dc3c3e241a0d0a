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
    from speechprune.evaluate.decoding import WhisperVocab

    return WhisperVocab(sot=SOT, eot=EOT, no_timestamps=NO_TS, suppress=kw.get("suppress", ()),
                        begin_suppress=kw.get("begin_suppress", (EOT,)))


