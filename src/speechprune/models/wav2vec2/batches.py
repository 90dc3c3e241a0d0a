"""The wav2vec2 family's batches: each clip's waveform through the front end (normalized, zero-padded to the batch)
with CTC targets, either from the clip's reference text spelled in the tokenizer's characters (scoring) or from a
teacher's greedy CTC output (calibration and distillation, which need audio only).

A batch is ``Wav2Vec2ForCTC``'s forward keyword arguments, ``{input_values [N, S], attention_mask [N, S],
labels [N, L]}`` (labels padded with -100, as transformers reads them), so ``model(**batch).loss`` is the CTC
loss that calibration reads; a teacher adds ``teacher_logits`` (``[N, T', V]`` before the softmax),
``teacher_encoder`` (the last layer's output) and ``teacher_hidden`` (every inner layer's output,
``[layers - 1, N, T', d]``), all fp16 on the CPU, at the positions ``forward.forward_states`` gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ...data.audio import SAMPLE_RATE, read_training_clip
from ...data.features import WINDOW_SECONDS, WaveformFrontend
from ...data.manifest import Utterance
from ...errors import ManifestError, ModelError
from .forward import forward_states, receptive_field
from .vocab import TokenizerVocab, ctc_search


@dataclass
class Clip:
    id: str
    audio: np.ndarray  # float32 samples at 16 kHz
    target: list[int]
    text: str


def prepare_clips(utts: list[Utterance], vocab: TokenizerVocab | None, min_samples: int, progress: bool = False,
                  labelled: bool = True) -> tuple[list[Clip], dict[str, list[str]]]:
    """Each usable clip's audio and, when ``labelled``, its reference spelled in ``vocab`` (else an empty target: a
    teacher labels the clip). Clips that cannot be used are skipped and listed by reason: unreadable audio, no text,
    characters outside the vocabulary (those two only when ``labelled``), longer than 30 s, shorter than the feature
    encoder's receptive field."""
    clips: list[Clip] = []
    skipped: dict[str, list[str]] = {}
    for u in tqdm(utts, desc="audio", disable=not progress, leave=False):
        text, audio, reason = read_training_clip(u, vocab, labelled)
        if reason is None:
            if len(audio) > WINDOW_SECONDS * SAMPLE_RATE:
                reason = "longer than 30 s"
            elif len(audio) < min_samples:
                reason = "shorter than the feature encoder's receptive field"
        if reason is not None:
            skipped.setdefault(reason, []).append(u.id)
            continue
        clips.append(Clip(u.id, audio, vocab.encode(text) if labelled else [], text))
    return clips, skipped


def collate(clips: list[Clip], frontend: WaveformFrontend) -> dict[str, torch.Tensor]:
    """The forward arguments of ``clips`` (on the CPU)."""
    audios = [c.audio for c in clips]
    samples = frontend.lengths(audios)
    waves = torch.from_numpy(frontend(audios))
    mask = (torch.arange(waves.shape[1])[None, :] < torch.tensor(samples)[:, None]).long()
    labels = torch.full((len(clips), max([len(c.target) for c in clips] + [1])), -100, dtype=torch.long)
    for i, c in enumerate(clips):
        labels[i, : len(c.target)] = torch.tensor(c.target, dtype=torch.long)
    return {"input_values": waves, "attention_mask": mask, "labels": labels}


def batch_samples(batch: dict) -> list[int]:
    """Each clip's real samples in a batch."""
    return batch["attention_mask"].sum(dim=-1).tolist()


def blank_of(model) -> int:
    """The CTC blank a ``Wav2Vec2ForCTC`` is trained with: its config's ``pad_token_id``."""
    blank = model.config.pad_token_id
    if blank is None:
        raise ModelError("the wav2vec2 config has no pad_token_id (the CTC blank)")
    return int(blank)


class Wav2Vec2Labeller:
    """A (dense) ``Wav2Vec2ForCTC`` labelling audio for its pruned students: its greedy transcripts as targets and,
    for distillation, its logits and layer outputs at every position."""

    def __init__(self, model, frontend: WaveformFrontend, vocab: TokenizerVocab | None = None):
        self.model = model
        self.frontend = frontend
        self.blank = blank_of(model)
        self.vocab = vocab  # the tokenizer's spelling, for reference targets

    def labelled_batches(self, utterances: list[Utterance], batch_size: int, teacher_logits: bool = False,
                         teacher_hidden: bool = False, progress: bool = False, frames: bool = False) -> list[dict]:
        """Batches of ``batch_size`` clips in the given order (unusable clips skipped), targets from this model's
        greedy output; see the module for the teacher's extras. ``frames`` changes nothing: every batch carries its
        clips' lengths (``attention_mask``)."""
        model = self.model
        clips, _ = prepare_clips(utterances, None, receptive_field(model), progress=progress, labelled=False)
        if not clips:
            raise ManifestError("none of the clips can be read by a wav2vec2 model (unreadable, over 30 s or too "
                                "short)")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        batches = []
        for i in range(0, len(clips), batch_size):
            batch = collate(clips[i : i + batch_size], self.frontend)
            with torch.inference_mode():
                states = forward_states(model, batch["input_values"].to(device), batch_samples(batch),
                                        inner=teacher_hidden)
                ids = ctc_search(states.logits, states.lengths, self.blank)
            labels = torch.full((len(ids), max([len(s) for s in ids] + [1])), -100, dtype=torch.long)
            for j, seq in enumerate(ids):
                labels[j, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            batch["labels"] = labels
            if teacher_logits:
                batch["teacher_logits"] = states.logits.half().cpu()
                batch["teacher_encoder"] = states.hidden.half().cpu()
            if teacher_hidden and states.inner:
                batch["teacher_hidden"] = torch.stack(states.inner).half().cpu()
            batches.append(batch)
        model.train(was_training)
        return batches

    def reference_batches(self, utterances: list[Utterance], batch_size: int) -> list[dict]:
        """Batches of ``batch_size`` clips with their reference texts spelled in the tokenizer's characters as
        labels (unusable clips skipped)."""
        if self.vocab is None:
            raise ModelError("reference targets need the model's tokenizer: label from a folder that has one")
        clips, _ = prepare_clips(utterances, self.vocab, receptive_field(self.model))
        if not clips:
            raise ManifestError("none of the clips can be fine-tuned on by a wav2vec2 model (unreadable, no text, "
                                "characters outside the vocabulary, over 30 s or too short)")
        return [collate(clips[i : i + batch_size], self.frontend) for i in range(0, len(clips), batch_size)]
