"""A Whisper model run with trained context-aware gates (issue 20): ``load_backend(model, "torch", gates=FOLDER)``.

The gates of each window are computed once from its language, task and features, and decoding runs
``models.whisper.gates.gated_greedy`` (the gated-off blocks are not computed; windows with one gate vector decode
together). ``encode`` therefore only hands the features on: the encoder itself is gated, and its gates need the
language and task that only ``decode`` gets. ``last_gates`` holds the last batch's gates (``[windows, M]``), which
the runner writes into each hypothesis record (``gates``, ``skip_share``). Greedy only, and each utterance needs a
language (its own or ``--language``): the gates read it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..models.decoding import Decoded, DecodeOptions, DecodeStats
from ..models.gates import TrainedGates, load_gates
from ..models.whisper.backend import TorchWhisper
from ..models.whisper.decoding import _languages_for
from ..models.whisper.gates import check_gates_fit, gated_greedy


class GatedTorchWhisper(TorchWhisper):
    def __init__(self, base: TorchWhisper, trained: TrainedGates, folder: str | Path, model_name: str):
        super().__init__(base.model, base.tokenizer, base.vocab, device=base.device, name=f"{base.name}-gated")
        check_gates_fit(trained, base.model, folder, model_name)
        self.disk_bytes = base.disk_bytes
        self.trained = trained
        self.trained.predictor.to(self.device)
        self.gates_folder = str(folder)
        self.last_gates: torch.Tensor | None = None

    @property
    def modules_gated(self) -> tuple[str, ...]:
        return tuple(self.trained.config.modules)

    def fingerprint(self) -> str:
        return f"{super().fingerprint()} gates {self.trained.digest()}"

    def encode(self, features: np.ndarray, frames: list[int] | None = None) -> torch.Tensor:
        """The features, on the device (the gated encoder runs in ``decode``, where the context is known)."""
        self.last_positions = None
        return torch.from_numpy(np.ascontiguousarray(features)).to(self.device, self._dtype)

    def decode(self, encoded: torch.Tensor, languages, tasks, options: DecodeOptions) -> Decoded:
        if options.beam_size != 1 or options.fusion:
            raise ConfigError("a gated model decodes greedily without a language model (--beam 1, no --lm)")
        langs = _languages_for(self.vocab, list(languages), options)
        if any(lang is None for lang in langs):
            raise ConfigError("gated decoding needs each utterance's language (in the manifest, or --language): "
                              "the gates read it")
        tasks = [t or options.task for t in tasks]
        prompts = [self.vocab.prompt(lang, task) for lang, task in zip(langs, tasks)]
        keep = self.trained.gates(langs, tasks, encoded)
        tokens = gated_greedy(self.model, self.vocab, encoded, prompts, keep, options.max_new_tokens)
        self.last_gates = keep.detach().cpu()
        return Decoded(tokens, langs, DecodeStats())


def gated_backend(base, gates: str | Path, model_name: str) -> GatedTorchWhisper:
    """``base`` (a ``TorchWhisper`` in float32) run with the trained gates of folder ``gates``."""
    if not isinstance(base, TorchWhisper):
        raise ConfigError(f"--gates runs a Whisper model on the torch backend, not {type(base).__name__}", model_name)
    if base._low is not None:
        raise ConfigError("--gates runs the model in float32 (--numerics float32)")
    return GatedTorchWhisper(base, load_gates(gates), gates, model_name)
