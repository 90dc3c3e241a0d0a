"""The CTC family's pruning adapter (``units.Adapter``): heads, FFN neurons, the Conformer's macaron FFN neurons
and convolution-module channels as unit groups; attention, FFN, macaron FFN and convolution modules and whole
layers removable. Every cut builds smaller tensors and records the per-layer widths in ``model.config.structure``,
so ``save_ctc`` / ``load_ctc`` rebuild the pruned model exactly."""

from __future__ import annotations

import torch
from torch import nn

from ...errors import ConfigError, ModelError
from ..units import (LAYER_OWN, STRUCTURE_FORMAT, ParamSlice, UnitGroup, WeightSite, check_keep,
                     check_layer_indices, shrink_ffn, shrink_heads, slice_linear)
from .network import CTCModel

STACK = "encoder"
# unit-group / module kind -> (the block's attribute, its pre-norm's attribute, the structure key)
BLOCKS = {
    "self_attn": ("self_attn", "self_attn_layer_norm", "heads"),
    "ffn": ("ffn", None, "ffn"),
    "ffn_macaron": ("ffn1", "ffn1_layer_norm", "ffn_macaron"),
    "conv": ("conv", None, "conv"),
}


def _kinds(model: CTCModel) -> tuple[str, ...]:
    return ("self_attn", "ffn") if model.config.encoder == "whisper" else ("ffn_macaron", "self_attn", "conv", "ffn")


def _ffn_norm(model: CTCModel) -> str:
    return "final_layer_norm" if model.config.encoder == "whisper" else "ffn2_layer_norm"


def _width(layer: nn.Module, kind: str) -> int:
    block = getattr(layer, BLOCKS[kind][0])
    if block is None:
        return 0
    if kind == "self_attn":
        return block.n_heads
    if kind == "conv":
        return block.value.out_features
    return block.fc1.out_features


def _blocks(model: CTCModel):
    """``(layer index, kind, block)`` of every present block, in model order."""
    for i, layer in enumerate(model.layers):
        for kind in _kinds(model):
            block = getattr(layer, BLOCKS[kind][0])
            if block is not None:
                yield i, kind, block


def _slice_conv_channels(conv: nn.Conv1d, index: torch.Tensor) -> nn.Conv1d:
    """A depthwise convolution keeping channels ``index``."""
    new = nn.Conv1d(len(index), len(index), conv.kernel_size[0], padding=conv.padding[0], groups=len(index),
                    bias=conv.bias is not None).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight[index])
        if conv.bias is not None:
            new.bias.copy_(conv.bias[index])
    return new


def _slice_norm(norm: nn.Module, index: torch.Tensor) -> None:
    """Keep channels ``index`` of a (masked) BatchNorm or GroupNorm in place: parameters, running statistics and
    group membership."""
    for name in ("weight", "bias"):
        setattr(norm, name, nn.Parameter(getattr(norm, name).detach()[index].clone()))
    for name in ("running_mean", "running_var", "group"):
        buf = getattr(norm, name, None)
        if buf is not None:
            setattr(norm, name, buf[index].clone())
    if isinstance(norm, nn.BatchNorm1d):
        norm.num_features = len(index)


class CTCAdapter:
    family = "ctc"

    def stacks(self, model) -> tuple[str, ...]:
        return (STACK,)

    def real_positions(self, model, batch: dict, stack: str):
        """``[batch, positions]`` True at each clip's own encoder positions (the batch's padding is not)."""
        lengths = model.stem.out_lengths(batch["lengths"])
        width = int(model.stem.out_lengths(torch.tensor([batch["features"].shape[-1]]))[0])
        return torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]

    def _check_stack(self, stack: str) -> None:
        if stack != STACK:
            raise ConfigError(f"unknown stack {stack!r} for a CTC model; it has only the encoder stack")

    def stack_module(self, model, stack: str):
        self._check_stack(stack)
        return model  # stem, layers, final norm and the head: the head is trained with the encoder

    def n_layers(self, model, stack: str) -> int:
        self._check_stack(stack)
        return model.depth

    def module_kinds(self, model, stack: str) -> tuple[str, ...]:
        self._check_stack(stack)
        return _kinds(model)

    def _layer(self, model, layer: int):
        return model.layers[check_layer_indices(f"ctc {STACK}", model.depth, [layer])[0]]

    def _check_kind(self, model, kind: str) -> None:
        if kind not in _kinds(model):
            extra = " (its conv stem cannot be removed)" if kind == "conv" else ""
            raise ConfigError(f"a {model.config.encoder} CTC encoder has no removable {kind}{extra}; choose from "
                              f"{', '.join(_kinds(model))}")

    # ----- units

    def unit_groups(self, model) -> list[UnitGroup]:
        groups = []
        for i, kind, block in _blocks(model):
            if kind == "self_attn":
                hd = block.head_dim
                params = [ParamSlice(p.weight, 0, hd) for p in (block.q_proj, block.k_proj, block.v_proj)]
                params += [ParamSlice(p.bias, 0, hd) for p in (block.q_proj, block.v_proj)]
                params.append(ParamSlice(block.out_proj.weight, 1, hd))
                groups.append(UnitGroup(STACK, i, kind, block.n_heads, hd, params, block.out_proj))
            elif kind == "conv":
                params = [ParamSlice(p, 0, 1) for p in (block.value.weight, block.value.bias, block.gate.weight,
                                                        block.gate.bias, block.depthwise.weight, block.depthwise.bias,
                                                        block.norm.weight, block.norm.bias)]
                params.append(ParamSlice(block.out.weight, 1, 1))
                groups.append(UnitGroup(STACK, i, kind, block.value.out_features, 1, params, block.out))
            else:
                params = [ParamSlice(block.fc1.weight, 0, 1), ParamSlice(block.fc1.bias, 0, 1),
                          ParamSlice(block.fc2.weight, 1, 1)]
                groups.append(UnitGroup(STACK, i, kind, block.fc1.out_features, 1, params, block.fc2))
        return groups

    def prune_units(self, model, group: UnitGroup, keep: list[int]) -> None:
        self._check_stack(group.stack)
        self._check_kind(model, group.kind)
        layer = self._layer(model, group.layer)
        n = _width(layer, group.kind)
        if n == 0:
            raise ConfigError(f"{group.key} is removed; it has no units to prune")
        if group.n_units != n:
            raise ConfigError(f"unit group {group.key} is stale: it says {group.n_units} units, the model has {n}")
        keep = check_keep(group.key, n, keep)
        if len(keep) == n:
            return
        block = getattr(layer, BLOCKS[group.kind][0])
        if group.kind == "self_attn":
            block.q_proj, block.k_proj, block.v_proj, block.out_proj = shrink_heads(
                block.q_proj, block.k_proj, block.v_proj, block.out_proj, keep, block.head_dim)
            block.n_heads = len(keep)
        elif group.kind == "conv":
            index = torch.as_tensor(keep, device=block.value.weight.device)
            block.value = slice_linear(block.value, 0, index)
            block.gate = slice_linear(block.gate, 0, index)
            block.depthwise = _slice_conv_channels(block.depthwise, index)
            _slice_norm(block.norm, index)
            block.out = slice_linear(block.out, 1, index)
        else:
            block.fc1, block.fc2 = shrink_ffn(block.fc1, block.fc2, keep)
        self._sync(model)

    # ----- modules and layers

    def remove_module(self, model, stack: str, layer: int, kind: str) -> None:
        self._check_stack(stack)
        self._check_kind(model, kind)
        target = self._layer(model, layer)
        if _width(target, kind) == 0:
            raise ConfigError(f"ctc {stack} layer {layer} {kind} is already removed")
        attr, norm, _ = BLOCKS[kind]
        setattr(target, attr, None)
        norm = norm or (_ffn_norm(model) if kind == "ffn" else None)
        if norm is not None:
            setattr(target, norm, None)
        self._sync(model)

    def remove_layers(self, model, stack: str, layers: list[int]) -> None:
        self._check_stack(stack)
        drop = set(check_layer_indices(f"ctc {stack}", model.depth, layers))
        if not drop:
            return
        if len(drop) == model.depth:
            raise ConfigError(f"cannot remove every ctc {stack} layer; at least one must stay")
        model.layers = nn.ModuleList(l for i, l in enumerate(model.layers) if i not in drop)
        self._sync(model)

    # ----- weights

    def weight_sites(self, model) -> list[WeightSite]:
        """Every weight-bearing module; in a layer each site names the removable block it belongs to
        (``WeightSite.block``: the macaron FFN's ``ffn_macaron``, each pre-norm's block, the convolution module's
        own norms ``conv``; a Conformer layer's output norm belongs to the layer), so block ablation maps."""
        sites: list[WeightSite] = []

        def add(key, layer, component, role, parent, attr, block=None):
            if parent is not None and getattr(parent, attr, None) is not None:
                sites.append(WeightSite(key, STACK, layer, component, role, parent, attr, block=block))

        for name in ("conv1", "conv2"):
            add(f"encoder.conv.{name}", None, "conv", name, model.stem, name)
        add("encoder.embed.projection", None, "embed", "projection", model.stem, "proj")
        add("encoder.embed.positions", None, "embed", "positions", model.stem, "embed_positions")
        blocks = list(_blocks(model))
        norms = {BLOCKS[k][1] or (_ffn_norm(model) if k == "ffn" else None): k for k in _kinds(model)}
        for i, layer in enumerate(model.layers):  # each layer's weights, then its norms
            for _, kind, block in (b for b in blocks if b[0] == i):
                if kind == "self_attn":
                    for role in ("q", "k", "v", "out"):
                        add(f"encoder.{i}.self_attn.{role}", i, "self_attn", role, block, f"{role}_proj")
                elif kind == "conv":
                    for role in ("value", "gate", "depthwise", "out"):
                        add(f"encoder.{i}.conv.{role}", i, "conv", role, block, role)
                else:
                    add(f"encoder.{i}.{kind}.in", i, "ffn", f"{kind}.in", block, "fc1", kind)
                    add(f"encoder.{i}.{kind}.out", i, "ffn", f"{kind}.out", block, "fc2", kind)
            for name, module in layer.named_children():
                if isinstance(module, nn.LayerNorm):
                    add(f"encoder.{i}.norm.{name}", i, "norm", name, layer, name, norms.get(name, LAYER_OWN))
            conv = getattr(layer, "conv", None)  # the convolution module's pre-norm and channel norm
            for name in ("layer_norm", "norm"):
                add(f"encoder.{i}.norm.conv.{name}", i, "norm", f"conv.{name}", conv, name, "conv")
        add("encoder.norm", None, "norm", "final", model, "layer_norm")
        add("encoder.embed.output", None, "embed", "output", model, "head")
        return sites

    # ----- structure

    def structure(self, model) -> dict:
        """``{"format": 1, "family": "ctc", "encoder": {"original": {...}, "layers": [{kind: width | None}]}}``."""
        cfg = model.config
        original = {"layers": cfg.n_layers, "heads": cfg.n_heads, "head_dim": cfg.head_dim, "ffn": cfg.ffn_dim}
        if cfg.structure and "original" in cfg.structure:
            original = dict(cfg.structure["original"])
        layers = [{kind: (_width(layer, kind) or None) for kind in _kinds(model)} for layer in model.layers]
        return {"format": STRUCTURE_FORMAT, "family": self.family, "encoder": {"original": original, "layers": layers}}

    def _sync(self, model) -> None:
        """Record the layers' widths in the config (``CTCConfig.structure``: 0 = removed)."""
        s = self.structure(model)
        widths = {BLOCKS[k][2]: [(entry[k] or 0) for entry in s["encoder"]["layers"]] for k in _kinds(model)}
        model.config = model.config.model_copy(update={
            "n_layers": model.depth, "structure": {**widths, "original": s["encoder"]["original"]}})

    def apply_structure(self, model, structure: dict) -> None:
        """Rebuild ``model``'s layers to ``structure`` (``self.structure``'s format); weights are loaded after."""
        if not isinstance(structure, dict) or structure.get("family") != self.family:
            raise ModelError(f"speechprune structure does not fit this CTC model: family "
                             f"{structure.get('family') if isinstance(structure, dict) else structure!r}")
        entries = (structure.get("encoder") or {}).get("layers")
        kinds = _kinds(model)
        if not isinstance(entries, list) or not entries or any(not isinstance(e, dict) or set(e) != set(kinds)
                                                              for e in entries):
            raise ModelError(f"speechprune structure does not fit this CTC model: layers {entries!r}")
        widths = {BLOCKS[k][2]: [int(e[k] or 0) for e in entries] for k in kinds}
        cfg = model.config.model_copy(update={"n_layers": len(entries), "structure": {
            **widths, "original": structure["encoder"].get("original")}})
        rebuilt = CTCModel(cfg)
        model.layers, model.config = rebuilt.layers, cfg

    def stock_compatible(self, model) -> bool:
        return False  # no stock library class loads this family: its folders are read by models.ctc
