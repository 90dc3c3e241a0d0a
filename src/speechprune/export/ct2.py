"""``--format ct2``: a (dense or pruned) Whisper folder -> a CTranslate2 folder that ``ctranslate2.models.Whisper`` and
``faster_whisper.WhisperModel`` run.

The family adapter supplies the weights under CT2 names (``whisper_ct2_variables``) and the per-layer structure
(``adapter.structure``); this module decides how each block is expressed in ctranslate2's ``WhisperSpec`` and lets
ctranslate2's own spec API validate, quantize and serialize it (``validate``, ``optimize``, ``save``: the steps of
its converters).

What the spec expresses natively (ctranslate2 4.8.5: C++ ``layers/attention_layer.cc``, ``layers/transformer.cc``;
each point is exercised by ``tests/export/test_ct2.py``):

- fewer layers;
- per-layer FFN widths: every ``Dense`` takes its shape from its own weight;
- fewer heads when every attention of a stack keeps the same number: ``num_heads`` is one scalar per stack (the
  decoder's covers self- and cross-attention), a head's size is the projection width / ``num_heads``, and the
  per-attention ``head_dim`` attribute keeps the 1/sqrt(head_dim) query scale;
- a removed cross-attention: a decoder layer builds it only when its variables exist. Except in decoder layer 0
  while a later layer keeps one: CT2 decides from layer 0 whether the layers receive the encoder output at all.

What it cannot, and how it is expressed instead, exactly (outputs unchanged, no speed gain; listed in the record):

- head counts that differ within a stack: every attention is zero-padded to the stack's largest count (zero q/k/v
  rows, zero output-projection columns: a padded head attends uniformly over zero values);
- a removed self-attention (always built), or that layer-0 cross-attention: a block of ``num_heads``
  one-dimensional heads with zero weights behind an identity layer norm (CT2 adds the residual only for blocks
  that have a layer norm; its values cannot matter, the block's output is zero);
- a removed FFN: width 1, zero weights and biases.

Low-rank factorized layers (``LowRankLinear``) are refused in one line: ``WhisperSpec`` has one ``Dense`` per
projection, and multiplying the factors back would ship the dense cost under a low-rank name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from speechprune.errors import ConfigError, ModelError
from speechprune.evaluate.backends import EXPORT_RECORD

RECORD_FILE = EXPORT_RECORD
# unit kind -> CT2 attention scope; its fused input projections as (linear, number of row blocks); output linear
_ATTENTION = {
    "self_attn": ("self_attention", (("linear_0", 3),), "linear_1"),
    "cross_attn": ("attention", (("linear_0", 1), ("linear_1", 2)), "linear_2"),
}


@dataclass
class _Layout:
    """How a structure maps onto ``WhisperSpec``: filled by ``_express``, read by ``_build_spec`` and the record."""

    num_heads: dict[str, int] = field(default_factory=dict)
    head_dim: dict[str, int] = field(default_factory=dict)  # attention scope -> head size != d_model / num_heads
    omitted: list[str] = field(default_factory=list)  # attention scopes left out of the spec
    native: list[str] = field(default_factory=list)
    not_native: list[dict[str, str]] = field(default_factory=list)


def _zeros(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


def _identity_norm(v: dict[str, np.ndarray], scope: str, d: int) -> None:
    v[f"{scope}/layer_norm/gamma"], v[f"{scope}/layer_norm/beta"] = np.ones(d, np.float32), _zeros(d)


def _pad_rows(w: np.ndarray, blocks: int, rows: int) -> np.ndarray:
    """Split ``w`` into ``blocks`` equal row blocks (q/k/v) and zero-pad each to ``rows`` rows."""
    return np.concatenate([np.concatenate([b, _zeros(rows - b.shape[0], *b.shape[1:])]) for b in np.split(w, blocks)])


def _pad_heads(v: dict[str, np.ndarray], scope: str, kind: str, inner: int) -> None:
    _, fused, out = _ATTENTION[kind]
    for linear, blocks in fused:
        for p in ("weight", "bias"):
            if f"{scope}/{linear}/{p}" in v:
                v[f"{scope}/{linear}/{p}"] = _pad_rows(v[f"{scope}/{linear}/{p}"], blocks, inner)
    w = v[f"{scope}/{out}/weight"]
    v[f"{scope}/{out}/weight"] = np.concatenate([w, _zeros(w.shape[0], inner - w.shape[1])], axis=1)


def _zero_attention(v: dict[str, np.ndarray], scope: str, kind: str, d: int, heads: int) -> None:
    _, fused, out = _ATTENTION[kind]
    _identity_norm(v, scope, d)
    for linear, blocks in fused:
        v[f"{scope}/{linear}/weight"], v[f"{scope}/{linear}/bias"] = _zeros(blocks * heads, d), _zeros(blocks * heads)
    v[f"{scope}/{out}/weight"], v[f"{scope}/{out}/bias"] = _zeros(d, heads), _zeros(d)


def _zero_ffn(v: dict[str, np.ndarray], scope: str, d: int) -> None:
    _identity_norm(v, scope, d)
    v[f"{scope}/linear_0/weight"], v[f"{scope}/linear_0/bias"] = _zeros(1, d), _zeros(1)
    v[f"{scope}/linear_1/weight"], v[f"{scope}/linear_1/bias"] = _zeros(d, 1), _zeros(d)


def _express(structure: dict, v: dict[str, np.ndarray], d: int) -> _Layout:
    """Fit the per-layer ``structure`` (``adapter.structure``) into ``WhisperSpec``: pad or fill ``v`` in place
    where the spec cannot express a block, and say which blocks were expressed how."""
    layout = _Layout()
    for stack in ("encoder", "decoder"):
        original, layers = structure[stack]["original"], structure[stack]["layers"]
        hd = original["head_dim"]
        kinds = [k for k in _ATTENTION if k in layers[0]]
        counts = {e[k] for e in layers for k in kinds if e[k] is not None}
        heads = layout.num_heads[stack] = max(counts, default=1)
        if len(layers) < original["layers"]:
            layout.native.append(f"{stack}: {len(layers)} of {original['layers']} layers")
        if counts == {heads} and heads < original["heads"]:
            layout.native.append(f"{stack}: {heads} of {original['heads']} heads in every attention")
        widths = [e["ffn"] for e in layers]
        if any(w is not None and w != original["ffn"] for w in widths):
            layout.native.append(f"{stack}: FFN widths {widths} (of {original['ffn']})")
        any_cross = "cross_attn" in kinds and any(e["cross_attn"] is not None for e in layers)
        for i, entry in enumerate(layers):
            for kind in kinds:
                scope, block, n = f"{stack}/layer_{i}/{_ATTENTION[kind][0]}", f"{stack}.{i}.{kind}", entry[kind]
                if n is None and kind == "cross_attn" and not (i == 0 and any_cross):
                    layout.omitted.append(scope)
                    layout.native.append(f"{block}: removed (variables left out)")
                elif n is None:
                    _zero_attention(v, scope, kind, d, heads)
                    layout.head_dim[scope] = 1
                    layout.not_native.append({"block": block, "pruned": "removed",
                                              "expressed_as": f"zero block of {heads} one-dimensional heads"})
                else:
                    if n < heads:
                        _pad_heads(v, scope, kind, heads * hd)
                        layout.not_native.append({"block": block, "pruned": f"{n} of {original['heads']} heads",
                                                  "expressed_as": f"zero-padded to {heads} heads"})
                    if heads * hd != d:
                        layout.head_dim[scope] = hd
            if entry["ffn"] is None:
                _zero_ffn(v, f"{stack}/layer_{i}/ffn", d)
                layout.not_native.append({"block": f"{stack}.{i}.ffn", "pruned": "removed",
                                          "expressed_as": "FFN of width 1 with zero weights"})
    return layout


def _build_spec(structure: dict, v: dict[str, np.ndarray], layout: _Layout):
    from ctranslate2.specs import attention_spec, model_spec, whisper_spec

    spec = whisper_spec.WhisperSpec(
        len(structure["encoder"]["layers"]), layout.num_heads["encoder"],
        len(structure["decoder"]["layers"]), layout.num_heads["decoder"],
    )
    for stack, stack_spec in (("encoder", spec.encoder), ("decoder", spec.decoder)):
        for i, layer_spec in enumerate(stack_spec.layer):
            for kind, (name, _, _) in _ATTENTION.items():
                scope = f"{stack}/layer_{i}/{name}"
                if scope in layout.omitted:
                    delattr(layer_spec, name)
                elif scope in layout.head_dim:
                    setattr(layer_spec, name, attention_spec.MultiHeadAttentionSpec(
                        self_attention=kind == "self_attn", head_dim=layout.head_dim[scope]))
    for name, value in v.items():
        scope, attr = name.rsplit("/", 1)
        setattr(model_spec.index_spec(spec, scope), attr, value)
    return spec


def _alignment_heads(generation_config, decoder: dict) -> tuple[list[list[int]], str]:
    """The generation config's alignment heads while the decoder's cross-attention is untouched; otherwise their
    original indices cannot be mapped (the structure keeps counts, not which heads or layers survived), so
    ctranslate2's converter default applies over the real heads: the last half of the layers, all their heads."""
    original, layers = decoder["original"], decoder["layers"]
    given = getattr(generation_config, "alignment_heads", None)
    untouched = len(layers) == original["layers"] and all(e["cross_attn"] == original["heads"] for e in layers)
    if untouched and given:
        return [[int(layer), int(head)] for layer, head in given], "generation_config"
    real = [(i, e["cross_attn"]) for i, e in enumerate(layers) if e["cross_attn"] is not None]
    late = [(i, n) for i, n in real if i >= len(layers) // 2] or real
    return [[i, h] for i, n in late for h in range(n)], "default: last half of the decoder layers, every kept head"


def _vocabulary(tokenizer, vocab_size: int, tokenizer_file: Path) -> list[str]:
    """The token of every id, then timestamp tokens up to the model's vocabulary size (ctranslate2's rule)."""
    vocab = tokenizer.get_vocab()
    if sorted(vocab.values()) != list(range(len(vocab))) or len(vocab) > vocab_size:
        raise ModelError(f"tokenizer ids are not 0..{len(vocab) - 1} within the model's {vocab_size} outputs",
                         tokenizer_file)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    return tokens + ["<|%.2f|>" % (i * 0.02) for i in range(vocab_size - len(tokens))]


def export_ct2(model_dir: str | Path, out_dir: str | Path, quantization: str | None = None, *,
               overwrite: bool = False) -> dict[str, Any]:
    """Write the Whisper folder ``model_dir`` (dense or pruned) as a CTranslate2 folder ``out_dir``, atomically.

    ``out_dir`` gets ``model.bin``, ``config.json`` (suppress_ids, suppress_ids_begin, lang_ids, alignment_heads),
    ``vocabulary.json``, ``tokenizer.json``, ``preprocessor_config.json`` and the returned record as
    ``speechprune_export.json``. ``quantization`` (``int8``, ``int8_float32``, ``float16``, ...; ``None`` keeps
    float32) is applied to the stored weights by ctranslate2's ``spec.optimize``; faster-whisper's ``compute_type``
    can still convert at load time. The record lists the structure, what CT2 expresses natively, and under
    ``not_native`` each block expressed by zero-padding or zero blocks instead (exact, no speed gain).
    A non-empty ``out_dir`` is refused unless ``overwrite``.
    """
    import ctranslate2
    from ctranslate2.specs.model_spec import ACCEPTED_MODEL_TYPES

    from speechprune.io import check_output_dir, staged_dir
    from speechprune.models.adapters import adapter_for
    from speechprune.models.whisper.convert import whisper_ct2_variables, whisper_token_ids
    from speechprune.models.whisper.load import load_whisper

    folder, out = Path(model_dir), Path(out_dir)
    if quantization is not None and quantization not in ACCEPTED_MODEL_TYPES:
        raise ConfigError(f"unknown CTranslate2 quantization {quantization!r}; "
                          f"choose from {', '.join(ACCEPTED_MODEL_TYPES)}")
    check_output_dir(out, overwrite, source=folder)
    tokenizer_file = folder / "tokenizer.json"
    if folder.is_dir() and not tokenizer_file.is_file():  # faster-whisper would fetch one from the hub without it
        raise ModelError("no tokenizer.json, which faster-whisper needs beside the model", folder)
    model, processor = load_whisper(folder)
    from speechprune.models.lowrank import lowrank_ranks

    ranks = lowrank_ranks(model)
    if ranks:  # WhisperSpec has one Dense per projection; multiplying the factors back would give no speed
        raise ConfigError(f"CTranslate2 cannot express low-rank factorized layers ({len(ranks)} here, e.g. "
                          f"{next(iter(ranks))}); export with --format onnx instead", folder)
    structure = adapter_for(model).structure(model)
    try:
        variables = whisper_ct2_variables(model)
    except ModelError as e:  # it knows the model, not the folder
        raise ModelError(str(e), folder) from None
    d_model, vocab_size = int(model.config.d_model), int(model.proj_out.out_features)
    layout = _express(structure, variables, d_model)
    spec = _build_spec(structure, variables, layout)

    gen = model.generation_config
    lang_to_id = getattr(gen, "lang_to_id", None) or whisper_token_ids(
        json.loads(tokenizer_file.read_text(encoding="utf-8")), vocab_size)["languages"]
    alignment_heads, alignment_source = _alignment_heads(gen, structure["decoder"])
    spec.config.suppress_ids = [int(t) for t in gen.suppress_tokens or []]
    spec.config.suppress_ids_begin = [int(t) for t in gen.begin_suppress_tokens or []]
    spec.config.lang_ids = sorted(int(i) for i in lang_to_id.values())
    spec.config.alignment_heads = alignment_heads
    spec.register_vocabulary(_vocabulary(processor.tokenizer, vocab_size, tokenizer_file))
    spec.register_file(str(tokenizer_file))
    try:
        spec.validate()
    except ValueError as e:
        raise ModelError(f"CTranslate2 WhisperSpec rejects the export: {' '.join(str(e).split())}", folder) from e
    spec.optimize(quantization=quantization)

    record = {
        "format": "ct2",
        "source": str(folder),
        "out": str(out),
        "quantization": quantization or "float32",
        "ctranslate2_version": ctranslate2.__version__,
        "layers": {s: len(structure[s]["layers"]) for s in ("encoder", "decoder")},
        "num_heads": layout.num_heads,
        "head_dim": {s: structure[s]["original"]["head_dim"] for s in ("encoder", "decoder")},
        "structure": structure,
        # with generation_config.json: what a runner needs to decode and count FLOPs, without the source folder
        "hf_config": model.config.to_diff_dict(),
        "params": sum(p.numel() for p in model.parameters()),
        "native": layout.native,
        "not_native": layout.not_native,
        "alignment_heads": alignment_source,
    }
    with staged_dir(out) as tmp:
        spec.save(str(tmp))
        (tmp / "preprocessor_config.json").write_text(
            json.dumps(processor.feature_extractor.to_dict(), indent=2) + "\n", encoding="utf-8")
        gen.to_json_file(tmp / "generation_config.json")
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record
