"""What a recovery reads and how it trains: the ``recovery:`` block of every pruning recipe (structured,
unstructured, low-rank) and of the benches. Validated at construction; unknown keys are refused."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

from ..data.augment import AugmentSettings
from ..errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LengthAdaptive(_Strict):
    """Adapt the student to read each batch at its length bucket instead of the 30 s window (Whisper,
    ``models.whisper.lengths``): the teacher labels at the full window; the student's encoder reads the first ``2 P``
    frames of the batch's bucket ``P`` (its longest clip's) and its states are compared with the teacher's first
    ``P``. Clips are grouped by length before batching, so a batch's bucket fits its clips; with ``pack_seconds``
    the packed windows come beside the single clips (the long buckets) instead of replacing them (the short ones).
    The model is saved with the buckets (``config.json``: ``speechprune_length_buckets``)."""

    # encoder positions (20 ms each), ascending; the last is the full window (1500 for every Whisper)
    buckets: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _ascending(self) -> "LengthAdaptive":
        if any(b < 1 for b in self.buckets) or any(a >= b for a, b in zip(self.buckets, self.buckets[1:])):
            raise ValueError(f"buckets must be positive encoder positions, ascending without repeats: {self.buckets}")
        return self


# Recovery audio that is not one voice (issue 16): asterisk dev, then synthetic voices wideband and telephone band,
# taken in turn (``interleave``); at a CPU budget it holds out of domain where asterisk alone does not
# (docs/design.md, "What each ingredient buys"). The benches' default; recipes name their own.
DIVERSE_DATA = ("asterisk:dev", "synth:300", "synth-telephone:300")


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
    # sub-batches of batch_size per optimizer step: the global batch (gradients accumulated over them); under
    # torchrun with N processes each computes accumulate / N of them (scale/distributed.py), N must divide it
    accumulate: int = Field(default=1, ge=1)
    # how often the recovery state is saved (a rerun resumes from it); not part of what a checkpoint must match
    checkpoint_seconds: float = Field(default=300.0, ge=0)
    # read each batch at its length bucket, not the 30 s window (see LengthAdaptive); None: the full window
    length_adaptive: LengthAdaptive | None = None

    @model_validator(mode="after")
    def _data_specs(self) -> "Recovery":
        check_training_specs(self.data)
        if self.train is not None and len(set(self.train)) != len(self.train):
            raise ValueError(f"train lists a stack twice: {self.train}")
        if self.length_adaptive is not None and self.steps == 0:
            raise ValueError("length_adaptive needs recovery steps: a model read at shorter windows without "
                             "adaptation loses most of its accuracy")
        return self

    @model_serializer(mode="wrap")
    def _without_later_defaults(self, handler):
        """Dumps without the options added since the first recipes when they hold their defaults
        (``length_adaptive``, ``accumulate``, ``checkpoint_seconds``), so the records and checkpoint fingerprints of
        every other recovery stay those written before the options existed (resumed runs still match)."""
        out = handler(self)
        if isinstance(out, dict):
            for key, default in LATER_DEFAULTS.items():
                if out.get(key, default) == default:
                    out.pop(key, None)
        return out


LATER_DEFAULTS = {"length_adaptive": None, "accumulate": 1, "checkpoint_seconds": 300.0}


def check_training_specs(specs: list[str]) -> None:
    """Check training-data specs at recipe load: a bad one becomes the ``ValueError`` that pydantic reports with its key."""
    from ..data.datasets import parse_training_spec

    for spec in specs:
        try:
            parse_training_spec(spec)
        except ConfigError as e:
            raise ValueError(str(e)) from None
