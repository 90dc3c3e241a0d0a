"""The CTC family's batches: each clip's log-mel frames (the shared front end, no padding to 30 s) with character
targets, either from the clip's reference text (training) or from a teacher's greedy CTC output (calibration and
distillation, which need audio only).

A batch is the model's forward keyword arguments, ``{features, lengths, targets, target_lengths}``, so
``model(**batch).loss`` is the CTC loss that calibration reads; a teacher adds ``teacher_logits`` (``[N, T', V]``
before the softmax), ``teacher_encoder`` (the last layer's output, before the shared final norm) and
``teacher_hidden`` (every inner layer's output, ``[layers - 1, N, T', d]``), all fp16 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ...data.audio import read_training_clip
from ...data.features import HOP_SAMPLES, WINDOW_FRAMES, FeatureFrontend
from ...data.manifest import Utterance
from ...errors import ManifestError
from .network import CTCModel
from .vocab import CharVocab, greedy_ctc


@dataclass
class Example:
    id: str
    features: np.ndarray  # [n_mels, frames] float32
    target: list[int]
    text: str


def prepare_examples(utts: list[Utterance], vocab: CharVocab, n_mels: int, min_frames: int,
                     progress: bool = False, labelled: bool = True) -> tuple[list[Example], dict[str, list[str]]]:
    """Log-mel features of each clip's real frames (the shared Whisper front end) and, when ``labelled``, its
    reference's character ids (else an empty target: a teacher labels the clip). Clips that cannot be used are
    skipped and listed by reason: unreadable audio, no text, characters outside the vocabulary (those two only when
    ``labelled``), longer than 30 s, shorter than the stem's receptive field."""
    frontend = FeatureFrontend(n_mels)
    examples: list[Example] = []
    skipped: dict[str, list[str]] = {}
    for u in tqdm(utts, desc="features", disable=not progress, leave=False):
        text, audio, reason = read_training_clip(u, vocab, labelled)
        if reason is None:
            frames = len(audio) // HOP_SAMPLES + 1
            if frames > WINDOW_FRAMES:
                reason = "longer than 30 s"
            elif frames < min_frames:
                reason = "shorter than the stem's receptive field"
        if reason is not None:
            skipped.setdefault(reason, []).append(u.id)
            continue
        feats = frontend([audio])[0, :, :frames]
        examples.append(Example(u.id, np.ascontiguousarray(feats), vocab.encode(text) if labelled else [], text))
    return examples, skipped


def collate(examples: list[Example], device) -> dict[str, torch.Tensor]:
    lengths = [e.features.shape[1] for e in examples]
    feats = np.zeros((len(examples), examples[0].features.shape[0], max(lengths)), dtype=np.float32)
    for i, e in enumerate(examples):
        feats[i, :, : lengths[i]] = e.features
    return {"features": torch.from_numpy(feats).to(device), "lengths": torch.tensor(lengths, device=device),
            "targets": torch.tensor([t for e in examples for t in e.target], dtype=torch.long, device=device),
            "target_lengths": torch.tensor([len(e.target) for e in examples], device=device)}


class CTCLabeller:
    """A (dense) CTC model labelling audio for its pruned students: its greedy transcripts as targets and, for
    distillation, its logits and layer outputs at every real frame."""

    def __init__(self, model: CTCModel):
        self.model = model
        self.vocab = CharVocab(model.config.vocab)

    def labelled_batches(self, utterances: list[Utterance], batch_size: int, teacher_logits: bool = False,
                         teacher_hidden: bool = False, progress: bool = False, frames: bool = False) -> list[dict]:
        """Batches of ``batch_size`` clips in the given order (unusable clips skipped), targets from this model's
        greedy output; see the module for the teacher's extras. ``frames`` changes nothing: every batch carries its
        clips' ``lengths``."""
        model = self.model
        examples, _ = prepare_examples(utterances, self.vocab, model.config.n_mels, model.stem.receptive_field,
                                       progress=progress, labelled=False)
        if not examples:
            raise ManifestError("none of the clips can be read by a CTC model (unreadable, over 30 s or too short)")
        device = next(model.parameters()).device
        inner = tuple(range(1, model.depth)) if teacher_hidden else ()
        was_training = model.training
        model.eval()
        batches = []
        for i in range(0, len(examples), batch_size):
            batch = collate(examples[i : i + batch_size], device)
            with torch.inference_mode():
                enc = model.encode(batch["features"], batch["lengths"], taps=inner)
                logits = model.head(model.layer_norm(enc.hidden))
                ids = greedy_ctc(torch.log_softmax(logits.float(), dim=-1), enc.lengths)
            batch = {k: v.cpu() for k, v in batch.items()}
            batch["targets"] = torch.tensor([t for seq in ids for t in seq], dtype=torch.long)
            batch["target_lengths"] = torch.tensor([len(seq) for seq in ids])
            if teacher_logits:
                batch["teacher_logits"] = logits.half().cpu()
                batch["teacher_encoder"] = enc.hidden.half().cpu()
            if inner:
                batch["teacher_hidden"] = torch.stack([enc.taps[k] for k in inner]).half().cpu()
            batches.append(batch)
        model.train(was_training)
        return batches

    def reference_batches(self, utterances: list[Utterance], batch_size: int) -> list[dict]:
        """Batches of ``batch_size`` clips with their reference texts' characters as targets (unusable clips
        skipped, as in training)."""
        examples, _ = prepare_examples(utterances, self.vocab, self.model.config.n_mels,
                                       self.model.stem.receptive_field)
        if not examples:
            raise ManifestError("none of the clips can be fine-tuned on by a CTC model (unreadable, no text, "
                                "characters outside the vocabulary, over 30 s or too short)")
        return [collate(examples[i : i + batch_size], "cpu") for i in range(0, len(examples), batch_size)]
