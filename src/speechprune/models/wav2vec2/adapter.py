"""The Wav2Vec2 adapter: units, surgery and structure of a Hugging Face ``Wav2Vec2ForCTC`` (the family's other
modules run the model's parts; only this one changes them).

One stack, ``encoder`` (the transformer over the conv features). Unit groups: the heads of every self-attention
(``attention.q_proj/k_proj/v_proj`` rows and biases, ``out_proj`` columns) and the neurons of every FFN
(``feed_forward.intermediate_dense`` rows and bias, ``output_dense`` columns). Removable modules: ``self_attn``
and ``ffn``; the conv feature encoder cannot be removed.

A removed block becomes ``None`` and its layer's class a ``PrunedWav2Vec2EncoderLayer[StableLayerNorm]`` that
skips it. With the default post-norm layout (``do_stable_layer_norm=False``: ``x = LN(x + attn(x))``) the layer
norm sits on the residual stream, not on the branch, so it STAYS when its block goes; the layer is then exactly
the dense one with the branch output zeroed. With the pre-norm layout the block's norm goes with it.
"""

from __future__ import annotations

from typing import Any

from speechprune.errors import ConfigError, ModelError
from speechprune.models.units import ORIGINAL_KEYS, STRUCTURE_FORMAT, STRUCTURE_KEY

_STACKS = ("encoder",)
_KINDS = ("self_attn", "ffn")
_PRUNED_CLASSES: dict[str, type] = {}


def _pruned_layer_classes() -> dict[str, type]:
    """The pruned layer classes, defined on first use (transformers is heavy to import); reachable as attributes of
    this module, so pickling finds them."""
    if _PRUNED_CLASSES:
        return _PRUNED_CLASSES
    from transformers.models.wav2vec2.modeling_wav2vec2 import (
        Wav2Vec2EncoderLayer,
        Wav2Vec2EncoderLayerStableLayerNorm,
    )

    class PrunedWav2Vec2EncoderLayer(Wav2Vec2EncoderLayer):
        """Post-norm ``Wav2Vec2EncoderLayer`` whose removed blocks (``None``) add nothing to the residual stream;
        the norms stay. Otherwise transformers 5.x ``Wav2Vec2EncoderLayer.forward`` line for line."""

        def forward(self, hidden_states, attention_mask=None, **kwargs):
            if self.attention is not None:
                attn_residual = hidden_states
                hidden_states, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
                hidden_states = self.dropout(hidden_states)
                hidden_states = attn_residual + hidden_states
            hidden_states = self.layer_norm(hidden_states)
            if self.feed_forward is not None:
                hidden_states = hidden_states + self.feed_forward(hidden_states)
            hidden_states = self.final_layer_norm(hidden_states)
            return hidden_states

    class PrunedWav2Vec2EncoderLayerStableLayerNorm(Wav2Vec2EncoderLayerStableLayerNorm):
        """Pre-norm layer whose removed blocks (``None``, with their norms) pass the residual stream through."""

        def forward(self, hidden_states, attention_mask=None, **kwargs):
            if self.attention is not None:
                attn_residual = hidden_states
                hidden_states = self.layer_norm(hidden_states)
                hidden_states, _ = self.attention(hidden_states, attention_mask=attention_mask, **kwargs)
                hidden_states = self.dropout(hidden_states)
                hidden_states = attn_residual + hidden_states
            if self.feed_forward is not None:
                hidden_states = hidden_states + self.feed_forward(self.final_layer_norm(hidden_states))
            if self.adapter_layer is not None:
                hidden_states = hidden_states + self.adapter_layer(hidden_states)
            return hidden_states

    for cls in (PrunedWav2Vec2EncoderLayer, PrunedWav2Vec2EncoderLayerStableLayerNorm):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        _PRUNED_CLASSES[cls.__name__] = cls
    return _PRUNED_CLASSES


def __getattr__(name: str):
    if name in ("PrunedWav2Vec2EncoderLayer", "PrunedWav2Vec2EncoderLayerStableLayerNorm"):
        return _pruned_layer_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _present(layer, kind: str) -> bool:
    return (layer.attention if kind == "self_attn" else layer.feed_forward) is not None


def _n_units(layer, kind: str) -> int:
    return layer.attention.num_heads if kind == "self_attn" else layer.feed_forward.intermediate_dense.out_features


def _stable(model) -> bool:
    return bool(model.config.do_stable_layer_norm)


def _block_names(model, kind: str) -> tuple[str, ...]:
    """The submodules a removed block takes with it (its norm only in the pre-norm layout)."""
    if kind == "self_attn":
        return ("attention", "layer_norm") if _stable(model) else ("attention",)
    return ("feed_forward", "final_layer_norm") if _stable(model) else ("feed_forward",)


def _config_original(config) -> dict:
    heads = int(config.num_attention_heads)
    return {"layers": int(config.num_hidden_layers), "heads": heads, "head_dim": int(config.hidden_size) // heads,
            "ffn": int(config.intermediate_size)}


class Wav2Vec2Adapter:
    """Units, surgery and structure of a Hugging Face ``Wav2Vec2ForCTC`` (see ``units.Adapter``)."""

    family = "wav2vec2"

    def stacks(self, model) -> tuple[str, ...]:
        return _STACKS

    def stack_module(self, model, stack: str):
        if stack not in _STACKS:
            raise ConfigError(f"unknown stack {stack!r} for wav2vec2; it has only the encoder stack")
        return model.wav2vec2  # the convolutional feature encoder and the transformer; the CTC head stays apart

    def _layers(self, model, stack: str):
        return self.stack_module(model, stack).encoder.layers

    def n_layers(self, model, stack: str) -> int:
        return len(self._layers(model, stack))

    def module_kinds(self, model, stack: str) -> tuple[str, ...]:
        self._layers(model, stack)
        return _KINDS

    def _layer(self, model, stack: str, layer: int):
        from speechprune.models.units import check_layer_indices

        layers = self._layers(model, stack)
        return layers[check_layer_indices(f"wav2vec2 {stack}", len(layers), [layer])[0]]

    @staticmethod
    def _check_kind(kind: str) -> None:
        from speechprune.models.units import MODULE_KINDS

        if kind == "conv":
            raise ConfigError(
                "wav2vec2's conv feature encoder cannot be removed: it turns the waveform into frames "
                "(removable: self_attn, ffn)"
            )
        if kind == "cross_attn":
            raise ConfigError("wav2vec2 has no cross_attn (an encoder-only model); choose from self_attn, ffn")
        if kind not in MODULE_KINDS:
            raise ConfigError(f"unknown module kind {kind!r}; choose from {', '.join(_KINDS)}")

    # ----- units

    def unit_groups(self, model) -> list:
        from speechprune.models.units import ParamSlice, UnitGroup

        groups = []
        for i, layer in enumerate(self._layers(model, "encoder")):
            if layer.attention is not None:
                attn = layer.attention
                hd = attn.head_dim
                projections = (attn.q_proj, attn.k_proj, attn.v_proj)
                params = [ParamSlice(p.weight, 0, hd) for p in projections]
                params += [ParamSlice(p.bias, 0, hd) for p in projections if p.bias is not None]
                params.append(ParamSlice(attn.out_proj.weight, 1, hd))
                groups.append(UnitGroup("encoder", i, "self_attn", attn.num_heads, hd, params, attn.out_proj))
            if layer.feed_forward is not None:
                up, down = layer.feed_forward.intermediate_dense, layer.feed_forward.output_dense
                params = [ParamSlice(up.weight, 0, 1), ParamSlice(up.bias, 0, 1), ParamSlice(down.weight, 1, 1)]
                groups.append(UnitGroup("encoder", i, "ffn", up.out_features, 1, params, down))
        return groups

    def weight_sites(self, model) -> list:
        from speechprune.models.units import WeightSite

        sites = []

        def add(key, layer, component, role, parent, attr):
            if getattr(parent, attr, None) is not None:
                sites.append(WeightSite(key, "encoder", layer, component, role, parent, attr))

        for j, conv_layer in enumerate(model.wav2vec2.feature_extractor.conv_layers):
            add(f"encoder.conv.{j}", None, "conv", str(j), conv_layer, "conv")
        fp = model.wav2vec2.feature_projection
        add("encoder.embed.projection", None, "embed", "projection", fp, "projection")
        for i, layer in enumerate(self._layers(model, "encoder")):
            if layer.attention is not None:
                for role in ("q", "k", "v", "out"):
                    add(f"encoder.{i}.self_attn.{role}", i, "self_attn", role, layer.attention, f"{role}_proj")
            if layer.feed_forward is not None:
                add(f"encoder.{i}.ffn.in", i, "ffn", "in", layer.feed_forward, "intermediate_dense")
                add(f"encoder.{i}.ffn.out", i, "ffn", "out", layer.feed_forward, "output_dense")
            for kind, name in zip(_KINDS, ("layer_norm", "final_layer_norm")):
                if getattr(layer, name, None) is not None:
                    add(f"encoder.{i}.{kind}.norm", i, "norm", kind, layer, name)
        add("encoder.norm", None, "norm", "final", model.wav2vec2.encoder, "layer_norm")
        add("encoder.embed.output", None, "embed", "output", model, "lm_head")
        return sites

    def prune_units(self, model, group, keep: list[int]) -> None:
        from speechprune.models.units import check_keep

        layer = self._layer(model, group.stack, group.layer)
        if group.kind not in _KINDS:
            self._check_kind(group.kind)
            raise ConfigError(f"unknown unit group kind {group.kind!r}; choose from {', '.join(_KINDS)}")
        if not _present(layer, group.kind):
            raise ConfigError(f"{group.key} is removed; it has no units to prune")
        n = _n_units(layer, group.kind)
        if group.n_units != n:
            raise ConfigError(f"unit group {group.key} is stale: it says {group.n_units} units, the model has {n}")
        keep = check_keep(group.key, n, keep)
        if len(keep) < n:
            self._shrink(layer, group.kind, keep)
            self._sync_config(model)

    @staticmethod
    def _shrink(layer, kind: str, keep: list[int]) -> None:
        from speechprune.models.units import shrink_ffn, shrink_heads

        if kind == "ffn":
            ff = layer.feed_forward
            ff.intermediate_dense, ff.output_dense = shrink_ffn(ff.intermediate_dense, ff.output_dense, keep)
            return
        attn = layer.attention
        attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj = shrink_heads(
            attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, keep, attn.head_dim
        )
        attn.num_heads, attn.embed_dim = len(keep), len(keep) * attn.head_dim

    # ----- modules and layers

    def remove_module(self, model, stack: str, layer: int, kind: str) -> None:
        self._layers(model, stack)
        self._check_kind(kind)
        target = self._layer(model, stack, layer)
        if not _present(target, kind):
            raise ConfigError(f"wav2vec2 {stack} layer {layer} {kind} is already removed")
        self._drop_block(model, target, kind)
        self._sync_config(model)

    @staticmethod
    def _drop_block(model, layer, kind: str) -> None:
        classes = _pruned_layer_classes()
        cls = classes["PrunedWav2Vec2EncoderLayerStableLayerNorm" if _stable(model) else "PrunedWav2Vec2EncoderLayer"]
        if type(layer) is not cls:
            layer.__class__ = cls
        for name in _block_names(model, kind):
            setattr(layer, name, None)

    def remove_layers(self, model, stack: str, layers: list[int]) -> None:
        from torch import nn

        from speechprune.models.units import check_layer_indices

        current = self._layers(model, stack)
        drop = set(check_layer_indices(f"wav2vec2 {stack}", len(current), layers))
        if not drop:
            return
        if len(drop) == len(current):
            raise ConfigError(f"cannot remove every wav2vec2 {stack} layer; at least one must stay")
        model.wav2vec2.encoder.layers = nn.ModuleList([l for i, l in enumerate(current) if i not in drop])
        self._sync_config(model)

    # ----- structure

    def structure(self, model) -> dict:
        """``{"format": 1, "family": "wav2vec2", "encoder": {"original": {layers, heads, head_dim, ffn},
        "layers": [{"self_attn": heads | None, "ffn": width | None}, ...]}}``."""
        stored = getattr(model.config, STRUCTURE_KEY, None) or {}
        original = (stored.get("encoder") or {}).get("original") or _config_original(model.config)
        layers = []
        for layer in self._layers(model, "encoder"):
            layers.append({
                "self_attn": None if layer.attention is None else int(layer.attention.num_heads),
                "ffn": None if layer.feed_forward is None else int(layer.feed_forward.intermediate_dense.out_features),
            })
        out: dict[str, Any] = {"format": STRUCTURE_FORMAT, "family": self.family}
        out["encoder"] = {"original": dict(original), "layers": layers}
        return out

    def stock_compatible(self, model) -> bool:
        s = self.structure(model)["encoder"]
        widths = {l["ffn"] for l in s["layers"]}
        heads_ok = all(l["self_attn"] == s["original"]["heads"] for l in s["layers"])
        return heads_ok and None not in widths and len(widths) == 1

    def _sync_config(self, model) -> None:
        s = self.structure(model)
        layers = s["encoder"]["layers"]
        model.config.num_hidden_layers = len(layers)
        widths = {l["ffn"] for l in layers}
        if len(widths) == 1 and None not in widths:
            model.config.intermediate_size = widths.pop()
        setattr(model.config, STRUCTURE_KEY, s)

    def apply_structure(self, model, structure: dict) -> None:
        from torch import nn

        def bad(why: str) -> ModelError:
            return ModelError(f"speechprune structure does not fit this wav2vec2 model: {why}")

        if not isinstance(structure, dict) or structure.get("family") != self.family:
            raise bad(f"family {structure.get('family') if isinstance(structure, dict) else structure!r}")
        if structure.get("format") != STRUCTURE_FORMAT:
            raise bad(f"format {structure.get('format')!r} (this version reads {STRUCTURE_FORMAT})")
        current = self._layers(model, "encoder")
        entries = (structure.get("encoder") or {}).get("layers")
        if not isinstance(entries, list) or not 1 <= len(entries) <= len(current):
            raise bad(f"encoder layers {entries!r} (the model has {len(current)})")
        if len(entries) < len(current):
            model.wav2vec2.encoder.layers = nn.ModuleList(list(current)[: len(entries)])
        for i, (layer, entry) in enumerate(zip(model.wav2vec2.encoder.layers, entries)):
            if not isinstance(entry, dict) or set(entry) != set(_KINDS):
                raise bad(f"encoder layer {i}: {entry!r} (keys must be {', '.join(_KINDS)})")
            for kind in _KINDS:
                want = entry[kind]
                if want is None:
                    self._drop_block(model, layer, kind)
                    continue
                if not _present(layer, kind):
                    raise bad(f"encoder layer {i} {kind} is removed in the model")
                have = _n_units(layer, kind)
                if isinstance(want, bool) or not isinstance(want, int) or not 1 <= want <= have:
                    raise bad(f"encoder layer {i} {kind}: {want!r} units (the model has {have})")
                if want < have:
                    self._shrink(layer, kind, list(range(want)))  # the weights are loaded afterwards
        original = (structure.get("encoder") or {}).get("original")
        if original is not None and (not isinstance(original, dict) or set(original) != ORIGINAL_KEYS):
            raise bad(f"encoder original {original!r}")
        setattr(model.config, STRUCTURE_KEY, structure)  # the originals it records survive the re-sync
        self._sync_config(model)
