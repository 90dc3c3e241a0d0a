"""``WhisperAdapter``, the ``units.Adapter`` of Hugging Face ``WhisperForConditionalGeneration`` (units, surgery,
structure), and the ``PrunedWhisper*Layer`` classes whose forwards skip removed blocks."""

from __future__ import annotations

from typing import Any

from speechprune.errors import ConfigError, ModelError
from speechprune.models.units import ORIGINAL_KEYS, STRUCTURE_FORMAT, STRUCTURE_KEY


# Heads and FFN neurons are removed by replacing the ``nn.Linear`` modules with smaller ones. A removed block
# (attention or FFN, with its pre-norm) becomes ``None`` and its layer's class becomes a ``PrunedWhisper*Layer``,
# whose forward skips it. Decoder attention modules are numbered ``layer_idx`` 0.. over the PRESENT blocks of
# each kind (self- and cross-attention separately), so ``DynamicCache`` slots stay dense: transformers reads the
# decoded length from self-attention slot 0. After every change ``model.config`` is re-synced: layer counts, the
# FFN width where uniform, and the per-layer structure under ``config.speechprune_structure``.

_STACKS = ("encoder", "decoder")
_KINDS = {"encoder": ("self_attn", "ffn"), "decoder": ("self_attn", "cross_attn", "ffn")}
_ATTN = {"self_attn": ("self_attn", "self_attn_layer_norm"), "cross_attn": ("encoder_attn", "encoder_attn_layer_norm")}
_FFN = ("fc1", "fc2", "final_layer_norm")
_PRUNED_CLASSES: dict[str, type] = {}


def _pruned_layer_classes() -> dict[str, type]:
    """``PrunedWhisperEncoderLayer`` / ``PrunedWhisperDecoderLayer``, defined on first use (transformers is heavy
    to import). They are reachable as attributes of this module, so pickling finds them."""
    if _PRUNED_CLASSES:
        return _PRUNED_CLASSES
    import torch
    from torch import nn
    from transformers.models.whisper.modeling_whisper import WhisperDecoderLayer, WhisperEncoderLayer

    def _ffn_residual(layer, hidden_states):
        residual = hidden_states
        hidden_states = layer.final_layer_norm(hidden_states)
        hidden_states = layer.activation_fn(layer.fc1(hidden_states))
        hidden_states = nn.functional.dropout(hidden_states, p=layer.activation_dropout, training=layer.training)
        hidden_states = layer.fc2(hidden_states)
        hidden_states = nn.functional.dropout(hidden_states, p=layer.dropout, training=layer.training)
        return residual + hidden_states

    class PrunedWhisperEncoderLayer(WhisperEncoderLayer):
        """``WhisperEncoderLayer`` whose removed blocks (``None``) pass the residual stream through untouched.

        The rest is transformers 5.x ``WhisperEncoderLayer.forward``, line for line."""

        def forward(self, hidden_states, attention_mask, **kwargs):
            if self.self_attn is not None:
                residual = hidden_states
                hidden_states = self.self_attn_layer_norm(hidden_states)
                hidden_states, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask, **kwargs)
                hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
                hidden_states = residual + hidden_states

            if self.fc1 is not None:
                hidden_states = _ffn_residual(self, hidden_states)

            if hidden_states.dtype == torch.float16:
                clamp_value = torch.finfo(hidden_states.dtype).max - 1000
                hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
            return hidden_states

    class PrunedWhisperDecoderLayer(WhisperDecoderLayer):
        """``WhisperDecoderLayer`` whose removed blocks (``None``) pass the residual stream through untouched.

        The rest is transformers 5.x ``WhisperDecoderLayer.forward``, line for line."""

        def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                    encoder_attention_mask=None, cache=None, use_cache=True, **kwargs):
            if self.self_attn is not None:
                residual = hidden_states
                hidden_states = self.self_attn_layer_norm(hidden_states)
                hidden_states, _ = self.self_attn(
                    hidden_states, cache=cache, attention_mask=attention_mask, **kwargs
                )
                hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
                hidden_states = residual + hidden_states

            if self.encoder_attn is not None and encoder_hidden_states is not None:
                residual = hidden_states
                hidden_states = self.encoder_attn_layer_norm(hidden_states)
                hidden_states, _ = self.encoder_attn(
                    hidden_states,
                    key_value_states=encoder_hidden_states,
                    attention_mask=encoder_attention_mask,
                    cache=cache,
                    **kwargs,
                )
                hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
                hidden_states = residual + hidden_states

            if self.fc1 is not None:
                hidden_states = _ffn_residual(self, hidden_states)
            return hidden_states

    for cls in (PrunedWhisperEncoderLayer, PrunedWhisperDecoderLayer):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        _PRUNED_CLASSES[cls.__name__] = cls
    return _PRUNED_CLASSES


def __getattr__(name: str):
    if name in ("PrunedWhisperEncoderLayer", "PrunedWhisperDecoderLayer"):
        return _pruned_layer_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _attn_of(layer, kind: str):
    return getattr(layer, _ATTN[kind][0]) if kind in _ATTN else None


def _present(layer, kind: str) -> bool:
    return (getattr(layer, "fc1", None) if kind == "ffn" else _attn_of(layer, kind)) is not None


def _config_original(config, stack: str) -> dict:
    heads = int(getattr(config, f"{stack}_attention_heads"))
    return {"layers": int(getattr(config, f"{stack}_layers")), "heads": heads,
            "head_dim": int(config.d_model) // heads, "ffn": int(getattr(config, f"{stack}_ffn_dim"))}


class WhisperAdapter:
    """Units, surgery and structure of a Hugging Face ``WhisperForConditionalGeneration`` (see ``units.Adapter``).

    Unit groups: the heads of every encoder self-attention, decoder self-attention and decoder cross-attention
    (q/k/v rows, q/v biases, ``out_proj`` columns; ``head_dim`` wide) and the neurons of every FFN (``fc1`` rows
    and bias, ``fc2`` columns). Removable modules: ``self_attn``, ``cross_attn`` (decoder), ``ffn``.
    """

    family = "whisper"

    def real_positions(self, model, batch: dict, stack: str):
        """``[batch, 1500]`` True at encoder positions that see audio (not the 30 s window's zero padding, whose
        log-mel frames sit at the item's floor in every bin); None for the decoder (every label position is real)."""
        if stack != "encoder" or "input_features" not in batch:
            return None
        feats = batch["input_features"]
        floor = feats.amin(dim=(1, 2), keepdim=True)
        real_frames = ~(feats == floor).all(dim=1)  # [B, frames]
        n = real_frames.shape[1] // 2
        return real_frames[:, : 2 * n].reshape(-1, n, 2).any(dim=-1)

    # ----- navigation and validation

    def stacks(self, model) -> tuple[str, ...]:
        return _STACKS

    def stack_module(self, model, stack: str):
        if stack not in _STACKS:
            raise ConfigError(f"unknown stack {stack!r} for whisper; choose from {', '.join(_STACKS)}")
        return model.model.encoder if stack == "encoder" else model.model.decoder

    def n_layers(self, model, stack: str) -> int:
        return len(self.stack_module(model, stack).layers)

    def module_kinds(self, model, stack: str) -> tuple[str, ...]:
        self.stack_module(model, stack)
        return _KINDS[stack]

    def _layer(self, model, stack: str, layer: int):
        from speechprune.models.units import check_layer_indices

        layers = self.stack_module(model, stack).layers
        return layers[check_layer_indices(f"whisper {stack}", len(layers), [layer])[0]]

    def _check_kind(self, stack: str, kind: str) -> None:
        from speechprune.models.units import MODULE_KINDS

        if kind == "conv":
            raise ConfigError(
                "whisper's conv stem cannot be removed: it embeds the log-mel features for the encoder "
                "(removable: self_attn, cross_attn, ffn)"
            )
        if kind not in MODULE_KINDS:
            raise ConfigError(f"unknown module kind {kind!r}; choose from {', '.join(_KINDS[stack])}")
        if kind not in _KINDS[stack]:
            raise ConfigError(f"whisper {stack} layers have no {kind}; choose from {', '.join(_KINDS[stack])}")

    # ----- units

    def unit_groups(self, model) -> list:
        from speechprune.models.units import ParamSlice, UnitGroup

        groups = []
        for stack in _STACKS:
            for i, layer in enumerate(self.stack_module(model, stack).layers):
                for kind in self._present_kinds(layer, stack):
                    if kind == "ffn":
                        params = [ParamSlice(layer.fc1.weight, 0, 1), ParamSlice(layer.fc1.bias, 0, 1),
                                  ParamSlice(layer.fc2.weight, 1, 1)]
                        groups.append(UnitGroup(stack, i, kind, layer.fc1.out_features, 1, params, layer.fc2))
                        continue
                    attn = _attn_of(layer, kind)
                    hd = attn.head_dim
                    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
                    params = [ParamSlice(p.weight, 0, hd) for p in projections]
                    params += [ParamSlice(p.bias, 0, hd) for p in projections if p.bias is not None]
                    params.append(ParamSlice(attn.out_proj.weight, 1, hd))
                    groups.append(UnitGroup(stack, i, kind, attn.num_heads, hd, params, attn.out_proj))
        return groups

    @staticmethod
    def _present_kinds(layer, stack: str) -> list[str]:
        """The kinds of ``layer``'s blocks that pruning has not removed, in model order."""
        return [kind for kind in _KINDS[stack] if _present(layer, kind)]

    def prune_units(self, model, group, keep: list[int]) -> None:
        from speechprune.models.units import GROUP_KINDS, check_keep, shrink_ffn, shrink_heads

        layer = self._layer(model, group.stack, group.layer)
        if group.kind not in GROUP_KINDS:
            raise ConfigError(f"unknown unit group kind {group.kind!r}; choose from {', '.join(GROUP_KINDS)}")
        self._check_kind(group.stack, group.kind)
        if not _present(layer, group.kind):
            raise ConfigError(f"{group.key} is removed; it has no units to prune")
        attn = _attn_of(layer, group.kind)
        n = layer.fc1.out_features if attn is None else attn.num_heads
        if group.n_units != n:
            raise ConfigError(f"unit group {group.key} is stale: it says {group.n_units} units, the model has {n}")
        keep = check_keep(group.key, n, keep)
        if len(keep) == n:
            return
        if attn is None:
            layer.fc1, layer.fc2 = shrink_ffn(layer.fc1, layer.fc2, keep)
        else:
            attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj = shrink_heads(
                attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, keep, attn.head_dim
            )
            attn.num_heads = len(keep)  # k/v are viewed as [.., num_heads, head_dim]; q uses -1
            attn.embed_dim = len(keep) * attn.head_dim  # the inner width (HF's own head pruning did the same)
        self._sync_config(model)

    def weight_sites(self, model) -> list:
        from speechprune.models.units import WeightSite

        sites = []

        def add(key, stack, layer, component, role, parent, attr, tied=False):
            if getattr(parent, attr, None) is not None:
                sites.append(WeightSite(key, stack, layer, component, role, parent, attr, tied))

        enc, dec = model.model.encoder, model.model.decoder
        add("encoder.conv.0", "encoder", None, "conv", "0", enc, "conv1")
        add("encoder.conv.1", "encoder", None, "conv", "1", enc, "conv2")
        tied = model.proj_out.weight is dec.embed_tokens.weight
        add("decoder.embed.tokens", "decoder", None, "embed", "tokens", dec, "embed_tokens", tied)
        add("decoder.embed.positions", "decoder", None, "embed", "positions", dec, "embed_positions")
        for stack in _STACKS:
            for i, layer in enumerate(self.stack_module(model, stack).layers):
                kinds = self._present_kinds(layer, stack)
                for kind in kinds:
                    if kind == "ffn":
                        add(f"{stack}.{i}.ffn.in", stack, i, "ffn", "in", layer, "fc1")
                        add(f"{stack}.{i}.ffn.out", stack, i, "ffn", "out", layer, "fc2")
                        continue
                    attn = _attn_of(layer, kind)
                    for role in ("q", "k", "v", "out"):
                        add(f"{stack}.{i}.{kind}.{role}", stack, i, kind, role, attn, f"{role}_proj")
                for kind in kinds:
                    norm = _FFN[2] if kind == "ffn" else _ATTN[kind][1]
                    add(f"{stack}.{i}.{kind}.norm", stack, i, "norm", kind, layer, norm)
            add(f"{stack}.norm", stack, None, "norm", "final", self.stack_module(model, stack), "layer_norm")
        if not tied:
            add("decoder.embed.output", "decoder", None, "embed", "output", model, "proj_out")
        return sites

    # ----- modules and layers

    def remove_module(self, model, stack: str, layer: int, kind: str) -> None:
        self.stack_module(model, stack)
        self._check_kind(stack, kind)
        target = self._layer(model, stack, layer)
        if not _present(target, kind):
            raise ConfigError(f"whisper {stack} layer {layer} {kind} is already removed")
        if stack == "decoder" and kind == "self_attn":
            self._check_decoder_self_attn([l for l in self.stack_module(model, stack).layers if l is not target])
        self._mark_pruned(target, stack)
        for name in _FFN if kind == "ffn" else _ATTN[kind]:
            setattr(target, name, None)
        self._renumber(model)
        self._sync_config(model)

    def remove_layers(self, model, stack: str, layers: list[int]) -> None:
        from torch import nn

        from speechprune.models.units import check_layer_indices

        mod = self.stack_module(model, stack)
        drop = set(check_layer_indices(f"whisper {stack}", len(mod.layers), layers))
        if not drop:
            return
        if len(drop) == len(mod.layers):
            raise ConfigError(f"cannot remove every whisper {stack} layer; at least one must stay")
        kept = [l for i, l in enumerate(mod.layers) if i not in drop]
        if stack == "decoder":
            self._check_decoder_self_attn(kept)
        mod.layers = nn.ModuleList(kept)
        self._renumber(model)
        self._sync_config(model)

    @staticmethod
    def _check_decoder_self_attn(remaining_layers) -> None:
        if not any(l.self_attn is not None for l in remaining_layers):
            raise ConfigError(
                "cannot remove the last decoder self_attn: transformers reads the decoded length from its KV cache"
            )

    @staticmethod
    def _mark_pruned(layer, stack: str) -> None:
        name = "PrunedWhisperEncoderLayer" if stack == "encoder" else "PrunedWhisperDecoderLayer"
        cls = _pruned_layer_classes()[name]
        if type(layer) is not cls:
            layer.__class__ = cls

    def _renumber(self, model) -> None:
        """Dense ``layer_idx`` over the present decoder self- and cross-attention blocks (KV cache slots)."""
        n_self = n_cross = 0
        for layer in model.model.decoder.layers:
            if layer.self_attn is not None:
                layer.self_attn.layer_idx, n_self = n_self, n_self + 1
            if layer.encoder_attn is not None:
                layer.encoder_attn.layer_idx, n_cross = n_cross, n_cross + 1

    # ----- structure

    def structure(self, model) -> dict:
        """``{"format": 1, "family": "whisper", <stack>: {"original": {layers, heads, head_dim, ffn},
        "layers": [{"self_attn": heads | None, ["cross_attn": heads | None,] "ffn": width | None}, ...]}}``."""
        stored = getattr(model.config, STRUCTURE_KEY, None) or {}
        out: dict[str, Any] = {"format": STRUCTURE_FORMAT, "family": self.family}
        for stack in _STACKS:
            original = (stored.get(stack) or {}).get("original") or _config_original(model.config, stack)
            layers = []
            for layer in self.stack_module(model, stack).layers:
                entry: dict[str, int | None] = {}
                for kind in _KINDS[stack]:
                    if not _present(layer, kind):
                        entry[kind] = None
                    elif kind == "ffn":
                        entry[kind] = int(layer.fc1.out_features)
                    else:
                        entry[kind] = int(_attn_of(layer, kind).num_heads)
                layers.append(entry)
            out[stack] = {"original": dict(original), "layers": layers}
        return out

    def stock_compatible(self, model) -> bool:
        s = self.structure(model)
        for stack in _STACKS:
            heads = s[stack]["original"]["heads"]
            layers = s[stack]["layers"]
            if any(l[k] != heads for l in layers for k in _KINDS[stack] if k != "ffn"):
                return False
            widths = {l["ffn"] for l in layers}
            if None in widths or len(widths) != 1:
                return False
        return True

    def _sync_config(self, model) -> None:
        """Keep ``model.config`` true: layer counts, uniform FFN widths, and the structure."""
        s = self.structure(model)
        config = model.config
        for stack in _STACKS:
            layers = s[stack]["layers"]
            setattr(config, f"{stack}_layers", len(layers))
            widths = {l["ffn"] for l in layers}
            if len(widths) == 1 and None not in widths:
                setattr(config, f"{stack}_ffn_dim", widths.pop())
        setattr(config, STRUCTURE_KEY, s)

    def apply_structure(self, model, structure: dict) -> None:
        from torch import nn

        from speechprune.models.units import shrink_ffn, shrink_heads

        def bad(why: str) -> ModelError:
            return ModelError(f"speechprune structure does not fit this whisper model: {why}")

        if not isinstance(structure, dict) or structure.get("family") != self.family:
            raise bad(f"family {structure.get('family') if isinstance(structure, dict) else structure!r}")
        if structure.get("format") != STRUCTURE_FORMAT:
            raise bad(f"format {structure.get('format')!r} (this version reads {STRUCTURE_FORMAT})")
        for stack in _STACKS:
            mod = self.stack_module(model, stack)
            entries = (structure.get(stack) or {}).get("layers")
            if not isinstance(entries, list) or not 1 <= len(entries) <= len(mod.layers):
                raise bad(f"{stack} layers {entries!r} (the model has {len(mod.layers)})")
            if len(entries) < len(mod.layers):
                mod.layers = nn.ModuleList(list(mod.layers)[: len(entries)])
            for i, (layer, entry) in enumerate(zip(mod.layers, entries)):
                if not isinstance(entry, dict) or set(entry) != set(_KINDS[stack]):
                    raise bad(f"{stack} layer {i}: {entry!r} (keys must be {', '.join(_KINDS[stack])})")
                for kind in _KINDS[stack]:
                    want = entry[kind]
                    if want is None:
                        self._mark_pruned(layer, stack)
                        for name in _FFN if kind == "ffn" else _ATTN[kind]:
                            setattr(layer, name, None)
                        continue
                    if not _present(layer, kind):
                        raise bad(f"{stack} layer {i} {kind} is removed in the model")
                    attn = _attn_of(layer, kind)
                    have = layer.fc1.out_features if attn is None else attn.num_heads
                    if isinstance(want, bool) or not isinstance(want, int) or not 1 <= want <= have:
                        raise bad(f"{stack} layer {i} {kind}: {want!r} units (the model has {have})")
                    if want == have:
                        continue
                    keep = list(range(want))  # which units does not matter: the weights are loaded afterwards
                    if attn is None:
                        layer.fc1, layer.fc2 = shrink_ffn(layer.fc1, layer.fc2, keep)
                    else:
                        attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj = shrink_heads(
                            attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, keep, attn.head_dim
                        )
                        attn.num_heads, attn.embed_dim = want, want * attn.head_dim
            original = (structure.get(stack) or {}).get("original")
            if original is not None and (not isinstance(original, dict) or set(original) != ORIGINAL_KEYS):
                raise bad(f"{stack} original {original!r}")
        if not any(l.self_attn is not None for l in model.model.decoder.layers):
            raise bad("no decoder self_attn is left")
        self._renumber(model)
        setattr(model.config, STRUCTURE_KEY, structure)  # the originals it records survive the re-sync
        self._sync_config(model)
