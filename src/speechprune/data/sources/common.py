"""What the source readers share: finding a Debian package's files, and converting audio once into the cache.

Audio that soundfile reads directly (ogg, au files on disk) is used where it lies. Audio it cannot read (raw
8-bit samples, ogg inside a zip) is decoded by the source's pure decoder and written once as 16 kHz mono 16-bit
WAV under ``cache_dir() / "sources" / <source>``, atomically (temporary file + rename), so an interrupted build
never leaves half a file and a rerun reuses what is there. A converted file's name carries a fingerprint of its
input (a CRC-32 of the bytes, or the zip member's CRC), so a changed package gives new files, never stale ones.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from speechprune.data.audio import audio_duration, pcm16_wav_bytes, to_16k
from speechprune.errors import ConfigError
from speechprune.io import atomic_write_bytes
from speechprune.paths import cache_dir


def require(path: Path, package: str, what: str = "", want_dir: bool | None = None) -> Path:
    """``path`` when it exists (a folder if ``want_dir``, a file if False, either if None); else a one-line
    ConfigError naming it (as ``what``), and the Debian package that installs it."""
    if path.exists() if want_dir is None else path.is_dir() if want_dir else path.is_file():
        return path
    raise ConfigError(f"{what + ' ' if what else ''}not found; install it with: sudo apt-get install {package}", path)


def source_cache(source: str) -> Path:
    """The folder that holds ``source``'s converted audio."""
    return cache_dir() / "sources" / source


def fingerprint(data: bytes) -> str:
    """A short content fingerprint (CRC-32, 8 hex digits) for naming converted files."""
    return f"{zlib.crc32(data) & 0xFFFFFFFF:08x}"


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """``samples`` (float, any rate, mono or [frames, channels]) as 16 kHz mono 16-bit WAV bytes, clipped to [-1, 1]."""
    return pcm16_wav_bytes(to_16k(samples, rate))


def converted_wav(
    folder: Path, key: str, fprint: str, decode: Callable[[], tuple[np.ndarray, int]]
) -> tuple[Path, float]:
    """Path and duration (s) of the WAV for ``key`` with input fingerprint ``fprint`` in ``folder`` (a
    :func:`source_cache`); on first use ``decode()`` gives (samples, rate) and the WAV is written atomically."""
    path = folder / f"{key}.{fprint}.wav"
    if path.is_file():
        return path, audio_duration(path)
    samples, rate = decode()
    data = wav_bytes(samples, rate)
    atomic_write_bytes(path, data)
    return path, audio_duration(path)
