"""Analytic FLOPs of a ``Wav2Vec2ForCTC`` on one clip, counted per layer from the live modules (so a pruned,
factorized or shallower model is counted as it runs).

Counted as 2 x multiply-adds of the matrix products and convolutions, the way ``torch.utils.flop_counter`` counts
them (norms, activations, softmax and biases are left out):

* ``stem``: every convolution of the feature encoder at its output length (the waveform is read at 16 kHz), the
  feature projection, and the grouped positional convolution (its full output, one position more than the
  encoder's for an even kernel, before transformers crops it);
* ``layers``: each transformer layer's linear maps (heads left after pruning; a ``LowRankLinear`` as its two
  factors) and its attention products (scores and weighted values: ``2 x 2 x T^2 x heads x head_dim``);
* ``head``: the CTC head.

A model with a convolutional adapter (``config.add_adapter``, rare for CTC) is refused: its extra downsampling is
not counted here.

``flops_terms`` reads what the count needs off the live modules as plain numbers (an ONNX export's manifest keeps
them) and ``terms_flops`` counts a clip from them, so PyTorch and exported backends count alike by one definition.
"""

from __future__ import annotations

from torch import nn

from ...errors import ModelError


def _conv_spec(conv: nn.Conv1d) -> list[int]:
    """``[kernel, stride, padding, dilation, out_channels, in_channels per group]``."""
    return [conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0], conv.out_channels,
            conv.in_channels // conv.groups]


def _conv(spec: list[int], length: int) -> tuple[int, int]:
    """``(FLOPs, output length)`` of a 1-d convolution (``_conv_spec``) over ``length`` positions."""
    k, s, p, d, out_ch, in_per_group = spec
    out = max(0, (length + 2 * p - d * (k - 1) - 1) // s + 1)
    return 2 * out * out_ch * in_per_group * k, out


def _linears(module: nn.Module) -> int:
    """FLOPs of every linear map in ``module`` at one position (a ``LowRankLinear`` as its two factors)."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def flops_terms(model) -> dict:
    """What the count reads from a live ``Wav2Vec2ForCTC``, as numbers: the feature encoder's and the positional
    convolutions, and the per-position FLOPs of the projection, the layers' linear maps, their attention products
    (per position squared) and the head; ``add_adapter`` marks a model whose clips are not counted."""
    w2v = model.wav2vec2
    return {"convs": [_conv_spec(layer.conv) for layer in w2v.feature_extractor.conv_layers],
            "pos_conv": _conv_spec(w2v.encoder.pos_conv_embed.conv),
            "projection_per_position": _linears(w2v.feature_projection),
            "layers_per_position": sum(_linears(layer) for layer in w2v.encoder.layers),
            "attention_per_position_squared": sum(2 * 2 * layer.attention.num_heads * layer.attention.head_dim
                                                  for layer in w2v.encoder.layers if layer.attention is not None),
            "head_per_position": _linears(model.lm_head),
            "add_adapter": bool(getattr(model.config, "add_adapter", False))}


def terms_positions(terms: dict, samples: int) -> int:
    """Encoder positions of a clip of ``samples`` samples (the feature encoder's output length)."""
    length = samples
    for c in terms["convs"]:
        length = _conv(c, length)[1]
    return length


def terms_flops(terms: dict, samples: int) -> dict[str, int]:
    """``{"stem", "layers", "head", "total", "attention_products"}`` (the last is part of ``layers``) of one clip of
    ``samples`` samples, from ``flops_terms``."""
    if terms.get("add_adapter"):
        raise ModelError("FLOPs of a wav2vec2 model with a convolutional adapter (add_adapter) are not counted")
    stem, length = 0, samples
    for c in terms["convs"]:
        f, length = _conv(c, length)
        stem += f
    t = length
    stem += terms["projection_per_position"] * t + _conv(terms["pos_conv"], t)[0]
    attention = terms["attention_per_position_squared"] * t * t
    out = {"stem": stem, "layers": terms["layers_per_position"] * t + attention, "head": terms["head_per_position"] * t}
    out["total"] = sum(out.values())
    out["attention_products"] = attention
    return out


def positions(model, samples: int) -> int:
    """Encoder positions of a clip of ``samples`` samples read by ``model``."""
    return terms_positions({"convs": [_conv_spec(layer.conv) for layer in model.wav2vec2.feature_extractor.conv_layers]},
                           samples)


def clip_flops(model, samples: int) -> dict[str, int]:
    """``terms_flops`` of one clip of ``samples`` samples read by ``model``."""
    return terms_flops(flops_terms(model), samples)
