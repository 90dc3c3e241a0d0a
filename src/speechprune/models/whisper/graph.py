"""Export-friendly Whisper graphs: plain-torch modules over a live (dense or pruned) Hugging Face Whisper.

Whisper-specific: with the rest of this package, the only code that knows Hugging Face Whisper's module names. The
graphs REFERENCE the model's parameters (no copies), so they always compute what the model computes, and each is
an ``nn.Module`` that traces to its own ONNX graph:

- ``WhisperEncoderGraph``: ``input_features [B, n_mels, 3000] -> encoder_hidden [B, 1500, d]`` (or ``2 P`` frames
  -> ``P`` positions: a length-adaptive model's bucket, see :mod:`.lengths`);
- ``WhisperPrefillGraph``: ``input_ids [N, P], encoder_hidden [B, T, d] -> logits [N, V_out]`` (last position),
  then the self-attention key and value ``[N, H_i, P, hd]`` of every present self-attention block and the
  cross-attention key and value ``[B, H_j, T, hd]`` of every present cross-attention block;
- ``WhisperStepGraph``: ``input_ids [N, 1], position [1] (int64), past self K/V [N, H_i, S, hd] ..., cross K/V
  [B, H_j, T, hd] ... -> logits [N, V_out]``, then the self K/V with the new position appended ``[N, H_i, S+1, hd]``.

Per-layer head counts and FFN widths come from the live modules; removed blocks (``None`` attributes of the
``PrunedWhisper*Layer`` classes) are skipped, and so are their caches, which is why caches are separate tensors
named by decoder layer (``DecoderIO``). ``N = B * G``: the cross-attention K/V may have fewer rows than the queries
(``G`` consecutive query rows share one encoder row), so beam search keeps one copy of the cross-attention cache
per utterance instead of one per beam. ``output_vocab`` restricts the (tied) output projection to those token
ids: logits column ``j`` is token ``output_vocab[j]``. Pre-norm, exact (erf) GELU, learned positions, as in HF.

The encoder's self-attention exports as ONNX Runtime's fused ``com.microsoft::MultiHeadAttention`` (10 % faster
encoder for int8 tiny.en on one thread than MatMul-Softmax-MatMul), so ``encoder.onnx`` needs ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from speechprune.errors import ConfigError


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head attention of pre-scaled queries ``q [N, S, H*hd]`` over ``k, v [B, H, T, hd]``, ``N = B * G``.

    The ``G`` query rows of one key row (item-major) are folded into its query positions, so keys shared by beams
    are read once. ``mask`` is added to the scores (``[S, T]``, for ``G == 1``). Returns ``[N, S, H*hd]``.
    """
    n, s = q.shape[0], q.shape[1]
    b, h, hd = k.shape[0], k.shape[1], k.shape[3]
    q = q.reshape(b, -1, h, hd).transpose(1, 2)  # [B, H, G*S, hd]
    scores = torch.matmul(q, k.transpose(2, 3))
    if mask is not None:
        scores = scores + mask
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, H, G*S, hd]
    return out.transpose(1, 2).reshape(n, s, h * hd)


def causal_mask(n: int, like: torch.Tensor) -> torch.Tensor:
    """``[n, n]``: 0 on and below the diagonal, -inf above (a position sees itself and the past)."""
    pos = torch.arange(n, device=like.device)
    return torch.where(pos[None, :] > pos[:, None], float("-inf"), 0.0).to(like.dtype)


def _self_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Multi-head attention of pre-scaled queries over ``q, k, v [B, T, H*hd]`` (not yet split into heads), through
    PyTorch's fused kernel (``scaled_dot_product_attention``, scale 1: the queries are scaled), as Hugging Face's sdpa
    encoder runs it: ``attend``'s explicit products were 2x slower at 1500 positions. Differentiable."""
    b, width = k.shape[0], k.shape[2]
    q, k, v = (x.reshape(b, -1, n_heads, width // n_heads).transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return out.transpose(1, 2).reshape(b, -1, width)


class _FusedSelfAttention(torch.autograd.Function):
    """``_self_attend`` over ``q, k, v [B, T, H*hd]`` in PyTorch; ONNX Runtime's fused
    ``com.microsoft::MultiHeadAttention`` once exported (the encoder's attention: no cache, no mask, no reshapes in the
    graph). It has no backward: training calls ``_self_attend`` itself (``encoder_self_attention`` chooses)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int) -> torch.Tensor:
        return _self_attend(q, k, v, n_heads)

    @staticmethod
    def symbolic(g, q, k, v, n_heads: int):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=n_heads, scale_f=1.0)
        out.setType(q.type())
        return out


def encoder_self_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The encoder's self-attention: the exportable operator when exporting or not training, else the same kernel
    called directly, so autograd sees it (a student trains through ``WhisperEncoderGraph``)."""
    if torch.is_grad_enabled() and q.requires_grad and not torch.onnx.is_in_onnx_export():
        return _self_attend(q, k, v, n_heads)
    return _FusedSelfAttention.apply(q, k, v, n_heads)


class _Attention(nn.Module):
    """One present attention block (pre-norm) of a Whisper layer: references its norm and projections."""

    def __init__(self, norm: nn.LayerNorm, attn: nn.Module):
        super().__init__()
        self.norm, self.q, self.k, self.v, self.out = norm, attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj
        self.head_dim = int(attn.head_dim)
        self.n_heads = self.q.out_features // self.head_dim
        self.scaling = float(attn.scaling)  # HF scales q before the product (head_dim ** -0.5 of the ORIGINAL heads)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, S, H*hd] -> [N, H, S, hd]``."""
        return x.reshape(x.shape[0], x.shape[1], self.n_heads, self.head_dim).transpose(1, 2)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x) * self.scaling

    def key_value(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.heads(self.k(x)), self.heads(self.v(x))


class _FFN(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.norm, self.fc1, self.act, self.fc2 = layer.final_layer_norm, layer.fc1, layer.activation_fn, layer.fc2

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.act(self.fc1(self.norm(h))))


def _self_attn(layer: nn.Module) -> _Attention | None:
    return None if layer.self_attn is None else _Attention(layer.self_attn_layer_norm, layer.self_attn)


def _cross_attn(layer: nn.Module) -> _Attention | None:
    return None if layer.encoder_attn is None else _Attention(layer.encoder_attn_layer_norm, layer.encoder_attn)


def _ffn(layer: nn.Module) -> _FFN | None:
    return None if layer.fc1 is None else _FFN(layer)


def _optional(modules: list[nn.Module | None]) -> nn.ModuleList:
    """A ModuleList with ``nn.Identity`` standing for removed blocks (``None`` cannot be a list entry)."""
    return nn.ModuleList([nn.Identity() if m is None else m for m in modules])


class WhisperEncoderGraph(nn.Module):
    """``input_features [B, n_mels, 2 * P] -> encoder_hidden [B, P, d]`` for any ``P`` up to the position table's
    ``n_audio_ctx`` rows: positions ``0..P-1`` are added (``P = n_audio_ctx``, the 30 s window, is Hugging Face's
    encoder; a shorter ``P`` is what a length-adaptive model reads, ``.lengths``). No dropout or LayerDrop: trained
    through (``encoder_states``), it is the eval-mode encoder, as every Whisper recipe here runs with dropout 0."""

    def __init__(self, model: nn.Module):
        super().__init__()
        enc = model.model.encoder
        self.conv1, self.conv2, self.positions, self.norm = enc.conv1, enc.conv2, enc.embed_positions, enc.layer_norm
        self.attn = _optional([_self_attn(l) for l in enc.layers])
        self.ffn = _optional([_ffn(l) for l in enc.layers])

    def encoder_states(self, input_features: torch.Tensor, inner: bool = False
                       ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(encoder_hidden, inner)``: the output, and with ``inner`` every layer's output but the last (what
        Hugging Face's ``hidden_states[1:-1]`` hold), else ``[]``."""
        x = F.gelu(self.conv1(input_features))
        x = F.gelu(self.conv2(x)).permute(0, 2, 1)
        h = x + self.positions.weight[: x.shape[1]]
        states = []
        for attn, ffn in zip(self.attn, self.ffn):
            if isinstance(attn, _Attention):
                a = attn.norm(h)
                h = h + attn.out(encoder_self_attention(attn.query(a), attn.k(a), attn.v(a), attn.n_heads))
            if isinstance(ffn, _FFN):
                h = ffn(h)
            if inner:
                states.append(h)
        return self.norm(h), states[:-1]

    def forward(self, input_features: torch.Tensor) -> torch.Tensor:
        return self.encoder_states(input_features)[0]


@dataclass(frozen=True)
class DecoderIO:
    """Tensor names of the decoder graphs, from the decoder layers that have each block (original order)."""

    self_layers: tuple[int, ...]
    cross_layers: tuple[int, ...]

    @property
    def self_cache(self) -> list[str]:
        """Self-attention K/V produced by prefill and step, per layer: key then value."""
        return [f"self_{kv}.{i}" for i in self.self_layers for kv in ("key", "value")]

    @property
    def past_self_cache(self) -> list[str]:
        return [f"past_{name}" for name in self.self_cache]

    @property
    def cross_cache(self) -> list[str]:
        return [f"cross_{kv}.{i}" for i in self.cross_layers for kv in ("key", "value")]

    def prefill(self) -> tuple[list[str], list[str]]:
        """``(input names, output names)`` of the prefill graph."""
        return ["input_ids", "encoder_hidden"], ["logits", *self.self_cache, *self.cross_cache]

    def step(self) -> tuple[list[str], list[str]]:
        """``(input names, output names)`` of the step graph."""
        return ["input_ids", "position", *self.past_self_cache, *self.cross_cache], ["logits", *self.self_cache]


def check_output_vocab(output_vocab: Sequence[int] | None, vocab_size: int) -> list[int] | None:
    """``output_vocab`` as a list of distinct ids in ``[0, vocab_size)``, or ``None``; else a ``ConfigError``."""
    if output_vocab is None:
        return None
    ids = [int(i) for i in output_vocab]
    if not ids:
        raise ConfigError("output_vocab is empty")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(f"output_vocab has ids outside [0, {vocab_size}): {bad[:5]}")
    if len(set(ids)) != len(ids):
        raise ConfigError("output_vocab repeats token ids")
    return ids


class _DecoderCore(nn.Module):
    """What prefill and step share: embeddings, the layers' present blocks, the final norm, the projection."""

    def __init__(self, model: nn.Module, output_vocab: Sequence[int] | None = None):
        super().__init__()
        dec = model.model.decoder
        self.tokens, self.positions, self.norm, self.proj = (dec.embed_tokens, dec.embed_positions, dec.layer_norm,
                                                             model.proj_out)
        self.embed_scale = float(dec.embed_scale)
        self.self_attn = _optional([_self_attn(l) for l in dec.layers])
        self.cross_attn = _optional([_cross_attn(l) for l in dec.layers])
        self.ffn = _optional([_ffn(l) for l in dec.layers])
        self.io = DecoderIO(tuple(i for i, l in enumerate(dec.layers) if l.self_attn is not None),
                            tuple(i for i, l in enumerate(dec.layers) if l.encoder_attn is not None))
        if not self.io.self_layers:
            raise ConfigError("a Whisper decoder without any self-attention block cannot decode incrementally")
        ids = check_output_vocab(output_vocab, self.proj.out_features)
        self.output_vocab = ids
        self.register_buffer("vocab_index", None if ids is None else torch.tensor(ids, dtype=torch.long),
                             persistent=False)

    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.tokens(input_ids) * self.embed_scale + positions

    def logits(self, h_last: torch.Tensor) -> torch.Tensor:
        """``[N, d] -> [N, V_out]``: a MatMul on a constant weight (Gemm would escape dynamic quantization)."""
        w = self.proj.weight if self.vocab_index is None else self.proj.weight.index_select(0, self.vocab_index)
        return torch.matmul(self.norm(h_last), w.t())

    def run(self, h: torch.Tensor, encoder_hidden: torch.Tensor | None, past: list[torch.Tensor],
            cross: list[torch.Tensor], mask: torch.Tensor | None) -> tuple[torch.Tensor, list, list]:
        """The layers over ``h [N, S, d]``. Self-attention appends to ``past`` (K/V per present block, or empty
        lists in prefill); cross-attention projects ``encoder_hidden`` when ``cross`` is empty, else uses it.
        Returns ``(logits, self K/V, cross K/V)``."""
        new_self, new_cross = [], []
        si = ci = 0
        for attn, xattn, ffn in zip(self.self_attn, self.cross_attn, self.ffn):
            if isinstance(attn, _Attention):
                a = attn.norm(h)
                k, v = attn.key_value(a)
                if past:
                    k, v = torch.cat([past[si], k], dim=2), torch.cat([past[si + 1], v], dim=2)
                    si += 2
                h = h + attn.out(attend(attn.query(a), k, v, mask))
                new_self += [k, v]
            if isinstance(xattn, _Attention):
                a = xattn.norm(h)
                if cross:
                    k, v = cross[ci], cross[ci + 1]
                    ci += 2
                else:
                    k, v = xattn.key_value(encoder_hidden)
                h = h + xattn.out(attend(xattn.query(a), k, v))
                new_cross += [k, v]
            if isinstance(ffn, _FFN):
                h = ffn(h)
        return self.logits(h[:, -1]), new_self, new_cross


class WhisperPrefillGraph(nn.Module):
    """The prompt in one pass: ``(input_ids [N, P], encoder_hidden [B, T, d]) -> (logits [N, V_out], *self K/V,
    *cross K/V)`` in ``DecoderIO.prefill()`` order, positions ``0..P-1``."""

    def __init__(self, core: _DecoderCore):
        super().__init__()
        self.core = core

    def forward(self, input_ids: torch.Tensor, encoder_hidden: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p = input_ids.shape[1]
        h = self.core.embed(input_ids, self.core.positions.weight[:p])
        logits, new_self, new_cross = self.core.run(h, encoder_hidden, [], [], causal_mask(p, h))
        return (logits, *new_self, *new_cross)


class WhisperStepGraph(nn.Module):
    """One new token per row: ``(input_ids [N, 1], position [1], *past self K/V, *cross K/V) -> (logits [N, V_out],
    *self K/V)`` in ``DecoderIO.step()`` order."""

    def __init__(self, core: _DecoderCore):
        super().__init__()
        self.core = core

    def forward(self, input_ids: torch.Tensor, position: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n_self = len(self.core.io.self_cache)
        past, cross = list(caches[:n_self]), list(caches[n_self:])
        h = self.core.embed(input_ids, self.core.positions.weight.index_select(0, position))
        logits, new_self, _ = self.core.run(h, None, past, cross, None)
        return (logits, *new_self)


@dataclass
class WhisperGraphs:
    encoder: WhisperEncoderGraph
    prefill: WhisperPrefillGraph
    step: WhisperStepGraph

    @property
    def io(self) -> DecoderIO:
        return self.prefill.core.io

    @property
    def output_vocab(self) -> list[int] | None:
        return self.prefill.core.output_vocab


def whisper_graphs(model: nn.Module, output_vocab: Sequence[int] | None = None) -> WhisperGraphs:
    """The three graphs of a ``WhisperForConditionalGeneration`` (dense or pruned), in eval mode, sharing its
    parameters; prefill and step share one decoder core."""
    core = _DecoderCore(model, output_vocab)
    return WhisperGraphs(WhisperEncoderGraph(model).eval(), WhisperPrefillGraph(core).eval(),
                         WhisperStepGraph(core).eval())
