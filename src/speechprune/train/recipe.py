"""Training recipes (``speechprune train RECIPE --out DIR``): YAML, validated at load like the pruning recipes.

```yaml
name: ctc-whisper-tiny.en-interctc
model: {encoder: whisper, init: whisper-tiny.en}       # or {encoder: conformer, d_model: 144, n_layers: 8, ...}
data: ["asterisk:dev", "synth:1500", "synth-telephone:500"]   # transcribed clips; taken one of each set in turn
valid_utterances: 40        # held out of data (first of the interleaved list): dev WER/CER while training
steps: 1500
batch_size: 16
lr: 0.0005
intermediate: {layers: [2], weight: 0.3}   # intermediate CTC through the shared final norm and head
layerdrop: {rate: 0.2, schedule: linear}    # uniform | linear (deeper layers dropped more)
```

A language model (``family: lm``, ``LMTrainRecipe``; ``train/lm.py``):

```yaml
name: lm-whisper-bpe
family: lm
model: {tokens: whisper, tokenizer: whisper-tiny.en, keep_seen_tokens: true, d_model: 256, n_layers: 4, context: 128}
data: {text: english-text, form: written, add_train: ["asterisk:dev"]}
steps: 3000
batch_tokens: 4096
```

Context-aware gates of a Whisper model (``family: gates``, ``GateTrainRecipe``; ``train/gates.py``; the target can
come from ``speechprune train --sparsity``):

```yaml
family: gates
model: whisper-base
data: ["asterisk-es:dev", "asterisk-es-en:dev", "fillets-cs:dev"]
sparsity: 0.3               # target skip share in (0, 1)
context: true               # false: one learned gate vector for every input (the no-context baseline)
freeze_model: true          # only the predictor trains
steps: 400
batch_size: 8
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..prune.recipe import read_recipe_yaml, validated
from ..recovery.config import check_training_specs


def _checked_specs(specs: list[str]) -> list[str]:
    check_training_specs(specs)
    return specs


# training-data specs (bundled sets' dev splits, synthetic sets, manifests), checked at recipe load
TrainingSpecs = Annotated[list[str], Field(min_length=1), AfterValidator(_checked_specs)]

BUNDLED_TRAIN_RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "train"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """What to train. ``init``: a Whisper model (bundled name or folder) whose encoder starts a ``whisper`` model,
    or a CTC model folder to continue from (``encoder`` must match it; with ``n_layers`` its top layers are removed
    first: static layer removal, then recovery by training). The other keys size a model built from scratch
    (``conformer``, or ``whisper`` without ``init``); with ``init`` only ``n_layers`` (keep the first layers) and
    ``dropout`` (Whisper encoders) apply."""

    encoder: Literal["whisper", "conformer"]
    init: str | None = None
    d_model: int = Field(default=144, ge=8)
    n_layers: int | None = Field(default=None, ge=1)
    n_heads: int = Field(default=4, ge=1)
    ffn_dim: int = Field(default=576, ge=1)
    conv_kernel: int = Field(default=15, ge=3)
    conv_norm: Literal["batch", "group"] = "batch"
    conv_groups: int = Field(default=8, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        from ..models.ctc import is_ctc_folder

        if self.init is not None and self.encoder != "whisper" and not is_ctc_folder(self.init):
            raise ValueError("init names a Whisper model, whose encoder only a 'whisper' encoder can take")
        return self


class Intermediate(_Strict):
    """Intermediate CTC: ``loss = (1 - weight) * CTC(last layer) + weight * mean_k CTC(layer k)``, every exit
    through the shared final norm and head (Lee & Watanabe 2021)."""

    layers: list[int] = Field(min_length=1)  # 1-based
    weight: float = Field(default=0.3, gt=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "Intermediate":
        if any(k < 1 for k in self.layers) or len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct 1-based layer numbers, got {self.layers}")
        return self


class LayerDrop(_Strict):
    rate: float = Field(gt=0, lt=1)
    schedule: Literal["uniform", "linear"] = "uniform"


class TrainRecipe(_Strict):
    name: str | None = None
    family: Literal["ctc"] = "ctc"
    model: ModelSpec
    data: TrainingSpecs
    interleave: bool = True
    max_utterances: int | None = Field(default=None, ge=1)
    valid_utterances: int = Field(default=32, ge=1)
    steps: int = Field(default=1000, ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=5e-4, gt=0)
    warmup: int = Field(default=100, ge=0)
    weight_decay: float = Field(default=0.01, ge=0)
    grad_clip: float = Field(default=5.0, gt=0)
    intermediate: Intermediate | None = None
    layerdrop: LayerDrop | None = None
    eval_every: int = Field(default=250, ge=1)
    checkpoint_every: int = Field(default=100, ge=1)
    save_steps: list[int] = Field(default_factory=list)  # also keep the model after these steps (OUT/step-N)
    seed: int = 0
    accumulate: int = Field(default=1, ge=1)  # batches per optimizer step; torchrun's N processes split them

    @model_validator(mode="after")
    def _check(self) -> "TrainRecipe":
        depth = self.model.n_layers
        if self.intermediate is not None and depth is not None and max(self.intermediate.layers) >= depth:
            raise ValueError(f"intermediate.layers: layer {max(self.intermediate.layers)} is not below the model's "
                             f"{depth} layers (the last layer is the final output)")
        return self


class LMModelSpec(_Strict):
    """A decoder-only Transformer LM from scratch (``init``: an LM folder to continue from instead; the sizes are
    then its own). ``tokens``: ``whisper`` (the BPE of the Whisper model ``tokenizer``, whose output width the
    full-vocabulary scores take) or ``chars`` (the CTC family's characters). ``keep_seen_tokens``: output rows only
    for the Whisper ids seen at least ``keep_min_count`` times in the training text, the rest read as one row and
    scored at ``unseen_log_prob``."""

    tokens: Literal["whisper", "chars"]
    init: str | None = None
    tokenizer: str = "whisper-tiny.en"
    keep_seen_tokens: bool = False
    keep_min_count: int = Field(default=1, ge=1)
    unseen_log_prob: float = Field(default=-20.0, lt=0)
    d_model: int = Field(default=256, ge=8)
    n_layers: int = Field(default=4, ge=1)
    n_heads: int = Field(default=4, ge=1)
    ffn_dim: int = Field(default=1024, ge=1)
    context: int = Field(default=128, ge=2)
    positions: Literal["learned", "sinusoidal"] = "learned"
    dropout: float = Field(default=0.1, ge=0, lt=1)

    @model_validator(mode="after")
    def _check(self) -> "LMModelSpec":
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.tokens == "chars" and self.keep_seen_tokens:
            raise ValueError("keep_seen_tokens applies to Whisper tokens; a character LM keeps its characters")
        return self


class LMData(_Strict):
    """``text``: a corpus (``english-text``: its train split trains) or a text file (the lines ``data.text.split_of``
    puts in train). ``valid``: what dev perplexity is measured on (default: ``text``'s dev split; a file: all of it),
    ``valid_lines`` of it spread evenly. ``add_train``: more training text, an audio set's dev transcripts
    (``asterisk:dev``; never a test split) or files. ``form``: ``normalized`` (as the references are scored) or
    ``written`` (as Whisper writes)."""

    text: str = "english-text"
    form: Literal["normalized", "written"] = "normalized"
    add_train: list[str] = Field(default_factory=list)
    valid: str | None = None
    valid_lines: int = Field(default=2000, ge=1)
    max_lines: int | None = Field(default=None, ge=1)  # of the training text, for quick runs

    @model_validator(mode="after")
    def _check(self) -> "LMData":
        from ..data.datasets import BUNDLED_DATASETS

        specs = [self.text, *self.add_train, *([self.valid] if self.valid else [])]
        check_training_specs([s for s in specs if s.partition(":")[0] in BUNDLED_DATASETS])  # never a test split
        return self


class LMTrainRecipe(_Strict):
    """AdamW on the next-token cross-entropy, ``warmup`` steps of linear warm-up, then ``schedule`` decay to
    ``min_lr`` x ``lr``; batches of lines of similar length, at most ``batch_tokens`` tokens with padding."""

    name: str | None = None
    family: Literal["lm"]
    model: LMModelSpec
    data: LMData = Field(default_factory=LMData)
    steps: int = Field(default=3000, ge=1)
    batch_tokens: int = Field(default=4096, ge=2)
    lr: float = Field(default=1e-3, gt=0)
    min_lr: float = Field(default=0.1, ge=0, le=1)
    warmup: int = Field(default=200, ge=0)
    schedule: Literal["cosine", "linear"] = "cosine"
    weight_decay: float = Field(default=0.1, ge=0)
    grad_clip: float = Field(default=1.0, gt=0)
    eval_every: int = Field(default=250, ge=1)
    checkpoint_every: int = Field(default=100, ge=1)
    save_steps: list[int] = Field(default_factory=list)
    seed: int = 0
    accumulate: int = Field(default=1, ge=1)  # batches per optimizer step; torchrun's N processes split them

    @model_validator(mode="after")
    def _check(self) -> "LMTrainRecipe":
        if self.model.tokens == "chars" and self.data.form != "normalized":
            raise ValueError("data.form: a character LM reads normalized text (the CTC family's characters)")
        return self


class GateTrainRecipe(_Strict):
    """Context-aware gates of a Whisper model (``family: gates``; ``train/gates.py``, issue 20): the teacher-forced
    cross-entropy of the gated model on the references (translate: the English reference after the translate prompt)
    plus ``alpha * (|g - s| + (g - s)^2)`` toward the skip share ``sparsity``; straight-through Gumbel-softmax gates
    whose temperature falls from ``tau_start`` to ``tau_end`` over ``anneal_steps``. ``freeze_model`` (default):
    only the predictor trains. ``context: false``: the no-context baseline, one learned gate vector for all inputs
    (``models.gates.context_inputs``)."""

    name: str | None = None
    family: Literal["gates"]
    model: str  # a bundled name or a Whisper folder (multilingual for languages other than English)
    data: TrainingSpecs  # bundled sets' dev splits or manifests
    interleave: bool = True
    max_utterances: int | None = Field(default=None, ge=1)
    sparsity: float
    alpha: float = Field(default=1.0, ge=0)
    tau_start: float = Field(default=5.0, gt=0)
    tau_end: float = Field(default=0.5, gt=0)
    anneal_steps: int | None = Field(default=None, ge=1)  # default: steps
    init_keep: float = Field(default=0.9, gt=0, lt=1)
    hidden: int = Field(default=64, ge=1)
    context: bool = True
    freeze_model: bool = True
    steps: int = Field(default=500, ge=1)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    model_lr: float = Field(default=1e-5, gt=0)  # the model's, when it is not frozen
    grad_clip: float = Field(default=1.0, gt=0)
    max_target_tokens: int = Field(default=128, ge=1)
    checkpoint_every: int = Field(default=50, ge=1)
    seed: int = 0

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, s: float) -> float:
        if not 0.0 < s < 1.0:
            raise ValueError(f"sparsity target must be inside (0, 1), got {s}")
        return s

    @model_validator(mode="after")
    def _check(self) -> "GateTrainRecipe":
        if self.tau_end > self.tau_start:
            raise ValueError(f"tau_end {self.tau_end} is above tau_start {self.tau_start}: the temperature anneals down")
        return self


_FAMILIES = {"lm": LMTrainRecipe, "gates": GateTrainRecipe}


def parse_train_recipe(obj: dict, source: str | Path | None = None) -> TrainRecipe | LMTrainRecipe | GateTrainRecipe:
    """A CTC recipe, an LM one (``family: lm``) or a gate one (``family: gates``)."""
    return validated(_FAMILIES.get(obj.get("family"), TrainRecipe), obj, source)


def load_train_recipe(path: str | Path) -> TrainRecipe | LMTrainRecipe | GateTrainRecipe:
    """A YAML training recipe: a file, or the name of one in ``recipes/train``."""
    return parse_train_recipe(*read_recipe_yaml(path, BUNDLED_TRAIN_RECIPES))


def recipe_json(recipe: TrainRecipe | LMTrainRecipe) -> str:
    """A training recipe as its checkpoint fingerprint reads it: without ``accumulate`` at its default, so the
    checkpoints of trainings started before the option existed still resume."""
    return recipe.model_dump_json(exclude={"accumulate"} if recipe.accumulate == 1 else None)
