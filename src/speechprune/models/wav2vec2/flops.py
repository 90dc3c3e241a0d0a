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
"""

from __future__ import annotations

from torch import nn

from ...errors import ModelError


def _conv(conv: nn.Conv1d, length: int) -> tuple[int, int]:
    """``(FLOPs, output length)`` of a 1-d convolution over ``length`` positions."""
    k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
    out = max(0, (length + 2 * p - d * (k - 1) - 1) // s + 1)
    return 2 * out * conv.out_channels * (conv.in_channels // conv.groups) * k, out


def _linears(module: nn.Module, positions: int) -> int:
    return sum(2 * positions * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def positions(model, samples: int) -> int:
    """Encoder positions of a clip of ``samples`` samples (the feature encoder's output length)."""
    length = samples
    for layer in model.wav2vec2.feature_extractor.conv_layers:
        length = _conv(layer.conv, length)[1]
    return length


def clip_flops(model, samples: int) -> dict[str, int]:
    """``{"stem", "layers", "head", "total", "attention_products"}`` (the last is part of ``layers``) for one clip of
    ``samples`` samples read by ``model``."""
    if getattr(model.config, "add_adapter", False):
        raise ModelError("FLOPs of a wav2vec2 model with a convolutional adapter (add_adapter) are not counted")
    w2v = model.wav2vec2
    stem, length = 0, samples
    for layer in w2v.feature_extractor.conv_layers:
        f, length = _conv(layer.conv, length)
        stem += f
    t = length
    stem += _linears(w2v.feature_projection, t) + _conv(w2v.encoder.pos_conv_embed.conv, t)[0]
    layers = attention = 0
    for layer in w2v.encoder.layers:
        layers += _linears(layer, t)
        if layer.attention is not None:
            attention += 2 * 2 * t * t * layer.attention.num_heads * layer.attention.head_dim
    out = {"stem": stem, "layers": layers + attention, "head": _linears(model.lm_head, t)}
    out["total"] = sum(out.values())
    out["attention_products"] = attention
    return out
