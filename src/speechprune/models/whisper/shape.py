"""Per-layer shapes of a Whisper model for FLOP counting and reports: read from a live model's modules (pruned widths,
removed blocks and low-rank factorized projections count) or from a config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from speechprune.models.units import LOWRANK_KEY, STRUCTURE_KEY

from .adapter import _KINDS, _STACKS, _attn_of, _present

if TYPE_CHECKING:
    from speechprune.models.structure import AttentionShape, EncoderDecoderShape


def _attention_shape(attn) -> "AttentionShape | None":
    from speechprune.models.structure import AttentionShape

    if attn is None or attn.q_proj.out_features == 0:
        return None
    return AttentionShape(attn.q_proj.out_features // attn.head_dim, attn.head_dim)


def _ffn_dim(layer) -> int:
    fc1 = getattr(layer, "fc1", None)
    return 0 if fc1 is None else fc1.out_features


def _layer_ranks(layer, stack: str) -> tuple[tuple[str, int], ...]:
    """The low-rank factorized projections of a layer, as ``LayerShape.ranks`` (a module with a ``rank``)."""
    out = []
    for kind in _KINDS[stack]:
        if not _present(layer, kind):
            continue
        if kind == "ffn":
            mods = {"in": layer.fc1, "out": layer.fc2}
        else:
            attn = _attn_of(layer, kind)
            mods = {role: getattr(attn, f"{role}_proj") for role in ("q", "k", "v", "out")}
        out += [(f"{kind}.{role}", int(m.rank)) for role, m in mods.items() if getattr(m, "rank", None) is not None]
    return tuple(sorted(out))  # a canonical order: shapes compare equal however they were made


def whisper_shape(model) -> "EncoderDecoderShape":
    """Per-layer shape of a ``WhisperForConditionalGeneration``, read from its modules (so pruned widths and
    low-rank factorized projections count)."""
    from speechprune.models.structure import EncoderDecoderShape, LayerShape

    enc, dec = model.model.encoder, model.model.decoder
    return EncoderDecoderShape(
        d_model=int(model.config.d_model),
        n_mels=int(enc.conv1.in_channels),
        n_frames=2 * int(model.config.max_source_positions),
        n_audio_ctx=int(model.config.max_source_positions),
        vocab_size=int(model.proj_out.out_features),
        encoder=tuple(LayerShape(_attention_shape(l.self_attn), _ffn_dim(l), ranks=_layer_ranks(l, "encoder"))
                      for l in enc.layers),
        decoder=tuple(
            LayerShape(_attention_shape(l.self_attn), _ffn_dim(l), _attention_shape(l.encoder_attn),
                       ranks=_layer_ranks(l, "decoder")) for l in dec.layers
        ),
        conv_kernel=int(enc.conv1.kernel_size[0]),
    )


def _with_ranks(shape, lowrank: dict | None):
    """``shape`` with the ranks of a ``speechprune_lowrank`` record (``{"encoder.2.self_attn.q": rank, ...}``)."""
    from dataclasses import replace

    if not lowrank:
        return shape
    per_layer: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for key, rank in lowrank.items():
        stack, layer, name = key.split(".", 2)
        if layer.isdigit():  # layer sites only; the stem and embeddings are never factorized
            per_layer.setdefault((stack, int(layer)), []).append((name, int(rank)))
    stacks = {stack: tuple(replace(l, ranks=tuple(sorted(per_layer.get((stack, i), [])))) for i, l in
                           enumerate(getattr(shape, stack))) for stack in _STACKS}
    return replace(shape, **stacks)


def whisper_shape_from_config(config) -> "EncoderDecoderShape":
    """The shape a ``WhisperConfig`` describes: uniform layers, or the per-layer ``speechprune_structure`` of a
    pruned folder, with the low-rank projections of ``speechprune_lowrank`` if any."""
    return _with_ranks(_shape_from_config(config), getattr(config, LOWRANK_KEY, None))


def _shape_from_config(config) -> "EncoderDecoderShape":
    from speechprune.models.structure import AttentionShape, EncoderDecoderShape, LayerShape

    d = int(config.d_model)
    structure = getattr(config, STRUCTURE_KEY, None)
    if structure:
        def att(stack: str, heads: int | None) -> AttentionShape | None:
            return None if heads is None else AttentionShape(heads, structure[stack]["original"]["head_dim"])

        return EncoderDecoderShape(
            d_model=d, n_mels=int(config.num_mel_bins), n_frames=2 * int(config.max_source_positions),
            n_audio_ctx=int(config.max_source_positions), vocab_size=int(config.vocab_size),
            encoder=tuple(LayerShape(att("encoder", l["self_attn"]), l["ffn"] or 0)
                          for l in structure["encoder"]["layers"]),
            decoder=tuple(LayerShape(att("decoder", l["self_attn"]), l["ffn"] or 0, att("decoder", l["cross_attn"]))
                          for l in structure["decoder"]["layers"]),
        )
    enc_att = AttentionShape(config.encoder_attention_heads, d // config.encoder_attention_heads)
    dec_att = AttentionShape(config.decoder_attention_heads, d // config.decoder_attention_heads)
    return EncoderDecoderShape(
        d_model=d, n_mels=int(config.num_mel_bins), n_frames=2 * int(config.max_source_positions),
        n_audio_ctx=int(config.max_source_positions), vocab_size=int(config.vocab_size),
        encoder=tuple(LayerShape(enc_att, config.encoder_ffn_dim) for _ in range(config.encoder_layers)),
        decoder=tuple(LayerShape(dec_att, config.decoder_ffn_dim, dec_att) for _ in range(config.decoder_layers)),
    )

