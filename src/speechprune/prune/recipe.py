"""Structured pruning recipes: YAML, validated at load (unknown keys, impossible ratios refused up front).

```yaml
criterion: taylor            # magnitude | taylor | activation | random
normalize: layer             # layer | global
reconstruct: true            # least-squares refit of each pruned block's output projection (needs calibration)
calibration: {data: asterisk, split: dev, utterances: 32, batch_size: 8}
schedule: {steps: 1}         # 1 = one-shot; N = incremental, re-scoring (and recovering) between steps
targets:
  - {stack: encoder, kind: ffn, sparsity: 0.5}                    # per layer (scope: layer) by default
  - {stack: encoder, kind: self_attn, sparsity: 0.5, scope: local} # heads from as few layers as possible
  - {stack: decoder, remove_layers: [1, 2]}                        # explicit
  - {stack: decoder, remove_modules: [{layer: 0, kind: cross_attn}]}
  - {stack: encoder, n_layers: 1}                                  # the least important layer, by the criterion
recovery: {...}              # optional, see speechprune.recovery
```
Layer indices always refer to the ORIGINAL model's layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..errors import ConfigError
from ..recovery.config import Recovery, check_training_specs


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModuleRef(_Strict):
    layer: int = Field(ge=0)
    kind: Literal["self_attn", "cross_attn", "ffn", "ffn_macaron", "conv"]


class Target(_Strict):
    stack: Literal["encoder", "decoder"]
    kind: Literal["self_attn", "cross_attn", "ffn", "ffn_macaron", "conv"] | None = None  # a unit group kind, with sparsity
    sparsity: float | None = Field(default=None, ge=0.0, lt=1.0)
    scope: Literal["layer", "global", "local"] = "layer"
    layers: list[int] | None = None  # restrict a unit target to these original layers
    remove_layers: list[int] | None = None
    remove_modules: list[ModuleRef] | None = None
    n_layers: int | None = Field(default=None, ge=1)  # remove this many layers, chosen by the criterion

    @model_validator(mode="after")
    def _one_action(self) -> "Target":
        actions = [self.sparsity is not None, self.remove_layers is not None, self.remove_modules is not None,
                   self.n_layers is not None]
        if sum(actions) != 1:
            raise ValueError("a target needs exactly one of: sparsity (with kind), remove_layers, remove_modules, n_layers")
        if (self.sparsity is None) != (self.kind is None):
            raise ValueError("'kind' and 'sparsity' go together")
        if self.kind == "cross_attn" and self.stack == "encoder":
            raise ValueError("the encoder has no cross-attention")
        if self.scope == "local" and self.kind == "ffn":
            raise ValueError("scope 'local' selects attention heads; use 'layer' or 'global' for FFN neurons")
        for name in ("layers", "remove_layers"):
            v = getattr(self, name)
            if v is not None and (any(i < 0 for i in v) or len(set(v)) != len(v)):
                raise ValueError(f"'{name}' must hold distinct layer indices >= 0")
        return self


class Calibration(_Strict):
    """The audio that criteria, reconstruction and activation-aware factorization read: one data set (``data`` and
    ``split``, as before) or a list of training specs (``["asterisk:dev", "unlabelled:200", "synth-telephone:200"]``)
    taken one clip of each in turn, so a least-squares refit is not fitted to one voice."""

    data: str | list[str] = "asterisk"
    split: Literal["dev"] | None = "dev"  # never test (nor all): nothing that calibrates reads it
    utterances: int = Field(default=32, ge=1)
    batch_size: int = Field(default=8, ge=1)

    @property
    def specs(self) -> list[str]:
        """The ``name[:split]`` training-data specs this calibration reads (a manifest has no split; a list names
        full specs)."""
        if isinstance(self.data, list):
            return list(self.data)
        return [self.data if self.data.endswith(".jsonl") else f"{self.data}:{self.split or 'dev'}"]

    @model_validator(mode="after")
    def _data_spec(self) -> "Calibration":
        if isinstance(self.data, list) and not self.data:
            raise ValueError("calibration data lists no data set")
        check_training_specs(self.specs)
        return self


class Schedule(_Strict):
    steps: int = Field(default=1, ge=1, le=20)
    save_every_step: bool = True


class Recipe(_Strict):
    name: str | None = None
    model: str | None = None  # the model the recipe was written for (informational; the CLI names the model)
    criterion: Literal["magnitude", "taylor", "activation", "random"] = "magnitude"
    normalize: Literal["layer", "global"] = "layer"
    reconstruct: bool = False  # refit each pruned block's output projection by least squares on calibration audio
    # which rows the refit weighs: every position alike ("all"), or real audio and padding alike in total ("speech":
    # short clips padded to 30 s would otherwise fit mostly the padding)
    reconstruct_weighting: Literal["all", "speech"] = "all"
    seed: int = 0
    calibration: Calibration = Calibration()
    schedule: Schedule = Schedule()
    targets: list[Target] = Field(min_length=1)
    recovery: Recovery | None = None

    @property
    def needs_calibration(self) -> bool:
        return self.criterion in ("taylor", "activation") or self.reconstruct


def _first_error(e: ValidationError) -> str:
    # an unknown key usually explains a missing one (a typo): report it first
    err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
    where = ".".join(str(p) for p in err["loc"]) or "recipe"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return f"{where}: {msg}" + (f" ({len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else "")


def validated(schema: type[BaseModel], obj: dict, source: str | Path | None = None, what: str = "recipe"):
    """``obj`` validated by ``schema``, or a one-line ``ConfigError`` ("bad <what>: key: problem") naming ``source``."""
    try:
        return schema.model_validate(obj)
    except ValidationError as e:
        raise ConfigError(f"bad {what}: {_first_error(e)}", source) from None


def parse_recipe(obj: dict, source: str | Path | None = None) -> Recipe:
    return validated(Recipe, obj, source)


BUNDLED_RECIPES = Path(__file__).resolve().parents[1] / "recipes"  # also reachable as recipes/ in the repository


def bundled_recipes() -> list[str]:
    return sorted(p.stem for p in BUNDLED_RECIPES.glob("*.yaml"))


def read_recipe_yaml(path: str | Path, bundled: Path) -> tuple[dict, Path]:
    """The mapping in a YAML recipe (``yaml.safe_load``: no code runs) and its file: ``path``, or the name of a recipe
    shipped in ``bundled``. Missing, unreadable or non-mapping files raise a one-line ``ConfigError``."""
    path = Path(path)
    if not path.exists() and path.parent == Path(".") and (bundled / f"{path.name}.yaml").is_file():
        path = bundled / f"{path.name}.yaml"
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        names = sorted(p.stem for p in bundled.glob("*.yaml"))
        raise ConfigError(f"recipe not found (bundled: {', '.join(names)})", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read recipe ({e.__class__.__name__})", path) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError(f"not valid YAML{f' (line {mark.line + 1})' if mark else ''}", path) from None
    if not isinstance(obj, dict):
        raise ConfigError("a recipe must be a YAML mapping", path)
    return obj, path


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a YAML recipe: a file, or the name of a bundled one (``whisper-tiny.en-fast``)."""
    return parse_recipe(*read_recipe_yaml(path, BUNDLED_RECIPES))
