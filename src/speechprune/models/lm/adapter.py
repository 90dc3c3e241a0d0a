"""The LM family's pruning adapter (``units.Adapter``): one ``decoder`` stack whose heads and FFN neurons are unit
groups, attention and FFN blocks and whole layers removable. Every cut builds smaller tensors and records the
per-layer widths in ``model.config.structure``, so ``save_lm`` / ``load_lm`` rebuild the pruned model exactly."""

from __future__ import annotations

from torch import nn

from ...errors import ConfigError, ModelError
from ..units import (STRUCTURE_FORMAT, ParamSlice, UnitGroup, WeightSite, check_keep, check_layer_indices,
                     shrink_ffn, shrink_heads)
from .network import IGNORE, LMModel

STACK = "decoder"
KINDS = ("self_attn", "ffn")
# module kind -> (the block's attribute, its pre-norm's attribute, the structure key)
BLOCKS = {"self_attn": ("attn", "attn_norm", "heads"), "ffn": ("ffn", "ffn_norm", "ffn")}


def _width(layer: nn.Module, kind: str) -> int:
    block = getattr(layer, BLOCKS[kind][0])
    if block is None:
        return 0
    return block.n_heads if kind == "self_attn" else block.fc1.out_features


class LMAdapter:
    family = "lm"

    def stacks(self, model) -> tuple[str, ...]:
        return (STACK,)

    def real_positions(self, model, batch: dict, stack: str):
        """``[batch, positions]`` True where a target is scored (the padding is not)."""
        return batch["targets"] != IGNORE

    def _check_stack(self, stack: str) -> None:
        if stack != STACK:
            raise ConfigError(f"unknown stack {stack!r} for an LM; it has only the decoder stack")

    def stack_module(self, model, stack: str):
        self._check_stack(stack)
        return model  # embeddings (tied with the output), layers and the final norm

    def n_layers(self, model, stack: str) -> int:
        self._check_stack(stack)
        return model.depth

    def module_kinds(self, model, stack: str) -> tuple[str, ...]:
        self._check_stack(stack)
        return KINDS

    def _layer(self, model, layer: int):
        return model.layers[check_layer_indices(f"lm {STACK}", model.depth, [layer])[0]]

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ConfigError(f"an LM has no removable {kind}; choose from {', '.join(KINDS)}")

    # ----- units

    def unit_groups(self, model) -> list[UnitGroup]:
        groups = []
        for i, layer in enumerate(model.layers):
            a, f = layer.attn, layer.ffn
            if a is not None:
                hd = a.head_dim
                params = [ParamSlice(p.weight, 0, hd) for p in (a.q_proj, a.k_proj, a.v_proj)]
                params += [ParamSlice(p.bias, 0, hd) for p in (a.q_proj, a.k_proj, a.v_proj)]
                params.append(ParamSlice(a.out_proj.weight, 1, hd))
                groups.append(UnitGroup(STACK, i, "self_attn", a.n_heads, hd, params, a.out_proj))
            if f is not None:
                params = [ParamSlice(f.fc1.weight, 0, 1), ParamSlice(f.fc1.bias, 0, 1), ParamSlice(f.fc2.weight, 1, 1)]
                groups.append(UnitGroup(STACK, i, "ffn", f.fc1.out_features, 1, params, f.fc2))
        return groups

    def prune_units(self, model, group: UnitGroup, keep: list[int]) -> None:
        self._check_stack(group.stack)
        self._check_kind(group.kind)
        layer = self._layer(model, group.layer)
        n = _width(layer, group.kind)
        if n == 0:
            raise ConfigError(f"{group.key} is removed; it has no units to prune")
        if group.n_units != n:
            raise ConfigError(f"unit group {group.key} is stale: it says {group.n_units} units, the model has {n}")
        keep = check_keep(group.key, n, keep)
        if len(keep) == n:
            return
        if group.kind == "self_attn":
            a = layer.attn
            a.q_proj, a.k_proj, a.v_proj, a.out_proj = shrink_heads(a.q_proj, a.k_proj, a.v_proj, a.out_proj, keep,
                                                                    a.head_dim)
            a.n_heads = len(keep)
        else:
            layer.ffn.fc1, layer.ffn.fc2 = shrink_ffn(layer.ffn.fc1, layer.ffn.fc2, keep)
        self._sync(model)

    # ----- modules and layers

    def remove_module(self, model, stack: str, layer: int, kind: str) -> None:
        self._check_stack(stack)
        self._check_kind(kind)
        target = self._layer(model, layer)
        if _width(target, kind) == 0:
            raise ConfigError(f"lm {stack} layer {layer} {kind} is already removed")
        attr, norm, _ = BLOCKS[kind]
        setattr(target, attr, None)
        setattr(target, norm, None)
        self._sync(model)

    def remove_layers(self, model, stack: str, layers: list[int]) -> None:
        self._check_stack(stack)
        drop = set(check_layer_indices(f"lm {stack}", model.depth, layers))
        if not drop:
            return
        if len(drop) == model.depth:
            raise ConfigError(f"cannot remove every lm {stack} layer; at least one must stay")
        model.layers = nn.ModuleList(l for i, l in enumerate(model.layers) if i not in drop)
        self._sync(model)

    # ----- weights

    def weight_sites(self, model) -> list[WeightSite]:
        sites: list[WeightSite] = []

        def add(key, layer, component, role, parent, attr, tied=False):
            if parent is not None and getattr(parent, attr, None) is not None:
                sites.append(WeightSite(key, STACK, layer, component, role, parent, attr, tied))

        add("decoder.embed.tokens", None, "embed", "tokens", model, "embed", tied=True)  # also the output layer
        add("decoder.embed.positions", None, "embed", "positions", model, "positions")
        for i, layer in enumerate(model.layers):
            for role in ("q", "k", "v", "out"):
                add(f"decoder.{i}.self_attn.{role}", i, "self_attn", role, layer.attn, f"{role}_proj")
            add(f"decoder.{i}.ffn.in", i, "ffn", "in", layer.ffn, "fc1")
            add(f"decoder.{i}.ffn.out", i, "ffn", "out", layer.ffn, "fc2")
            for name in ("attn_norm", "ffn_norm"):
                add(f"decoder.{i}.norm.{name}", i, "norm", name, layer, name)
        add("decoder.norm", None, "norm", "final", model, "norm")
        return sites

    # ----- structure

    def structure(self, model) -> dict:
        """``{"format": 1, "family": "lm", "decoder": {"original": {...}, "layers": [{kind: width | None}]}}``."""
        cfg = model.config
        original = {"layers": cfg.n_layers, "heads": cfg.n_heads, "head_dim": cfg.head_dim, "ffn": cfg.ffn_dim}
        if cfg.structure and "original" in cfg.structure:
            original = dict(cfg.structure["original"])
        layers = [{kind: (_width(layer, kind) or None) for kind in KINDS} for layer in model.layers]
        return {"format": STRUCTURE_FORMAT, "family": self.family, STACK: {"original": original, "layers": layers}}

    def _sync(self, model) -> None:
        """Record the layers' widths in the config (``LMConfig.structure``: 0 = removed)."""
        s = self.structure(model)[STACK]
        widths = {BLOCKS[k][2]: [(entry[k] or 0) for entry in s["layers"]] for k in KINDS}
        model.config = model.config.model_copy(update={"n_layers": model.depth,
                                                       "structure": {**widths, "original": s["original"]}})

    def apply_structure(self, model, structure: dict) -> None:
        """Rebuild ``model``'s layers to ``structure`` (``self.structure``'s format); weights are loaded after."""
        if not isinstance(structure, dict) or structure.get("family") != self.family:
            raise ModelError(f"speechprune structure does not fit this LM: family "
                             f"{structure.get('family') if isinstance(structure, dict) else structure!r}")
        entries = (structure.get(STACK) or {}).get("layers")
        if not isinstance(entries, list) or not entries or any(not isinstance(e, dict) or set(e) != set(KINDS)
                                                              for e in entries):
            raise ModelError(f"speechprune structure does not fit this LM: layers {entries!r}")
        widths = {BLOCKS[k][2]: [int(e[k] or 0) for e in entries] for k in KINDS}
        cfg = model.config.model_copy(update={"n_layers": len(entries), "structure": {
            **widths, "original": structure[STACK].get("original")}})
        rebuilt = LMModel(cfg)
        model.layers, model.config = rebuilt.layers, cfg

    def stock_compatible(self, model) -> bool:
        return False  # no stock library class loads this family: its folders are read by models.lm
