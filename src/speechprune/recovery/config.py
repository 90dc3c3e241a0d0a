"""What a recovery reads and how it trains: the ``recovery:`` block of every pruning recipe (structured,
unstructured, low-rank) and of the benches. Validated at construction; unknown keys are refused."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..data.augment import AugmentSettings
from ..errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Recovery(_Strict):
    """Distillation fine-tuning from the dense teacher after pruning (and between incremental steps)."""

    data: list[str] = Field(default_factory=lambda: ["asterisk:dev"])  # data sets: name[:split] or manifests
    steps: int = Field(default=200, ge=0)  # optimizer steps per recovery phase
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    kl_weight: float = Field(default=1.0, ge=0)
    ce_weight: float = Field(default=1.0, ge=0)
    temperature: float = Field(default=2.0, gt=0)
    encoder_weight: float = Field(default=0.0, ge=0)  # weight of the encoder-output distillation term
    hidden_weight: float = Field(default=0.0, ge=0)  # weight of the per-layer encoder hidden-state term
    max_utterances: int | None = Field(default=None, ge=1)
    # take clips from the data sets in turn (round robin) instead of one set after the other, so no set (asterisk's
    # single voice) fills max_utterances alone
    interleave: bool = False
    # noise, room and channel augmentation of every clip before the teacher labels it (speechprune.data.augment)
    augment: AugmentSettings | None = None
    # pack consecutive clips into windows of at most this many seconds (speechprune.data.pack): several times more
    # speech per step than short clips padded to 30 s; None trains on the clips as they are
    pack_seconds: float | None = Field(default=None, gt=0, le=30)
    # stacks whose weights recovery updates (None: every weight). ["encoder"] keeps an unpruned decoder (and the
    # tied output embedding) exactly the teacher's: gradients still flow through it to the encoder.
    train: list[Literal["encoder", "decoder"]] | None = Field(default=None, min_length=1)
    # false keeps the token (and position) embeddings, and with them the tied output projection, the teacher's:
    # the largest tensor of a small Whisper (20 of tiny.en's 38 M weights) is left out of the update
    train_embeddings: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _data_specs(self) -> "Recovery":
        check_training_specs(self.data)
        if self.train is not None and len(set(self.train)) != len(self.train):
            raise ValueError(f"train lists a stack twice: {self.train}")
        return self


def check_training_specs(specs: list[str]) -> None:
    """Check training-data specs at recipe load: a bad one becomes the ``ValueError`` that pydantic reports with its key."""
    from ..data.datasets import parse_training_spec

    for spec in specs:
        try:
            parse_training_spec(spec)
        except ConfigError as e:
            raise ValueError(str(e)) from None
