"""The family-neutral vocabulary of prunable structure: unit groups, modules and layers.

Algorithms (importance, selection, schedules) speak only these terms; an adapter per model family is the only
code that maps them onto module names. A *unit group* is a set of interchangeable units in one place of the
model: the heads of one attention block, or the neurons of one FFN. Each unit owns an equal slice of some
parameters (``ParamSlice``), and the units' outputs appear side by side in the input of one module (the
*activation site*: ``out_proj`` for heads, ``fc2`` for FFN neurons), which activation-based importance reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:  # torch is imported where used: the CLI and the adapters' modules import this one cheaply
    import torch
    from torch import nn

Stack = Literal["encoder", "decoder"]
GroupKind = Literal["self_attn", "cross_attn", "ffn", "ffn_macaron", "conv"]  # heads, FFN neurons, conv channels
ModuleKind = Literal["self_attn", "cross_attn", "ffn", "ffn_macaron", "conv"]
GROUP_KINDS: tuple[str, ...] = ("self_attn", "cross_attn", "ffn", "ffn_macaron", "conv")
MODULE_KINDS: tuple[str, ...] = ("self_attn", "cross_attn", "ffn", "ffn_macaron", "conv")
# What a weight belongs to, for unstructured / low-rank pruning and per-component analysis.
COMPONENTS: tuple[str, ...] = ("self_attn", "cross_attn", "ffn", "conv", "embed", "norm")
# The config attribute (and config.json key) under which adapters keep a pruned model's per-layer structure.
STRUCTURE_KEY = "speechprune_structure"
LAYER_OWN = "layer"  # WeightSite.block of a weight that belongs to its layer, in no removable block
STRUCTURE_FORMAT = 1
# The config key under which a model's low-rank factorized weight sites are kept: {site key: rank} (models/lowrank.py).
LOWRANK_KEY = "speechprune_lowrank"
ORIGINAL_KEYS = frozenset({"layers", "heads", "head_dim", "ffn"})  # a stack's "original" entry


@dataclass(frozen=True, eq=False)  # compared by identity: a field-wise == on tensors is ambiguous
class ParamSlice:
    """Unit ``i`` owns ``param.narrow(dim, i * size, size)``."""

    param: nn.Parameter
    dim: int
    size: int

    def per_unit(self, tensor: torch.Tensor | None = None) -> torch.Tensor:
        """``tensor`` (default: the parameter) reshaped to ``[n_units, -1]``, one row per unit."""
        t = self.param.detach() if tensor is None else tensor
        t = t.movedim(self.dim, 0)
        return t.reshape(t.shape[0] // self.size, -1)


@dataclass
class UnitGroup:
    stack: Stack
    layer: int  # index among the stack's current layers
    kind: GroupKind
    n_units: int
    unit_size: int  # head_dim for heads, 1 for neurons
    params: list[ParamSlice] = field(default_factory=list)
    activation_site: nn.Module | None = None  # its input's last dim is n_units * unit_size

    @property
    def key(self) -> str:
        return f"{self.stack}.{self.layer}.{self.kind}"


@dataclass(eq=False)
class WeightSite:
    """One weight-bearing module in family-neutral terms, for methods that act on single tensors (unstructured,
    N:M and low-rank pruning, ablation, signatures, sensitivity). ``parent``/``attr`` are an opaque handle that
    lets generic code swap the module (``replace``), e.g. for a low-rank pair; only adapters know what they name.
    """

    key: str  # stable and family-neutral: "encoder.2.self_attn.q", "encoder.conv.0", "decoder.embed.tokens"
    stack: Stack
    layer: int | None  # index among the stack's current layers; None outside the layers (stem, embeddings)
    component: str  # one of COMPONENTS
    role: str  # within the component: q k v out (attention), in out (FFN), 0 1 (conv), tokens positions, ...
    parent: nn.Module
    attr: str
    tied: bool = False  # the weight is shared with another module (Whisper's token embedding = output projection)
    # the removable block (an adapter ``module_kinds`` kind) an in-layer weight belongs to, where its component (a
    # norm: its role) does not say it; LAYER_OWN for a weight of the layer itself (a norm of the layer's output)
    block: str | None = None

    @property
    def in_block(self) -> str | None:
        """The block whose removal (``remove_module``) also removes this weight; None for a weight of the layer
        itself, which only a whole-layer target covers."""
        block = self.block or (self.role if self.component == "norm" else self.component)
        return None if block == LAYER_OWN else block

    @property
    def module(self) -> nn.Module:
        return getattr(self.parent, self.attr)

    @property
    def weight(self) -> nn.Parameter:
        return self.module.weight

    def replace(self, module: nn.Module) -> None:
        setattr(self.parent, self.attr, module)


class Adapter(Protocol):
    """What a model family exposes to the algorithms. Implementations live in ``models/<family>.py``."""

    family: str

    def stacks(self, model: nn.Module) -> tuple[Stack, ...]: ...

    def n_layers(self, model: nn.Module, stack: Stack) -> int: ...

    def stack_module(self, model: nn.Module, stack: Stack) -> nn.Module:
        """The module that holds a stack's parameters (its embeddings and final norm included)."""
        ...

    def unit_groups(self, model: nn.Module) -> list[UnitGroup]:
        """Every head group and FFN of every present block, in a stable order."""
        ...

    def prune_units(self, model: nn.Module, group: UnitGroup, keep: list[int]) -> None:
        """Physically keep only units ``keep`` (sorted); at least one unit must stay (else remove the module)."""
        ...

    def remove_module(self, model: nn.Module, stack: Stack, layer: int, kind: ModuleKind) -> None:
        """Remove a whole block; the layer then passes its input through on that branch."""
        ...

    def remove_layers(self, model: nn.Module, stack: Stack, layers: list[int]) -> None: ...

    def module_kinds(self, model: nn.Module, stack: Stack) -> tuple[ModuleKind, ...]:
        """The module kinds ``remove_module`` accepts in ``stack`` (for validating recipes); a kind the family has
        but cannot remove (Whisper's conv stem) is left out, and ``remove_module`` explains why."""
        ...

    def weight_sites(self, model: nn.Module) -> list[WeightSite]:
        """Every trainable weight-bearing module (linear, conv, embedding, norm) of every present block, in model
        order; Linear/Conv weights of attention, FFN and stem first within a layer, norms after."""
        ...

    def structure(self, model: nn.Module) -> dict:
        """A JSON-able description of every layer's widths and removed blocks (see ``apply_structure``)."""
        ...

    def apply_structure(self, model: nn.Module, structure: dict) -> None:
        """Reshape a freshly built dense model to ``structure`` (weights are loaded afterwards)."""
        ...

    def stock_compatible(self, model: nn.Module) -> bool:
        """True when the family's stock config fields describe the model exactly (uniform widths, layers removed
        at most), so the stock Hugging Face class loads a saved folder without our code."""
        ...


# --------------------------------------------------------------------------------------------------------------
# Family-neutral surgery helpers for adapters. They take modules, never names, and return new modules built from
# slices of the old parameters (new ``nn.Parameter`` objects: no masks, hooks or parametrizations).


def check_keep(key: str, n_units: int, keep) -> list[int]:
    """``keep`` as a sorted list of unique unit indices in ``range(n_units)``; ``ConfigError`` otherwise."""
    from speechprune.errors import ConfigError

    try:
        idx = [_as_index(i) for i in keep]
    except (TypeError, ValueError):
        raise ConfigError(f"keep list for {key} must be unit indices, got {keep!r}") from None
    if not idx:
        raise ConfigError(f"keep list for {key} is empty: to drop every unit, remove the module instead")
    bad = [i for i in idx if not 0 <= i < n_units]
    if bad:
        raise ConfigError(f"keep index {bad[0]} out of range for {key} ({n_units} units: 0..{n_units - 1})")
    if len(set(idx)) != len(idx):
        raise ConfigError(f"keep list for {key} repeats a unit: {sorted(idx)}")
    return sorted(idx)


def unit_index(keep: list[int], unit_size: int, device) -> torch.Tensor:
    """The channel indices of units ``keep`` (each ``unit_size`` wide, side by side)."""
    import torch

    base = torch.tensor(keep, dtype=torch.long).unsqueeze(1) * unit_size + torch.arange(unit_size).unsqueeze(0)
    return base.reshape(-1).to(device)


def slice_linear(linear: nn.Linear, dim: int, index: torch.Tensor) -> nn.Linear:
    """A new ``nn.Linear`` holding rows (``dim=0``: outputs, bias too) or columns (``dim=1``: inputs) ``index``."""
    from torch import nn

    w = linear.weight
    weight = w.detach().index_select(dim, index.to(w.device))
    bias = linear.bias
    if bias is not None and dim == 0:
        bias = bias.detach().index_select(0, index.to(bias.device))
    elif bias is not None:
        bias = bias.detach().clone()
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = nn.Parameter(weight, requires_grad=w.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias, requires_grad=linear.bias.requires_grad)
    new.train(linear.training)
    return new


def shrink_heads(q: nn.Linear, k: nn.Linear, v: nn.Linear, out: nn.Linear, keep: list[int], head_dim: int):
    """``(q, k, v, out)`` keeping heads ``keep``: q/k/v output rows and ``out`` input columns."""
    idx = unit_index(keep, head_dim, q.weight.device)
    return slice_linear(q, 0, idx), slice_linear(k, 0, idx), slice_linear(v, 0, idx), slice_linear(out, 1, idx)


def shrink_ffn(up: nn.Linear, down: nn.Linear, keep: list[int]):
    """``(up, down)`` keeping neurons ``keep``: ``up`` output rows (+ bias), ``down`` input columns (its bias
    stays whole)."""
    idx = unit_index(keep, 1, up.weight.device)
    return slice_linear(up, 0, idx), slice_linear(down, 1, idx)


def check_layer_indices(where: str, n_layers: int, layers) -> list[int]:
    """``layers`` as sorted unique indices in ``range(n_layers)``; ``ConfigError`` otherwise (``where``: "whisper
    encoder")."""
    from speechprune.errors import ConfigError

    try:
        idx = [_as_index(i) for i in layers]
    except (TypeError, ValueError):
        raise ConfigError(f"{where} layers must be layer indices, got {layers!r}") from None
    bad = [i for i in idx if not 0 <= i < n_layers]
    if bad:
        raise ConfigError(f"{where} has {n_layers} layers (0..{n_layers - 1}); layer {bad[0]} does not exist")
    if len(set(idx)) != len(idx):
        raise ConfigError(f"{where} layer list repeats a layer: {sorted(idx)}")
    return sorted(idx)


def _as_index(value) -> int:
    if isinstance(value, bool) or int(value) != value:
        raise TypeError(value)
    return int(value)
