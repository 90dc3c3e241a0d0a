"""The one log-mel front end every backend is fed from.

Comparing backends, or a model before and after pruning, through different feature extractors measures the
extractors: faster-whisper's own front end differs from transformers' in the 30 s zero-padding region, and
that alone flips text on short clips. Every backend here therefore takes features, not audio.
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


class FeatureFrontend:
    """Whisper log-mel features, padded to one 30 s window: ``[batch, n_mels, 3000]`` float32."""

    def __init__(self, n_mels: int = 80):
        self.n_mels = n_mels
        self._fe = WhisperFeatureExtractor(feature_size=n_mels, sampling_rate=SAMPLE_RATE)

    def __call__(self, audios: list[np.ndarray]) -> np.ndarray:
        if not audios:
            raise ValueError("no audio")
        feats = self._fe(audios, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        return np.ascontiguousarray(feats, dtype=np.float32)


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
