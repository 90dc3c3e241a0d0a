"""The Whisper family behind the one seam every stage calls (``models.family.ModelFamily``): Hugging Face folders
(dense, pruned, sparse, factorized), the encoder-decoder FLOP record, the teacher labeller (``TorchWhisper``) and
what distillation compares (the label positions' logits, the encoder's outputs over the 30 s window, or over the
batch's length bucket for a length-adaptive student: ``.lengths``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch.nn.functional as F

from ...errors import ConfigError
from ..family import DistillOutputs, PretrainedFolders
from . import flops
from .lengths import FRAMES_PER_POSITION, batch_bucket, length_buckets, set_length_buckets
from .load import is_whisper_folder, load_whisper
from .shape import whisper_shape


class WhisperFamily(PretrainedFolders):
    name = "whisper"

    def owns(self, folder: str | Path) -> bool:
        return is_whisper_folder(folder)

    def load(self, folder: str | Path, device: str = "cpu"):
        return load_whisper(folder, device=device)[0]

    def save(self, model, source: str | Path | None, out: str | Path, *, overwrite: bool = False) -> Path:
        """A Hugging Face folder with ``source``'s processor files (``models.checkpoint.save_pruned``)."""
        from ..checkpoint import save_pruned

        return save_pruned(model, source, out, overwrite=overwrite)

    def backend(self, folder: str | Path, device: str = "cpu", name: str | None = None,
                exit_layer: int | None = None, numerics: str = "float32"):
        """A ``TorchWhisper`` (greedy and beam search with a key/value cache) for the folder's model, its encoder
        and decoder in the ``numerics`` asked for (``auto``: what this CPU runs fastest)."""
        from .backend import TorchWhisper

        if exit_layer is not None:
            raise ConfigError("--exit-layer reads a CTC model (speechprune train) at a smaller depth; this is a "
                              "Whisper model", folder)
        return TorchWhisper.from_folder(folder, device=device, name=name or "torch", numerics=numerics)

    def shape_record(self, model) -> dict:
        """Params and FLOPs (the encoder's over the 30 s window); a length-adaptive model adds its buckets and the
        encoder's FLOPs at each (``flops_encoder_by_bucket``)."""
        shape = whisper_shape(model)
        record = {"params": sum(p.numel() for p in model.parameters()),
                  "flops_encoder": flops.encoder_flops(shape).total,
                  "flops_decoder_per_token": flops.decoder_token_flops(shape, 3),
                  "flops_decoder_first_step": flops.decoder_first_step_flops(shape, 2)}
        buckets = length_buckets(model.config)
        if buckets is not None:
            record["length_buckets"] = list(buckets)
            record["flops_encoder_by_bucket"] = {str(p): flops.encoder_flops(
                replace(shape, n_audio_ctx=p, n_frames=FRAMES_PER_POSITION * p)).total for p in buckets}
        return record

    def set_length_buckets(self, model, buckets) -> None:
        """Mark ``model`` length-adaptive (``.lengths.set_length_buckets``): ``distill_outputs`` then reads each
        batch at its bucket, and the saved folder records the buckets."""
        set_length_buckets(model, buckets)

    def labeller(self, model, source: str | Path | None = None):
        """``model`` as a ``TorchWhisper`` with ``source``'s tokenizer (greedy transcripts as labels)."""
        from transformers import WhisperTokenizerFast

        from .backend import TorchWhisper
        from .decoding import WhisperVocab

        if source is None:
            raise ValueError("a Whisper labeller needs the folder its tokenizer comes from")
        tokenizer = WhisperTokenizerFast.from_pretrained(source, local_files_only=True)
        return TorchWhisper(model, tokenizer, WhisperVocab.from_folder(source), device=next(model.parameters()).device)

    def reference_scorer(self, backend, utterances: list, batch_size: int = 8, max_new_tokens: int | None = None,
                         cache_layers: bool = True, progress: bool = False):
        """A ``scoring.WhisperScorer``: cross-entropy per reference token, greedy hypotheses, the dense encoder's
        outputs (and with ``cache_layers`` its layers' inputs) reused up to the first changed layer."""
        from .scoring import WhisperScorer

        return WhisperScorer(backend, utterances, batch_size, max_new_tokens, cache_layers, progress)

    def distill_outputs(self, student, batch: dict, layers: bool) -> DistillOutputs:
        """Teacher forcing on the teacher's transcripts: the logits at the label positions, cross-entropy on the
        labels, the encoder's output (and with ``layers`` every inner encoder layer's) over the whole window. A
        length-adaptive student's encoder (``graph.WhisperEncoderGraph``, differentiable) reads the first ``2 P``
        frames of the batch's bucket ``P`` (its longest clip's, from ``batch["frames"]``), its decoder cross-attends
        to those ``P`` positions, and its states are compared with the teacher's first ``P`` (the teacher read the
        30 s window)."""
        device = next(student.parameters()).device
        buckets = length_buckets(student.config)
        if buckets is None:
            encoded = student.get_encoder()(input_features=batch["input_features"].to(device),
                                            output_hidden_states=layers)
            enc, inner, p = encoded.last_hidden_state, list(encoded.hidden_states[1:-1]) if layers else [], None
        else:
            from .graph import WhisperEncoderGraph

            if "frames" not in batch:
                raise ConfigError("a length-adaptive student needs batches that record their clips' frames "
                                  "(recovery_batches under recovery.length_adaptive)")
            p = batch_bucket(batch["frames"].tolist(), buckets)
            feats = batch["input_features"][..., : FRAMES_PER_POSITION * p].to(device)
            enc, inner = WhisperEncoderGraph(student).encoder_states(feats, inner=layers)
        labels = batch["labels"].to(device)
        mask = labels != -100
        logits = student(encoder_outputs=(enc,), decoder_input_ids=batch["decoder_input_ids"].to(device)).logits[mask]
        result = DistillOutputs(student_logits=logits, teacher_logits=batch["teacher_logits"].to(device),
                                task_loss=F.cross_entropy(logits, labels[mask]))
        if "teacher_encoder" in batch:
            result.student_final = enc
            result.teacher_final = batch["teacher_encoder"][:, :p].to(device)
        if layers:
            result.student_layers = inner
            result.teacher_layers = batch["teacher_hidden"][:, :, :p]
        return result


FAMILY = WhisperFamily()
