"""Context-aware gates on a Whisper model (issue 20, items 2-3): a gated forward that really skips, and the static
pruned model of one gate vector.

The gated modules are every present removable block, named as the adapter names them: ``encoder.<i>.self_attn``,
``encoder.<i>.ffn``, ``decoder.<i>.self_attn``, ``decoder.<i>.cross_attn``, ``decoder.<i>.ffn`` (``gate_modules``).
A block is a pre-norm residual branch ``h + f(norm(h))``; gated off (keep 0), neither its LayerNorm nor its
projections run and the residual stream passes through unchanged.

Everything runs the blocks of :mod:`.graph` (which reference the model's own modules, never copies), so no
transformer code is repeated here:

- ``GatedWhisper``: the predictor (``models.gates.GatePredictor``) beside the model, and a teacher-forced forward
  ``(features, decoder ids, keep [B, M]) -> logits [B, P, V]``. Gates may differ between rows: with ``real_skip``
  a block runs only on the rows that keep it (gathered, then added back with ``index_add``) and not at all when no
  row does. In training the gates carry gradients and ``real_skip=False`` runs every block on every row, multiplied
  by its 0/1 gate: the values are the same, and a skipped block's gate still gets the straight-through gradient
  ``<dL/dh, f(h)>`` from the task loss (with real skipping it would learn from the sparsity loss alone and never
  turn back on).
- ``gated_graphs(model, keep)``: the encoder / prefill / step graphs of :mod:`.graph` with the gated-off blocks left
  out, so incremental decoding with the key/value cache skips them too (their cache slots do not exist). One gate
  vector per decoded batch: ``gated_greedy`` groups utterances by their gate vector and decodes each group.
- ``deploy_static(model, keep)``: a copy physically pruned with the adapter's surgery (``remove_module``, then
  ``remove_layers`` for layers left empty): a pruned model like any other, saved and exported by the usual code.
  ``static_gates`` gives the vector of a (language, task) and refuses when it depends on the audio.
"""

from __future__ import annotations

import copy
from typing import Mapping, Sequence

import torch
from torch import nn

from speechprune.errors import ConfigError

from ..gates import GateConfig, GatePredictor
from .adapter import WhisperAdapter
from .graph import (DecoderIO, WhisperEncoderGraph, WhisperGraphs, _Attention, _DecoderCore, _FFN, attend,
                    causal_mask, encoder_self_attention, whisper_graphs)

_KINDS = {"encoder": ("self_attn", "ffn"), "decoder": ("self_attn", "cross_attn", "ffn")}


def gate_modules(model: nn.Module) -> tuple[str, ...]:
    """Every present removable block of ``model`` in model order (stack, layer, block): the gate order."""
    adapter = WhisperAdapter()
    return tuple(f"{stack}.{i}.{kind}" for stack in ("encoder", "decoder")
                 for i, layer in enumerate(adapter.stack_module(model, stack).layers)
                 for kind in adapter._present_kinds(layer, stack))


def whisper_gate_config(model: nn.Module, vocab, **settings) -> GateConfig:
    """A ``GateConfig`` for ``model``: its gate modules, the languages of its tokenizer (``vocab``: a
    ``WhisperVocab``; an English-only model knows ``en`` only), its mel bins; ``settings`` set the rest."""
    languages = tuple(vocab.lang_to_id) or ("en",)
    return GateConfig(modules=gate_modules(model), languages=languages,
                      n_features=int(model.config.num_mel_bins), **settings)


def keep_map(modules: Sequence[str], keep) -> dict[str, bool]:
    """Gates as ``{module: keep}``: from a mapping (every module named, nothing else), a sequence of 0/1 values in
    ``modules`` order, or a ``[M]`` tensor. One-line ``ConfigError`` otherwise."""
    if isinstance(keep, Mapping):
        unknown = [k for k in keep if k not in modules]
        missing = [m for m in modules if m not in keep]
        if unknown or missing:
            what = f"unknown module {unknown[0]!r}" if unknown else f"no gate for {missing[0]!r}"
            raise ConfigError(f"gates do not fit the model: {what}")
        values = [keep[m] for m in modules]
    else:
        values = keep.tolist() if isinstance(keep, torch.Tensor) else list(keep)
        if len(values) != len(modules):
            raise ConfigError(f"{len(values)} gates for {len(modules)} gated modules")
    bad = [v for v in values if v not in (0, 1)]  # True/False and 0.0/1.0 pass
    if bad:
        raise ConfigError(f"gates are 0 (skip) or 1 (keep), got {bad[0]!r}")
    return {m: bool(v) for m, v in zip(modules, values)}


def _gated(h: torch.Tensor, g: torch.Tensor, branch, real_skip: bool) -> torch.Tensor:
    """``h + g * branch(h)`` per row for gates ``g [B]`` of 0/1 values. With ``real_skip`` the branch runs on the
    rows whose gate is 1 only (``branch(x, rows)``, ``rows`` None for all) and not at all when none is."""
    if not real_skip:
        return h + g[:, None, None] * branch(h, None)
    rows = torch.nonzero(g).flatten()
    if rows.numel() == 0:
        return h
    if rows.numel() == h.shape[0]:
        return h + g[:, None, None] * branch(h, None)
    return h.index_add(0, rows, g[rows, None, None] * branch(h.index_select(0, rows), rows))


class GatedWhisper(nn.Module):
    """A Whisper model with a gate predictor. ``model`` is referenced, not copied (training the gates alone:
    freeze it). ``config.modules`` must be ``gate_modules(model)``."""

    def __init__(self, model: nn.Module, config: GateConfig):
        super().__init__()
        modules = gate_modules(model)
        if tuple(config.modules) != modules:
            extra = sorted(set(config.modules) ^ set(modules))
            raise ConfigError(f"gate config does not fit the model: its modules differ at {extra[0] if extra else 'order'}")
        if int(model.config.num_mel_bins) != config.n_features:
            raise ConfigError(f"gate config pools {config.n_features} features; the model reads "
                              f"{model.config.num_mel_bins} mel bins")
        self.model = model
        self.predictor = GatePredictor(config)
        self.encoder = WhisperEncoderGraph(model)
        self.decoder = _DecoderCore(model)
        self.index = {m: i for i, m in enumerate(modules)}

    @property
    def modules_gated(self) -> tuple[str, ...]:
        return self.predictor.config.modules

    def gates(self, languages, tasks, features: torch.Tensor, tau: float | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Keep gates ``[B, M]`` for each item's context (``GatePredictor.gates``: straight-through Gumbel at
        ``tau`` in training mode, argmax in eval mode)."""
        return self.predictor.gates(languages, tasks, features, tau, generator)

    def encode(self, features: torch.Tensor, keep: torch.Tensor, real_skip: bool = True) -> torch.Tensor:
        """``features [B, n_mels, 2 P] -> [B, P, d]`` with the encoder's blocks gated by ``keep [B, M]``."""
        enc = self.encoder
        x = nn.functional.gelu(enc.conv1(features))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
        h = x + enc.positions.weight[: x.shape[1]]
        for i, (attn, ffn) in enumerate(zip(enc.attn, enc.ffn)):
            if isinstance(attn, _Attention):
                def branch(x, rows, attn=attn):
                    a = attn.norm(x)
                    return attn.out(encoder_self_attention(attn.query(a), attn.k(a), attn.v(a), attn.n_heads))

                h = _gated(h, keep[:, self.index[f"encoder.{i}.self_attn"]], branch, real_skip)
            if isinstance(ffn, _FFN):
                h = _gated(h, keep[:, self.index[f"encoder.{i}.ffn"]], _ffn_branch(ffn), real_skip)
        return enc.norm(h)

    def decode(self, input_ids: torch.Tensor, encoder_hidden: torch.Tensor, keep: torch.Tensor,
               real_skip: bool = True) -> torch.Tensor:
        """Teacher forcing: ``input_ids [B, P]`` over ``encoder_hidden [B, T, d]`` -> logits ``[B, P, V]``, the
        decoder's blocks gated by ``keep [B, M]``."""
        core = self.decoder
        p = input_ids.shape[1]
        h = core.embed(input_ids, core.positions.weight[:p])
        mask = causal_mask(p, h)
        for i, (attn, xattn, ffn) in enumerate(zip(core.self_attn, core.cross_attn, core.ffn)):
            if isinstance(attn, _Attention):
                def branch(x, rows, attn=attn):
                    a = attn.norm(x)
                    k, v = attn.key_value(a)
                    return attn.out(attend(attn.query(a), k, v, mask))

                h = _gated(h, keep[:, self.index[f"decoder.{i}.self_attn"]], branch, real_skip)
            if isinstance(xattn, _Attention):
                def cross(x, rows, xattn=xattn):
                    mem = encoder_hidden if rows is None else encoder_hidden.index_select(0, rows)
                    k, v = xattn.key_value(mem)
                    return xattn.out(attend(xattn.query(xattn.norm(x)), k, v))

                h = _gated(h, keep[:, self.index[f"decoder.{i}.cross_attn"]], cross, real_skip)
            if isinstance(ffn, _FFN):
                h = _gated(h, keep[:, self.index[f"decoder.{i}.ffn"]], _ffn_branch(ffn), real_skip)
        return core.logits(h)

    def forward(self, input_features: torch.Tensor, decoder_input_ids: torch.Tensor, keep: torch.Tensor,
                real_skip: bool | None = None) -> torch.Tensor:
        """Logits ``[B, P, V]`` of the gated model. ``real_skip`` defaults to True unless ``keep`` carries a
        gradient (training: every block runs, times its gate; same values, see the module docstring)."""
        if keep.dim() != 2 or keep.shape != (input_features.shape[0], len(self.index)):
            raise ConfigError(f"gates must be [batch, {len(self.index)}], got {list(keep.shape)}")
        if real_skip is None:
            real_skip = not keep.requires_grad
        keep = keep.to(self.decoder.proj.weight.dtype)
        enc = self.encode(input_features, keep, real_skip)
        return self.decode(decoder_input_ids, enc, keep, real_skip)


def _ffn_branch(ffn: _FFN):
    def branch(x, rows):
        return ffn.fc2(ffn.act(ffn.fc1(ffn.norm(x))))

    return branch


def gated_graphs(model: nn.Module, keep, output_vocab: Sequence[int] | None = None) -> WhisperGraphs:
    """``graph.whisper_graphs`` of ``model`` with every block whose gate is 0 left out (one gate vector: a mapping,
    a 0/1 sequence in ``gate_modules`` order, or a ``[M]`` tensor): the encoder, prefill and step graphs never call
    it, and the decoder's caches hold only the kept blocks' keys and values. Parameters are shared with
    ``model``."""
    gates = keep_map(gate_modules(model), keep)
    graphs = whisper_graphs(model, output_vocab)
    enc, core = graphs.encoder, graphs.prefill.core
    for key, on in gates.items():
        if on:
            continue
        stack, i, kind = key.split(".")
        if stack == "encoder":
            (enc.attn if kind == "self_attn" else enc.ffn)[int(i)] = nn.Identity()
        else:
            {"self_attn": core.self_attn, "cross_attn": core.cross_attn, "ffn": core.ffn}[kind][int(i)] = nn.Identity()
    core.io = DecoderIO(tuple(i for i, a in enumerate(core.self_attn) if isinstance(a, _Attention)),
                        tuple(i for i, a in enumerate(core.cross_attn) if isinstance(a, _Attention)))
    if not core.io.self_layers:
        raise ConfigError("these gates skip every decoder self_attn; at least one must be kept to decode")
    return graphs


@torch.inference_mode()
def gated_greedy(model: nn.Module, vocab, features: torch.Tensor, prompts: list[list[int]], keep: torch.Tensor,
                 max_new_tokens: int = 224) -> list[list[int]]:
    """Greedy decoding (``decoding.greedy_search``, key/value cache) of ``features [B, n_mels, frames]`` with each
    item's gates ``keep [B, M]``: items with one gate vector decode together through ``gated_graphs``. Returns the
    tokens per item, in order."""
    from .decoding import GraphCache, greedy_search

    if keep.dim() != 2 or keep.shape[0] != features.shape[0]:
        raise ConfigError(f"gates must be [batch, modules] for {features.shape[0]} items, got {list(keep.shape)}")
    out: list[list[int] | None] = [None] * features.shape[0]
    groups: dict[tuple[bool, ...], list[int]] = {}
    for b, row in enumerate(keep.tolist()):
        groups.setdefault(tuple(bool(v) for v in row), []).append(b)
    for vector, items in groups.items():
        graphs = gated_graphs(model, list(vector))
        enc = graphs.encoder(features[items])
        n_self = len(graphs.io.self_cache)

        def step(ids, cache, graphs=graphs, enc=enc, n_self=n_self):
            if cache.position == 0:
                res = graphs.prefill(ids, enc)
                cache.self_kv, cache.cross_kv, cache.position = list(res[1: 1 + n_self]), list(res[1 + n_self:]), \
                    ids.shape[1]
                return res[0]
            res = graphs.step(ids, torch.tensor([cache.position]), *cache.self_kv, *cache.cross_kv)
            cache.self_kv, cache.position = list(res[1:]), cache.position + 1
            return res[0]

        tokens, _ = greedy_search(step, lambda: GraphCache(group=1), [prompts[b] for b in items], vocab,
                                  max_new_tokens, device=features.device)
        for b, t in zip(items, tokens):
            out[b] = t
    return out  # type: ignore[return-value]


@torch.no_grad()
def static_gates(gated: GatedWhisper, language: str, task: str, features: torch.Tensor) -> dict[str, bool]:
    """The eval-mode gate vector of (``language``, ``task``) over the clips ``features [B, n_mels, frames]``, when it
    is the same for all of them; a one-line ``ConfigError`` when it depends on the audio (then the context needs the
    gated model, not a static one)."""
    was = gated.predictor.training
    gated.predictor.eval()
    try:
        keep = gated.gates([language] * features.shape[0], [task] * features.shape[0], features)
    finally:
        gated.predictor.train(was)
    differ = int((keep != keep[:1]).any(dim=1).sum())
    if differ:
        raise ConfigError(f"gates for ({language}, {task}) depend on the audio: {differ} of {keep.shape[0]} clips "
                          "differ from the first")
    return keep_map(gated.modules_gated, keep[0])


def deploy_static(model: nn.Module, keep) -> nn.Module:
    """A physically pruned copy of ``model`` without the blocks whose gate is 0 (``adapter.remove_module``; a layer
    left with no block is removed with ``remove_layers``, unless it is its stack's last). It computes what the gated
    model computes for that gate vector, and saves and exports like any pruned model. ``model`` is not changed."""
    gates = keep_map(gate_modules(model), keep)
    pruned = copy.deepcopy(model)
    adapter = WhisperAdapter()
    for key, on in gates.items():
        if not on:
            stack, i, kind = key.split(".")
            adapter.remove_module(pruned, stack, int(i), kind)
    for stack in ("encoder", "decoder"):
        layers = adapter.stack_module(pruned, stack).layers
        empty = [i for i, layer in enumerate(layers) if not adapter._present_kinds(layer, stack)]
        if len(empty) == len(layers):
            empty = empty[1:]
        adapter.remove_layers(pruned, stack, empty)
    return pruned


def check_gates_fit(trained, model: nn.Module, gates, name: str) -> None:
    """A one-line ``ConfigError`` when trained gates (``models.gates.TrainedGates``, from folder ``gates``) were
    trained for a model with other blocks or mel bins than ``model`` (called ``name``)."""
    modules = gate_modules(model)
    if tuple(trained.config.modules) != modules or int(model.config.num_mel_bins) != trained.config.n_features:
        raise ConfigError(f"gates {gates} do not fit model {name}: they gate {len(trained.config.modules)} blocks of "
                          f"{trained.meta.get('model', 'another model')}, it has {len(modules)}")
