"""The one seam between a model family and every stage: what ``prune``, ``sparsify``, ``lowrank``, recovery and the
analyses call instead of a family's own names.

A family is one package under ``models/`` (``models.whisper``, ``models.ctc``, ``models.wav2vec2``) exposing a
``FAMILY`` object that satisfies ``ModelFamily``; ``models.adapters.FAMILIES`` names it beside the unit adapter.
``family_for_folder`` and ``family_for`` find it for a saved folder (or a bundled model name, resolved first) and for
a live model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..errors import ModelError


@dataclass
class DistillOutputs:
    """What distillation compares for one batch: the student's logits and the teacher's at the positions that
    count (``[n, vocab]``: Whisper's label positions, CTC's real frames), the family's task loss on the teacher's
    labels (cross-entropy, CTC), and optionally the last encoder layer's and the inner layers' outputs. A family
    whose batches carry no teacher logits (an LM recovers on its text: the next token is the label) leaves both
    logits ``None`` and the recovery is the task loss alone."""

    task_loss: torch.Tensor
    student_logits: torch.Tensor | None = None
    teacher_logits: torch.Tensor | None = None
    student_final: torch.Tensor | None = None
    teacher_final: torch.Tensor | None = None
    student_layers: list[torch.Tensor] | None = None
    teacher_layers: torch.Tensor | None = None  # [layers - 1, ...]


class Labeller(Protocol):
    def labelled_batches(self, utterances: list, batch_size: int, teacher_logits: bool = False,
                         teacher_hidden: bool = False, progress: bool = False, frames: bool = False) -> list[dict]:
        """Batches of the model's forward arguments whose targets are the labeller's own transcripts (``model(
        **batch).loss`` is defined); for distillation also ``teacher_logits``, ``teacher_encoder`` and, with
        ``teacher_hidden``, ``teacher_hidden``; with ``frames`` each clip's real frames where the family's batches
        do not carry them anyway (a length-adaptive student reads its batch at their bucket)."""
        ...

    def reference_batches(self, utterances: list, batch_size: int) -> list[dict]:
        """Batches of the model's forward arguments whose targets are the utterances' reference texts, for
        supervised fine-tuning on a new domain (federated clients): ``model(**batch).loss`` is the family's task loss
        on them. Clips the family cannot train on (unreadable, no text, outside the vocabulary, too long or short)
        are skipped; none left is a one-line ``ManifestError``."""
        ...


class ReferenceScorer(Protocol):
    """A model scored on fixed utterances against their reference texts, for ablation and sensitivity analysis.
    ``changed`` maps each stack whose layers changed to its first changed layer (a skipped layer: the index it had;
    ``{}``: the dense model), so a scorer may reuse the dense model's computation up to there."""

    utterances: list

    def proxy(self, model: torch.nn.Module, changed: dict) -> float:
        """The family's teacher-forced loss on the references per target symbol (lower = better)."""
        ...

    def records(self, model: torch.nn.Module, changed: dict) -> list[dict]:
        """Greedy hypotheses as evaluation records (``id, audio, language, task, reference, hypothesis``), one per
        utterance in order, for the evaluation runner's ``score``."""
        ...


class ModelFamily(Protocol):
    name: str

    def owns(self, folder: str | Path) -> bool:
        """Whether ``folder`` holds a model of this family."""
        ...

    def load(self, folder: str | Path, device: str = "cpu") -> torch.nn.Module:
        """The (dense, pruned, sparse or factorized) model in ``folder``, in eval mode."""
        ...

    def save(self, model: torch.nn.Module, source: str | Path | None, out: str | Path, *,
             overwrite: bool = False) -> Path:
        """Write ``model`` to ``out`` atomically, with what it needs from the folder it came from (``source``)."""
        ...

    def backend(self, folder: str | Path, device: str = "cpu", name: str | None = None,
                exit_layer: int | None = None, numerics: str = "float32"):
        """The family's PyTorch decoding backend (``frontend``/``encode``/``decode``/``decode_text``, ``with_model``,
        ``flops_record``, ``numerics``) for the model in ``folder``; ``exit_layer`` reads it at that depth where the
        family can, ``numerics`` picks its dtypes (``models.precision``) where it can (else a ``ConfigError``).

        ``frontend()`` is the ``data.features`` front end the backend reads (Whisper's and CTC's the log-mel
        ``FeatureFrontend(n_mels)``, wav2vec2's the normalized ``WaveformFrontend``): called on a list of float32
        16 kHz clips it gives the array ``encode(features, frames)`` takes, and its ``lengths(clips)`` the ``frames``
        (each clip's real length in that array's units). Callers never build a front end of their own."""
        ...

    def shape_record(self, model: torch.nn.Module) -> dict:
        """``params`` and the family's FLOP figures (``flops_encoder``, and per decoded token where there is a
        decoder)."""
        ...

    def labeller(self, model: torch.nn.Module, source: str | Path | None = None) -> Labeller:
        """``model`` (with ``source``'s tokenizer where the family has one) as the labeller of its students."""
        ...

    def training_data(self, model: torch.nn.Module, specs: list[str], limit: int | None = None,
                      interleave: bool = False) -> list:
        """What the family's labeller reads for calibration and recovery from data specs
        (``data.datasets.parse_training_spec``; at most ``limit``, round robin over the specs with ``interleave``):
        the audio families' ``Utterance`` clips, an LM's lines of text. A spec the family cannot read is a one-line
        ``ConfigError``."""
        ...

    def distill_outputs(self, student: torch.nn.Module, batch: dict, layers: bool) -> DistillOutputs:
        """One student forward on a teacher-labelled batch; ``layers``: the inner layers' outputs too."""
        ...

    def reference_scorer(self, backend, utterances: list, batch_size: int = 8, max_new_tokens: int | None = None,
                         cache_layers: bool = True, progress: bool = False) -> ReferenceScorer:
        """A scorer of ``backend``'s model and its damaged copies on ``utterances`` (readable, with reference texts);
        ``max_new_tokens`` caps a hypothesis where the family decodes token by token (default: from the longest
        reference); ``cache_layers``: keep the dense model's inner states where the family reuses them. A reference
        the family cannot score is a one-line ``ConfigError``."""
        ...

    def set_length_buckets(self, model: torch.nn.Module, buckets) -> None:
        """Make ``model`` read each batch at the bucket of its clips' lengths (saved with it); a one-line
        ``ConfigError`` for a family that cannot."""
        ...

    def save_config(self, model: torch.nn.Module, source, folder: str | Path) -> None:
        """Everything of ``model``'s folder but its weights, written into the existing ``folder`` (beside weights in
        another format, ``models.sparse``): its config (with the pruned structure) and what it needs from
        ``source`` (a folder, a processor or tokenizer object, or None), as ``save`` writes them."""
        ...

    def fresh(self, model: torch.nn.Module, seed: int) -> torch.nn.Module:
        """A freshly initialized model of ``model``'s architecture and (pruned) structure, on its device and in its
        dtype, in eval mode: the family's initialization under ``torch.manual_seed(seed)``."""
        ...

    def initial_weights(self, folder: str | Path, device: str = "cpu") -> torch.nn.Module | None:
        """The model ``folder``'s training started from, where the folder keeps it (its own W(0), for
        re-initialization ablations); None where it does not."""
        ...


class AudioData:
    """``ModelFamily.training_data`` of a family that reads speech: the clips the specs name
    (``data.datasets.training_utterances``)."""

    def training_data(self, model, specs: list[str], limit: int | None = None, interleave: bool = False) -> list:
        from ..data.datasets import training_utterances

        return training_utterances(specs, limit, interleave=interleave)


class PretrainedFolders(AudioData):
    """The seam methods of a speech family whose folders are Hugging Face folders (Whisper, wav2vec2)."""

    def save_config(self, model, source, folder: str | Path) -> None:
        """``config.json`` with the structure, the generation config and ``source``'s processor files
        (``models.checkpoint.save_pretrained_config``)."""
        from .checkpoint import save_pretrained_config

        save_pretrained_config(model, source, folder)

    def fresh(self, model, seed: int):
        """``_from_config`` under the seed, then the recorded structure (``models.checkpoint.fresh_pretrained``)."""
        from .checkpoint import fresh_pretrained

        return fresh_pretrained(model, seed)

    def initial_weights(self, folder: str | Path, device: str = "cpu") -> None:
        """None: a Hugging Face folder keeps no initial weights."""
        return None


def _seam(entry) -> ModelFamily:
    import importlib

    module, name = entry.seam.split(":")
    return getattr(importlib.import_module(module), name)


def family_for(model) -> ModelFamily:
    """The family of a live model (``ModelError`` for one without a seam)."""
    from .adapters import family_for_model

    entry = family_for_model(model)
    if entry.seam is None:
        raise ModelError(f"the {entry.model_type} family has pruning surgery but no loading, labelling or recovery "
                         "seam yet")
    return _seam(entry)


def family_for_folder(folder: str | Path) -> ModelFamily:
    """The family whose ``owns`` accepts ``folder`` (``ModelError`` naming the folder when none does)."""
    from .adapters import FAMILIES

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError("model folder does not exist", folder)
    for entry in FAMILIES:
        if entry.seam is not None and _seam(entry).owns(folder):
            return _seam(entry)
    raise ModelError("not a model folder of a supported family (Whisper config.json, speechprune_ctc.json, or a "
                     "Wav2Vec2ForCTC config.json)", folder)
