"""Decode-aware FLOPs of an encoder-decoder, derived analytically from its per-layer shape.

One multiply-add counts 2 FLOPs. Counted: the conv stem, every projection, attention scores (Q K^T) and the
weighted sum (A V), FFN matmuls, and the vocabulary projection of each generated token. Not counted: norms,
softmax, activations, biases and embedding look-ups (each under 1 % here). Attention is counted from the
shapes rather than with ``torch.utils.flop_counter``, which can miss CPU scaled-dot-product attention; a
test cross-checks these formulas against the counter on an eager-attention model.

A low-rank factorized projection (``LayerShape.ranks``: ``up(down(x))``, rank r) costs ``r * (in + out)``
multiply-adds per token instead of ``in * out``: two smaller matmuls, which is what ``LowRankLinear`` runs.

Whisper tiny.en, one 30 s window: encoder 36.9 GFLOP (FFN 38 %, attention scores 37 %, projections 19 %,
convs 5 %); decoder first step ~3.6 GFLOP (cross-attention K/V over 1500 frames), then ~66 MFLOP per token.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from speechprune.models.structure import AttentionShape, EncoderDecoderShape, LayerShape


def _mm(m: int, k: int, n: int) -> int:
    """FLOPs of an [m, k] x [k, n] matmul."""
    return 2 * m * k * n


def _linear(m: int, k: int, n: int, rank: int | None = None) -> int:
    """FLOPs of a projection of ``m`` tokens from ``k`` to ``n`` features: one matmul, or two through ``rank``."""
    return _mm(m, k, n) if rank is None else _mm(m, k, rank) + _mm(m, rank, n)


def _qkv_out(layer: LayerShape, kind: str, m_q: int, m_kv: int, d: int, a: int) -> int:
    """Projection FLOPs of one attention block: q over ``m_q`` tokens, k and v over ``m_kv``, out over ``m_q``."""
    r = lambda role: layer.rank(f"{kind}.{role}")  # noqa: E731
    return (_linear(m_q, d, a, r("q")) + _linear(m_kv, d, a, r("k")) + _linear(m_kv, d, a, r("v"))
            + _linear(m_q, a, d, r("out")))


def _ffn(layer: LayerShape, m: int, d: int) -> int:
    f = layer.ffn_dim
    return 0 if not f else _linear(m, d, f, layer.rank("ffn.in")) + _linear(m, f, d, layer.rank("ffn.out"))


@dataclass(frozen=True)
class EncoderFlops:
    conv: int
    attn_proj: int
    attn_scores: int
    ffn: int

    @property
    def total(self) -> int:
        return self.conv + self.attn_proj + self.attn_scores + self.ffn


def encoder_flops(s: EncoderDecoderShape) -> EncoderFlops:
    """FLOPs of one encoder window."""
    t, d = s.n_audio_ctx, s.d_model
    conv = 0
    if s.conv_kernel:
        conv = _mm(s.n_frames, s.n_mels * s.conv_kernel, d) + _mm(t, d * s.conv_kernel, d)
    proj = scores = ffn = 0
    for layer in s.encoder:
        if layer.self_attn is not None:
            a = layer.self_attn.dim
            proj += _qkv_out(layer, "self_attn", t, t, d, a)
            scores += 2 * _mm(t, a, t)  # Q K^T and A V
        ffn += _ffn(layer, t, d)
    return EncoderFlops(conv, proj, scores, ffn)


def _self_attn_token(layer: LayerShape, d: int, context: int) -> int:
    a = layer.self_attn
    if a is None:
        return 0
    return _qkv_out(layer, "self_attn", 1, 1, d, a.dim) + 2 * _mm(1, a.dim, context)


def decoder_token_flops(s: EncoderDecoderShape, context: int) -> int:
    """FLOPs of one decoder token at a position that attends to ``context`` tokens (itself included),
    with cross-attention K/V already cached, vocabulary projection included."""
    d = s.d_dec
    total = _mm(1, d, s.vocab_size)
    for layer in s.decoder:
        total += _self_attn_token(layer, d, context)
        if layer.cross_attn is not None:
            c = layer.cross_attn.dim
            total += _qkv_out(layer, "cross_attn", 1, 0, d, c) + 2 * _mm(1, c, s.n_audio_ctx)  # K/V cached
        total += _ffn(layer, 1, d)
    return total


def cross_kv_flops(s: EncoderDecoderShape) -> int:
    """FLOPs of projecting the encoder output to cross-attention keys and values (once per utterance)."""
    t, d = s.n_audio_ctx, s.d_model
    return sum(_linear(t, d, l.cross_attn.dim, l.rank("cross_attn.k")) + _linear(t, d, l.cross_attn.dim,
                                                                                   l.rank("cross_attn.v"))
               for l in s.decoder if l.cross_attn is not None)


def decoder_first_step_flops(s: EncoderDecoderShape, prompt_len: int) -> int:
    """Cross-attention K/V plus the prompt tokens; only the last prompt position is projected to the vocabulary.

    The prompt's self-attention is counted as the full ``prompt_len x prompt_len`` matrix that kernels compute
    (the causal mask hides half of it but does not skip it).
    """
    vocab = _mm(1, s.d_dec, s.vocab_size)
    return cross_kv_flops(s) + prompt_len * (decoder_token_flops(s, prompt_len) - vocab) + vocab


def decode_flops(s: EncoderDecoderShape, prompt_len: int, n_generated: int) -> int:
    """Decoder FLOPs of one utterance: the first step, then one step per further token.

    ``n_generated`` counts the tokens the first step and later steps emitted, end-of-text included.
    """
    later = sum(decoder_token_flops(s, prompt_len + i + 1) for i in range(max(n_generated - 1, 0)))
    return decoder_first_step_flops(s, prompt_len) + later


def utterance_flops(s: EncoderDecoderShape, prompt_len: int, n_generated: int) -> int:
    """One window's encoder plus its decode."""
    return encoder_flops(s).total + decode_flops(s, prompt_len, n_generated)


def uniform_shape(d_model: int, n_heads: int, ffn: int, enc_layers: int, dec_layers: int, vocab: int,
                  n_mels: int = 80, n_audio_ctx: int = 1500) -> EncoderDecoderShape:
    """The shape of an unpruned Whisper-like model (handy for tests and back-of-envelope checks)."""
    att = AttentionShape(n_heads, d_model // n_heads)
    return EncoderDecoderShape(
        d_model=d_model, n_mels=n_mels, n_frames=2 * n_audio_ctx, n_audio_ctx=n_audio_ctx, vocab_size=vocab,
        encoder=tuple(LayerShape(att, ffn) for _ in range(enc_layers)),
        decoder=tuple(LayerShape(att, ffn, att) for _ in range(dec_layers)),
    )


def at_positions(s: EncoderDecoderShape, positions: int | None) -> EncoderDecoderShape:
    """``s`` with the encoder reading ``positions`` (a length bucket) instead of its window (``None``: as is)."""
    if positions is None or positions == s.n_audio_ctx:
        return s
    return replace(s, n_audio_ctx=int(positions), n_frames=2 * int(positions))


def bench_flops(s: EncoderDecoderShape, rows: list[dict]) -> dict:
    """The analytic FLOP figures of a latency bench (``bench.latency``): per row ``prompt_len``, ``n_tokens`` and,
    for a length-adaptive backend, the encoder ``positions`` it read (else the window). The encoder's and the
    decoder's figures are the median clip's (one value for a fixed window)."""
    import statistics

    shapes = [at_positions(s, r.get("positions")) for r in rows]
    encs = [encoder_flops(x) for x in shapes]
    mid = sorted(range(len(rows)), key=lambda i: encs[i].total)[len(rows) // 2]  # the median clip's encoder
    enc, prompt = encs[mid], rows[0]["prompt_len"]
    return {
        "flops_encoder": enc.total,
        "flops_encoder_breakdown": {"conv": enc.conv, "attn_proj": enc.attn_proj, "attn_scores": enc.attn_scores,
                                    "ffn": enc.ffn},
        "flops_decoder_first_step": decoder_first_step_flops(shapes[mid], prompt),
        "flops_decoder_per_token": decoder_token_flops(shapes[mid], prompt + 1),
        "flops_per_utterance_median": statistics.median(
            utterance_flops(x, r["prompt_len"], r["n_tokens"]) for x, r in zip(shapes, rows)),
    }
