"""The one forward every wav2vec2 stage runs (decoding, labelling, distillation, scoring), so that what a student is
distilled on, what a scorer scores and what ``eval`` decodes are the same computation.

How a batch is read: a model whose feature encoder normalizes each channel over time (``feat_extract_norm="group"``,
the wav2vec2-base layout) would see a clip's statistics change with the zeros padded after it, and it was trained
without an attention mask; so each clip is read alone at its own length (as a single-clip pipeline reads it) and
the outputs are zero-padded to the batch. A model with per-frame layer norms (``"layer"``) reads the whole batch
with an attention mask: no real frame sees the padding.

SpecAugment and LayerDrop (transformers applies them in training mode when the config asks) are switched off: they
draw from random generators no recipe controls, so a resumed recovery would not equal an unbroken one; dropout
stays, as in the other families.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def output_lengths(model, samples) -> torch.Tensor:
    """Encoder positions per clip of ``samples`` samples (transformers' own formula; never negative)."""
    n = model._get_feat_extract_output_lengths(torch.as_tensor(samples, dtype=torch.long))
    return torch.clamp(torch.as_tensor(n, dtype=torch.long), min=0)


def receptive_field(model) -> int:
    """The fewest samples that give one encoder position."""
    r = 1
    for layer in reversed(model.wav2vec2.feature_extractor.conv_layers):
        r = (r - 1) * layer.conv.stride[0] + layer.conv.kernel_size[0]
    return r


def reads_batches(model) -> bool:
    """Whether ``model`` reads a padded batch with an attention mask as it reads each clip alone."""
    return model.config.feat_extract_norm == "layer"


@contextmanager
def without_augmentation(model):
    config = model.config
    before = config.apply_spec_augment, config.layerdrop
    config.apply_spec_augment, config.layerdrop = False, 0.0
    try:
        yield
    finally:
        config.apply_spec_augment, config.layerdrop = before


@dataclass
class States:
    logits: torch.Tensor  # [N, T', V] before the softmax; zero past an item's length
    lengths: torch.Tensor  # [N] encoder positions
    hidden: torch.Tensor  # [N, T', d] the last layer's output (the head's input)
    inner: list[torch.Tensor]  # with ``inner``: every layer's output but the last, [N, T', d] each


def _pad_stack(rows: list[torch.Tensor | None], length: int, like: torch.Tensor) -> torch.Tensor:
    return torch.stack([like.new_zeros(length, *like.shape[1:]) if r is None else F.pad(r, (0, 0, 0, length - len(r)))
                        for r in rows])


def forward_states(model, waves: torch.Tensor, samples: list[int], inner: bool = False) -> States:
    """The model on ``waves`` ``[N, S]`` (from the front end) whose item i has ``samples[i]`` real samples; see the
    module for how a batch is read. A clip shorter than the feature encoder's receptive field has no position."""
    lengths = output_lengths(model, samples)
    with without_augmentation(model):
        if reads_batches(model):
            mask = (torch.arange(waves.shape[1], device=waves.device)[None, :]
                    < torch.as_tensor(samples, device=waves.device)[:, None]).long()
            out = model.wav2vec2(waves, attention_mask=mask, output_hidden_states=inner)
            hidden, layers = out.last_hidden_state, list(out.hidden_states[1:-1]) if inner else []
        else:
            items = [None if t == 0 else model.wav2vec2(waves[i : i + 1, :n], output_hidden_states=inner)
                     for i, (n, t) in enumerate(zip(samples, lengths.tolist()))]
            longest = int(lengths.max()) if len(samples) else 0
            d = model.config.hidden_size
            like = waves.new_zeros(0, d)
            hidden = _pad_stack([None if o is None else o.last_hidden_state[0] for o in items], longest, like)
            layers = []
            if inner:
                depth = len(model.wav2vec2.encoder.layers)
                layers = [_pad_stack([None if o is None else o.hidden_states[k][0] for o in items], longest, like)
                          for k in range(1, depth)]
    return States(model.lm_head(model.dropout(hidden)), lengths.to(waves.device), hidden, layers)
