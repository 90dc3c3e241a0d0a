"""Low-rank factorization recipes: YAML, validated at load (unknown keys, impossible ranks refused in one line).

```yaml
method: activation          # svd (plain truncated SVD of the weight) | activation (whitened by calibration inputs)
target: {energy: 0.9}       # exactly one of: energy (share of squared singular values kept, per layer),
                            #   params (share of the chosen layers' weights kept: one energy threshold for all),
                            #   rank (the same rank everywhere), rank_fraction (of each weight's full rank)
sites: {components: [self_attn, cross_attn, ffn], stacks: [encoder, decoder]}   # the default; layers: [0, 1]
calibration: {data: asterisk, split: dev, utterances: 32, batch_size: 8}         # method activation only
schedule: {steps: 3}        # N steps from dense to the target, recovering between steps; a model per step
recovery: {steps: 60, ...}  # optional, speechprune.prune.recipe.Recovery
damping: 0.01               # activation: ridge added to the inputs' second moment (share of its mean diagonal)
```
Bundled recipes live in ``recipes/lowrank/`` (the structured recipes' folder holds only structured ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..recovery.config import Recovery
from .recipe import BUNDLED_RECIPES, Calibration, Schedule, read_recipe_yaml, validated

BUNDLED_LOWRANK = BUNDLED_RECIPES / "lowrank"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LowRankTarget(_Strict):
    """Where the last step ends; exactly one field."""

    energy: float | None = Field(default=None, gt=0.0, lt=1.0)
    params: float | None = Field(default=None, gt=0.0, lt=1.0)
    rank: int | None = Field(default=None, ge=1)
    rank_fraction: float | None = Field(default=None, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _one(self) -> "LowRankTarget":
        if sum(v is not None for v in (self.energy, self.params, self.rank, self.rank_fraction)) != 1:
            raise ValueError("a target needs exactly one of: energy, params, rank, rank_fraction")
        return self

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.model_dump(exclude_none=True).items())


class LowRankSites(_Strict):
    components: list[Literal["self_attn", "cross_attn", "ffn"]] = Field(
        default_factory=lambda: ["self_attn", "cross_attn", "ffn"], min_length=1)
    stacks: list[Literal["encoder", "decoder"]] | None = None  # None: every stack
    layers: list[int] | None = None  # None: every layer (indices of the model as loaded)

    @model_validator(mode="after")
    def _distinct(self) -> "LowRankSites":
        if len(set(self.components)) != len(self.components):
            raise ValueError("'components' repeats a component")
        if self.stacks is not None and (not self.stacks or len(set(self.stacks)) != len(self.stacks)):
            raise ValueError("'stacks' must name distinct stacks")
        if self.layers is not None and (not self.layers or any(i < 0 for i in self.layers)
                                        or len(set(self.layers)) != len(self.layers)):
            raise ValueError("'layers' must hold distinct layer indices >= 0")
        if self.stacks == ["encoder"] and self.components == ["cross_attn"]:
            raise ValueError("the encoder has no cross-attention")
        return self


class LowRankRecipe(_Strict):
    name: str | None = None
    model: str | None = None  # informational; the CLI names the model
    method: Literal["svd", "activation"] = "activation"
    damping: float = Field(default=1e-2, gt=0.0, le=1.0)
    target: LowRankTarget
    sites: LowRankSites = LowRankSites()
    calibration: Calibration = Calibration()
    schedule: Schedule = Schedule()
    recovery: Recovery | None = None
    seed: int = 0

    @property
    def needs_calibration(self) -> bool:
        return self.method == "activation"


def parse_lowrank_recipe(obj: dict, source: str | Path | None = None) -> LowRankRecipe:
    return validated(LowRankRecipe, obj, source, "low-rank recipe")


def load_lowrank_recipe(path: str | Path) -> LowRankRecipe:
    """Read and validate a YAML low-rank recipe: a file, or the name of a bundled one in ``recipes/lowrank/``."""
    return parse_lowrank_recipe(*read_recipe_yaml(path, BUNDLED_LOWRANK))
