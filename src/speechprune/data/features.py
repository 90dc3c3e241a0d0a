"""The front ends backends are fed from: what turns a batch of 16 kHz clips into the array a backend's ``encode``
reads, and each clip's length in that array's units.

Comparing backends, or a model before and after pruning, through different feature extractors measures the
extractors: faster-whisper's own front end differs from transformers' in the 30 s zero-padding region, and
that alone flips text on short clips. Every backend here therefore takes features, not audio, and says which front
end it reads (``backend.frontend()``): Whisper and the CTC family the log-mel ``FeatureFrontend``, wav2vec2 the
normalized waveform (``WaveformFrontend``). Front ends compare equal when they compute the same thing (``key``), so
several backends timed or evaluated side by side share one computation of their input.

A front end is called on a list of float32 clips (``frontend(audios)``: the batch array) and gives each clip's
length in the array's time units (``frontend.lengths(audios)``: log-mel frames, samples), which ``encode`` takes as
``frames``.
"""

from __future__ import annotations

import numpy as np
from transformers import WhisperFeatureExtractor

from .audio import SAMPLE_RATE

WINDOW_SECONDS = 30.0
HOP_SAMPLES = 160  # samples per log-mel frame
WINDOW_FRAMES = 3000


def real_frames(samples: int) -> int:
    """The log-mel frames a clip of ``samples`` samples fills in its window (``n // 160 + 1``, at most 3000)."""
    return min(samples // HOP_SAMPLES + 1, WINDOW_FRAMES)


class _Frontend:
    """Equality and hashing by ``key`` (what the front end computes), shared by the front ends."""

    key: tuple

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frontend) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.key[1:]}"


class FeatureFrontend(_Frontend):
    """Whisper log-mel features, padded to one 30 s window: ``[batch, n_mels, 3000]`` float32; a clip's length is
    its real frames (``real_frames``)."""

    def __init__(self, n_mels: int = 80):
        self.n_mels = n_mels
        self.key = ("log-mel", n_mels)
        self._fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE)

    def __call__(self, audios: list[np.ndarray]) -> np.ndarray:
        if not audios:
            raise ValueError("no audio")
        feats = self._fe(audios, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        return np.ascontiguousarray(feats, dtype=np.float32)

    def lengths(self, audios: list[np.ndarray]) -> list[int]:
        """Each clip's real log-mel frames in its window."""
        return [real_frames(len(a)) for a in audios]


NORM_EPSILON = 1e-7  # added to the variance, as transformers' Wav2Vec2FeatureExtractor does


class WaveformFrontend(_Frontend):
    """The 16 kHz waveform itself, zero-padded to the batch's longest clip: ``[batch, samples]`` float32; with
    ``normalize`` each clip is shifted and scaled to zero mean and unit variance over its own samples first
    (``(x - mean) / sqrt(var + 1e-7)``, what transformers' ``Wav2Vec2FeatureExtractor`` does with ``do_normalize``;
    the statistics are accumulated in float64). A clip's length is its samples."""

    def __init__(self, normalize: bool = True, padding_value: float = 0.0):
        self.normalize, self.padding_value = bool(normalize), float(padding_value)
        self.key = ("waveform", SAMPLE_RATE, self.normalize, self.padding_value)

    def __call__(self, audios: list[np.ndarray]) -> np.ndarray:
        if not audios:
            raise ValueError("no audio")
        out = np.full((len(audios), max(len(a) for a in audios)), self.padding_value, dtype=np.float32)
        for row, a in zip(out, audios):
            x = np.asarray(a, dtype=np.float64)
            if self.normalize and len(x):
                x = (x - x.mean()) / np.sqrt(x.var() + NORM_EPSILON)
            row[: len(x)] = x
        return out

    def lengths(self, audios: list[np.ndarray]) -> list[int]:
        """Each clip's samples."""
        return [len(a) for a in audios]


MAX_CLIP_SECONDS = 600.0  # longer clips are refused: evaluate long-form audio as segmented utterances


def split_windows(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, window_s: float = WINDOW_SECONDS,
                  search_s: float = 2.0, frame_s: float = 0.05) -> list[np.ndarray]:
    """Cut a clip longer than one window into consecutive windows, each cut placed at the quietest
    ``frame_s`` frame within the last ``search_s`` seconds before the window's end (so words are rarely split).
    A clip that fits one window is returned whole."""
    win, search, frame = int(window_s * sample_rate), int(search_s * sample_rate), int(frame_s * sample_rate)
    out, start = [], 0
    while len(audio) - start > win:
        lo, hi = start + win - search, start + win
        seg = audio[lo:hi]
        n = len(seg) // frame
        energy = (seg[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
        cut = lo + int(np.argmin(energy)) * frame + frame // 2
        out.append(audio[start:cut])
        start = cut
    out.append(audio[start:])
    return out
