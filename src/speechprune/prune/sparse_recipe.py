"""Unstructured and N:M pruning recipes (``speechprune sparsify``): YAML, validated at load.

```yaml
criterion: wanda             # magnitude | taylor | wanda
scope: row                   # layer (per tensor) | global (all tensors together) | row (per output row);
                             # default: row for wanda, layer otherwise
sparsity: 0.5                # share of the targeted weights set to zero, in [0, 1)
# pattern: "2:4"             # instead of sparsity: keep N of every M consecutive input weights
components: [self_attn, cross_attn, ffn]
stacks: [encoder, decoder]   # default: both
calibration: {data: asterisk, split: dev, utterances: 32, batch_size: 8}   # taylor and wanda only
imp:                         # optional: iterative magnitude pruning to `sparsity` in `rounds` rounds
  rounds: 3                  # each prunes the same share of the weights still there
  rewind: pretrained         # none | pretrained | K (the dense model after K recovery steps)
  recovery: {steps: 100, ...}  # retraining after each round (speechprune.prune.recipe.Recovery)
```
Unstructured recipes live apart from structured ones (``recipes/unstructured/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from ..recovery.config import Recovery
from .recipe import Calibration, _Strict, read_recipe_yaml, validated

BUNDLED_SPARSE_RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "unstructured"


class Imp(_Strict):
    """Iterative pruning: ``rounds`` rounds, each pruning the same share of the remaining weights, retraining
    (distillation from the dense teacher, pruned weights held at zero) after each round."""

    rounds: int = Field(default=3, ge=1, le=20)
    rewind: Literal["none", "pretrained"] | int = "pretrained"
    recovery: Recovery = Recovery(steps=100)

    @model_validator(mode="after")
    def _rewind(self) -> "Imp":
        if isinstance(self.rewind, bool) or (isinstance(self.rewind, int) and self.rewind < 1):
            raise ValueError("rewind must be 'none', 'pretrained' or a step count >= 1")
        return self


class SparsifyRecipe(_Strict):
    name: str | None = None
    model: str | None = None  # informational; the CLI names the model
    criterion: Literal["magnitude", "taylor", "wanda"] = "magnitude"
    scope: Literal["layer", "global", "row"] | None = None
    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    pattern: str | None = None
    components: list[Literal["self_attn", "cross_attn", "ffn"]] = Field(
        default_factory=lambda: ["self_attn", "cross_attn", "ffn"], min_length=1)
    stacks: list[Literal["encoder", "decoder"]] | None = None
    calibration: Calibration = Calibration()
    imp: Imp | None = None
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "SparsifyRecipe":
        from .masks import parse_nm

        if (self.sparsity is None) == (self.pattern is None):
            raise ValueError("give exactly one of 'sparsity' (a share in [0, 1)) or 'pattern' (N:M, e.g. '2:4')")
        if self.pattern is not None:
            parse_nm(self.pattern)
            if self.scope not in (None, "row", "layer"):
                raise ValueError("an N:M pattern is chosen within groups of M weights; 'scope' does not apply")
            if self.imp is not None:
                raise ValueError("'imp' prunes to a sparsity over rounds; it does not take an N:M pattern")
        if self.imp is not None and self.criterion != "magnitude":
            raise ValueError("'imp' is iterative MAGNITUDE pruning; set criterion: magnitude")
        return self

    @property
    def effective_scope(self) -> str:
        return self.scope or ("row" if self.criterion == "wanda" else "layer")

    @property
    def needs_calibration(self) -> bool:
        return self.criterion in ("taylor", "wanda")

    @property
    def nm(self) -> tuple[int, int] | None:
        from .masks import parse_nm

        return None if self.pattern is None else parse_nm(self.pattern)


def parse_sparsify_recipe(obj: dict, source: str | Path | None = None) -> SparsifyRecipe:
    return validated(SparsifyRecipe, obj, source)


def load_sparsify_recipe(path: str | Path) -> SparsifyRecipe:
    """Read and validate an unstructured recipe: a file, or a bundled name (``whisper-tiny.en-wanda50``)."""
    return parse_sparsify_recipe(*read_recipe_yaml(path, BUNDLED_SPARSE_RECIPES))
