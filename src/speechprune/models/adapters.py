"""Which adapter serves a model: one entry per supported family, looked up by model class or ``model_type``."""

from __future__ import annotations

from dataclasses import dataclass

from speechprune.errors import ModelError


@dataclass(frozen=True)
class Family:
    model_type: str  # config.json "model_type" ("ctc": speechprune_ctc.json)
    model_class: str  # the class that the adapter operates on
    adapter: str  # "module:Class"
    module: str = "transformers."  # where model_class must come from (a subclass elsewhere may change forwards)
    seam: str | None = None  # "module:object": the family's models.family.ModelFamily (None: surgery only)

    def load_adapter(self):
        import importlib

        module, name = self.adapter.split(":")
        return getattr(importlib.import_module(module), name)()

    def load_model_class(self):
        import transformers

        return getattr(transformers, self.model_class)


FAMILIES: tuple[Family, ...] = (
    Family("whisper", "WhisperForConditionalGeneration", "speechprune.models.whisper.adapter:WhisperAdapter",
           seam="speechprune.models.whisper.family:FAMILY"),
    Family("wav2vec2", "Wav2Vec2ForCTC", "speechprune.models.wav2vec2.adapter:Wav2Vec2Adapter",
           seam="speechprune.models.wav2vec2.family:FAMILY"),
    Family("ctc", "CTCModel", "speechprune.models.ctc.adapter:CTCAdapter", module="speechprune.models.ctc.",
           seam="speechprune.models.ctc.family:FAMILY"),
    Family("lm", "LMModel", "speechprune.models.lm.adapter:LMAdapter", module="speechprune.models.lm.",
           seam="speechprune.models.lm.family:FAMILY"),
)


def _supported() -> str:
    return ", ".join(f"{f.model_class} ({f.model_type})" for f in FAMILIES)


def family_for_model(model) -> Family:
    """The family of a live model, by its exact class (a subclass may change forwards the adapter relies on)."""
    name = type(model).__name__
    for family in FAMILIES:
        if name == family.model_class and type(model).__module__.startswith(family.module):
            return family
    raise ModelError(f"no pruning adapter for {type(model).__module__}.{name}; supported: {_supported()}")


def family_for_model_type(model_type: str | None) -> Family:
    """The family of a saved folder, by its config.json ``model_type``."""
    for family in FAMILIES:
        if model_type == family.model_type:
            return family
    raise ModelError(f"no pruning adapter for model_type {model_type!r}; supported: {_supported()}")


def adapter_for(model):
    """The ``units.Adapter`` for ``model`` (``ModelError`` for an unsupported family)."""
    return family_for_model(model).load_adapter()
