"""The Whisper family behind the one seam every stage calls (``models.family.ModelFamily``): Hugging Face folders
(dense, pruned, sparse, factorized), the encoder-decoder FLOP record, the teacher labeller (``TorchWhisper``) and
what distillation compares (the label positions' logits, the encoder's outputs over the 30 s window)."""

from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from ..family import DistillOutputs
from . import flops
from .load import is_whisper_folder, load_whisper
from .shape import whisper_shape


class WhisperFamily:
    name = "whisper"

    def owns(self, folder: str | Path) -> bool:
        return is_whisper_folder(folder)

    def load(self, folder: str | Path, device: str = "cpu"):
        return load_whisper(folder, device=device)[0]

    def save(self, model, source: str | Path | None, out: str | Path, *, overwrite: bool = False) -> Path:
        """A Hugging Face folder with ``source``'s processor files (``models.checkpoint.save_pruned``)."""
        from ..checkpoint import save_pruned

        return save_pruned(model, source, out, overwrite=overwrite)

    def shape_record(self, model) -> dict:
        shape = whisper_shape(model)
        return {"params": sum(p.numel() for p in model.parameters()),
                "flops_encoder": flops.encoder_flops(shape).total,
                "flops_decoder_per_token": flops.decoder_token_flops(shape, 3),
                "flops_decoder_first_step": flops.decoder_first_step_flops(shape, 2)}

    def labeller(self, model, source: str | Path | None = None):
        """``model`` as a ``TorchWhisper`` with ``source``'s tokenizer (greedy transcripts as labels)."""
        from transformers import WhisperTokenizerFast

        from .backend import TorchWhisper
        from .decoding import WhisperVocab

        if source is None:
            raise ValueError("a Whisper labeller needs the folder its tokenizer comes from")
        tokenizer = WhisperTokenizerFast.from_pretrained(source, local_files_only=True)
        return TorchWhisper(model, tokenizer, WhisperVocab.from_folder(source), device=next(model.parameters()).device)

    def distill_outputs(self, student, batch: dict, layers: bool) -> DistillOutputs:
        """Teacher forcing on the teacher's transcripts: the logits at the label positions, cross-entropy on the
        labels, the encoder's output (and with ``layers`` every inner encoder layer's) over the whole window."""
        device = next(student.parameters()).device
        labels = batch["labels"].to(device)
        mask = labels != -100
        out = student(input_features=batch["input_features"].to(device),
                      decoder_input_ids=batch["decoder_input_ids"].to(device), output_hidden_states=layers)
        logits = out.logits[mask]
        result = DistillOutputs(student_logits=logits, teacher_logits=batch["teacher_logits"].to(device),
                                task_loss=F.cross_entropy(logits, labels[mask]))
        if "teacher_encoder" in batch:
            result.student_final = out.encoder_last_hidden_state
            result.teacher_final = batch["teacher_encoder"].to(device)
        if layers:
            result.student_layers = list(out.encoder_hidden_states[1:-1])
            result.teacher_layers = batch["teacher_hidden"]
        return result


FAMILY = WhisperFamily()
