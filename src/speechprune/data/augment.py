"""Noise and channel augmentation for recovery and calibration audio: pure functions on 16 kHz float32 arrays.

Distillation needs no transcripts: the dense teacher labels whatever it hears, so recovery data can be made as
varied as the voices, rooms and channels a pruned model will meet. Each clip is transformed by a chain drawn from
``numpy.random.default_rng([seed, index])`` (the same clip sounds the same on every run):

- ``speed``: resampling by a factor in ``speed`` (pitch and tempo together, as Kaldi's speed perturbation);
- ``reverb``: convolution with a synthetic room response (exponentially decaying noise, RT60 0.15-0.8 s);
- ``telephone``: the 300-3400 Hz band of an 8 kHz line, then mu-law companding (G.711);
- ``noise``: white, pink or brown noise, or another clip of the set (babble), at an SNR in ``snr_db``;
- ``gain``: a peak level in [0.1, 0.95].

Each step happens with its own probability, so some clips stay clean.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import soundfile as sf
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import AudioError
from .audio import SAMPLE_RATE, load_audio, resample
from .manifest import Utterance

NOISE_KINDS = ("white", "pink", "brown", "babble")


class AugmentSettings(BaseModel):
    """Probabilities and ranges of each step (see the module docstring); a recipe's ``recovery.augment``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    speed_p: float = Field(default=0.3, ge=0, le=1, description="probability")
    speed: tuple[float, float] = (0.9, 1.1)
    reverb_p: float = Field(default=0.3, ge=0, le=1, description="probability")
    telephone_p: float = Field(default=0.25, ge=0, le=1, description="probability")
    noise_p: float = Field(default=0.5, ge=0, le=1, description="probability")
    snr_db: tuple[float, float] = (5.0, 30.0)
    gain_p: float = Field(default=0.5, ge=0, le=1, description="probability")

    @model_validator(mode="after")
    def _ranges(self) -> "AugmentSettings":
        lo, hi = self.speed
        if not 0.5 <= lo <= hi <= 2.0:
            raise ValueError(f"speed range must lie in [0.5, 2.0] and be ordered, got {self.speed}")
        if self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"snr_db range is not ordered: {self.snr_db}")
        return self


def colored_noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of unit-RMS noise: white (flat), pink (1/f power) or brown (1/f^2 power)."""
    white = rng.standard_normal(n)
    if kind == "white" or n < 2:
        x = white
    else:
        exponent = {"pink": 0.5, "brown": 1.0}[kind]  # amplitude ~ f^-exponent
        spec = np.fft.rfft(white)
        f = np.fft.rfftfreq(n)
        f[0] = f[1]
        x = np.fft.irfft(spec / f**exponent, n)
    return (x / max(float(np.sqrt(np.mean(x**2))), 1e-12)).astype(np.float32)


def add_noise(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``x`` plus ``noise`` (tiled or cut to its length) scaled to ``snr_db`` below the signal's power."""
    if len(noise) < len(x):
        noise = np.tile(noise, int(np.ceil(len(x) / max(len(noise), 1))))
    noise = noise[: len(x)]
    p_signal, p_noise = float(np.mean(x**2)), float(np.mean(noise**2))
    if p_signal == 0.0 or p_noise == 0.0:
        return x.astype(np.float32)
    scale = np.sqrt(p_signal / (p_noise * 10 ** (snr_db / 10)))
    return (x + scale * noise).astype(np.float32)


def room_response(rt60: float, rng: np.random.Generator, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response: a direct path, then a diffuse tail (noise at 0.2 of it) decaying by 60 dB
    over ``rt60`` seconds."""
    n = max(int(rt60 * sr), 1)
    t = np.arange(n) / sr
    h = 0.2 * rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 6.9078: -60 dB at rt60
    h[0] = 1.0
    return (h / np.sqrt(np.sum(h**2))).astype(np.float32)


def reverberate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``h`` (FFT), cut to ``x``'s length and scaled back to its peak."""
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]
    peak = float(np.max(np.abs(y))) or 1.0
    return (y * (float(np.max(np.abs(x))) / peak)).astype(np.float32)


def telephone(x: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """A G.711 telephone channel: band-limited to 300-3400 Hz at 8 kHz, mu-law companded (8 bits), back at ``sr``."""
    y = resample(x.astype(np.float32), sr, 8000)
    spec = np.fft.rfft(y)
    f = np.fft.rfftfreq(len(y), 1 / 8000)
    spec[(f < 300) | (f > 3400)] = 0
    y = np.fft.irfft(spec, len(y))
    mu = 255.0
    y = np.clip(y, -1.0, 1.0)
    encoded = np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu)  # in [-1, 1]
    encoded = np.round((encoded + 1) / 2 * mu) / mu * 2 - 1  # 8 bits
    y = np.sign(encoded) * ((1 + mu) ** np.abs(encoded) - 1) / mu
    return resample(y.astype(np.float32), 8000, sr)


def change_speed(x: np.ndarray, factor: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Play ``x`` ``factor`` times faster (pitch shifts with it): resample from ``sr * factor`` to ``sr``."""
    if abs(factor - 1.0) < 1e-6:
        return x.astype(np.float32)
    return resample(x.astype(np.float32), int(round(sr * factor)), sr)


def augment(x: np.ndarray, settings: AugmentSettings, rng: np.random.Generator,
            babble: np.ndarray | None = None) -> tuple[np.ndarray, list[str]]:
    """One draw of the chain over ``x`` (16 kHz float32); returns the audio and the steps taken, e.g.
    ``["speed 1.07", "noise pink 12 dB"]``. ``babble`` is another clip, used when the noise drawn is babble."""
    steps: list[str] = []
    y = x.astype(np.float32)
    if rng.random() < settings.speed_p:
        factor = float(rng.uniform(*settings.speed))
        y = change_speed(y, factor)
        steps.append(f"speed {factor:.2f}")
    if rng.random() < settings.reverb_p:
        rt60 = float(rng.uniform(0.15, 0.8))
        y = reverberate(y, room_response(rt60, rng))
        steps.append(f"reverb {rt60:.2f} s")
    if rng.random() < settings.noise_p and len(y):
        kinds = NOISE_KINDS if babble is not None and len(babble) else NOISE_KINDS[:-1]
        kind = str(rng.choice(kinds))
        snr = float(rng.uniform(*settings.snr_db))
        noise = babble.astype(np.float32) if kind == "babble" else colored_noise(len(y), kind, rng)
        y = add_noise(y, noise, snr)
        steps.append(f"noise {kind} {snr:.0f} dB")
    if rng.random() < settings.telephone_p:
        y = telephone(y)
        steps.append("telephone")
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak > 0:
        level = float(rng.uniform(0.1, 0.95)) if rng.random() < settings.gain_p else min(peak, 0.95)
        y = y * (level / peak)
        if level != peak:
            steps.append(f"gain {level:.2f}")
    return y.astype(np.float32), steps


def augment_utterances(utterances: list[Utterance], settings: AugmentSettings, out_dir: str | Path,
                       seed: int = 0) -> list[Utterance]:
    """Each utterance once, through one draw of the chain (``default_rng([seed, i])``; babble noise is another clip
    of the list), written as a 16 kHz float WAV in ``out_dir``. Texts stay (the teacher relabels the audio anyway);
    unreadable clips are passed on untouched (labelling skips them)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    out: list[Utterance] = []
    n = len(utterances)
    for i, u in enumerate(utterances):
        rng = np.random.default_rng([seed, i])
        try:
            audio = load_audio(u.audio)
        except AudioError:
            out.append(u)
            continue
        babble = None
        if n > 1:
            other = utterances[(i + 1 + int(rng.integers(n - 1))) % n]
            try:
                babble = load_audio(other.audio)
            except AudioError:
                babble = None
        y, _ = augment(audio, settings, rng, babble)
        path = out_dir / f"aug-{i:06d}.wav"
        sf.write(path, y, SAMPLE_RATE, subtype="FLOAT")
        out.append(replace(u, audio=path.resolve(), duration=len(y) / SAMPLE_RATE))
    return out
