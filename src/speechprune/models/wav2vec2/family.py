"""The wav2vec2 family behind the one seam every stage calls (``models.family.ModelFamily``): Hugging Face
``Wav2Vec2ForCTC`` folders (dense, pruned, factorized, sparse), the per-layer FLOP record at a 30 s reference clip,
the teacher labeller (greedy CTC labels) and what distillation compares (logits and layer outputs at every real
position, CTC on the teacher's labels)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ...data.audio import SAMPLE_RATE
from ...data.features import WaveformFrontend
from ...errors import ConfigError
from ..family import DistillOutputs, PretrainedFolders
from .batches import Wav2Vec2Labeller, batch_samples, blank_of
from .flops import clip_flops
from .forward import forward_states
from .load import is_wav2vec2_folder, load_tokenizer, load_wav2vec2, read_frontend

REFERENCE_SAMPLES = 30 * SAMPLE_RATE  # FLOPs are recorded for a 30 s clip, the window Whisper always pays


class Wav2Vec2Family(PretrainedFolders):
    name = "wav2vec2"

    def owns(self, folder: str | Path) -> bool:
        return is_wav2vec2_folder(folder)

    def load(self, folder: str | Path, device: str = "cpu"):
        return load_wav2vec2(folder, device=device)

    def save(self, model, source: str | Path | None, out: str | Path, *, overwrite: bool = False) -> Path:
        """A Hugging Face folder (``models.checkpoint.save_pruned``: the pruned structure and low-rank sites in
        ``config.json``, so ``load`` rebuilds the model exactly) with ``source``'s tokenizer and preprocessor files."""
        from ..checkpoint import save_pruned

        return save_pruned(model, source, out, overwrite=overwrite)

    def backend(self, folder: str | Path, device: str = "cpu", name: str | None = None,
                exit_layer: int | None = None, numerics: str = "float32"):
        """A ``Wav2Vec2Backend`` (greedy or prefix beam search over the CTC posteriors) in float32 (``auto`` is
        float32 here: its numerics are not probed)."""
        from .backend import Wav2Vec2Backend

        if exit_layer is not None:
            raise ConfigError("--exit-layer reads a CTC model trained with exits (speechprune train) at a smaller "
                              "depth; a wav2vec2 model has no exits (prune its layers instead)", folder)
        if numerics not in ("float32", "auto"):
            raise ConfigError(f"a wav2vec2 model runs in float32 (numerics auto or float32), not {numerics}", folder)
        return Wav2Vec2Backend.from_folder(folder, device=device, name=name or "wav2vec2")

    def shape_record(self, model) -> dict:
        """Params and the encoder's FLOPs on a 30 s clip (``.flops``: per layer, from the live modules)."""
        return {"params": sum(p.numel() for p in model.parameters()),
                "flops_encoder": clip_flops(model, REFERENCE_SAMPLES)["total"],
                "flops_reference_samples": REFERENCE_SAMPLES}

    def labeller(self, model, source: str | Path | None = None) -> Wav2Vec2Labeller:
        """``model`` labelling audio read through ``source``'s front end (``preprocessor_config.json``; the
        feature extractor's defaults without a source), and spelling references in its tokenizer where it has one."""
        if source is None:
            return Wav2Vec2Labeller(model, WaveformFrontend())
        from .vocab import TokenizerVocab

        vocab = None
        if (Path(source) / "vocab.json").is_file():  # the spelling of reference targets
            vocab = TokenizerVocab(load_tokenizer(source, model.config.vocab_size, model.config.pad_token_id))
        return Wav2Vec2Labeller(model, read_frontend(source), vocab)

    def reference_scorer(self, backend, utterances: list, batch_size: int = 8, max_new_tokens: int | None = None,
                         cache_layers: bool = True, progress: bool = False):
        """A ``scoring.Wav2Vec2Scorer``: CTC loss per reference symbol, greedy hypotheses. One forward per score,
        so nothing is cached (``cache_layers``) and a search over every position has no token cap
        (``max_new_tokens``)."""
        from .scoring import Wav2Vec2Scorer

        return Wav2Vec2Scorer(backend, utterances, batch_size, progress=progress)

    def distill_outputs(self, student, batch: dict, layers: bool) -> DistillOutputs:
        """The student's logits and layer outputs against the teacher's at every real position, and the CTC loss on
        the teacher's greedy labels (the family's task loss, mean per label as transformers' ``"mean"``)."""
        device = next(student.parameters()).device
        states = forward_states(student, batch["input_values"].to(device), batch_samples(batch), inner=layers)
        real = torch.arange(states.logits.shape[1], device=device)[None, :] < states.lengths[:, None]
        labels = batch["labels"].to(device)
        given = labels >= 0
        task = F.ctc_loss(torch.log_softmax(states.logits.float(), dim=-1).transpose(0, 1), labels[given],
                          states.lengths, given.sum(dim=-1), blank=blank_of(student), reduction="mean",
                          zero_infinity=True)
        out = DistillOutputs(student_logits=states.logits[real],
                             teacher_logits=batch["teacher_logits"].to(device)[real], task_loss=task)
        if "teacher_encoder" in batch:
            out.student_final = states.hidden[real]
            out.teacher_final = batch["teacher_encoder"].to(device)[real]
        if layers:
            out.student_layers = [h[real] for h in states.inner]
            out.teacher_layers = batch["teacher_hidden"].to(device)[:, real]
        return out

    def set_length_buckets(self, model, buckets) -> None:
        raise ConfigError("recovery.length_adaptive: a wav2vec2 model already reads each clip's own samples; length "
                          "buckets are for Whisper's 30 s window")


FAMILY = Wav2Vec2Family()
