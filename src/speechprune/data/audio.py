"""Read audio files as mono float32 at one sample rate, failing with a one-line :class:`AudioError`.

Every problem a user can cause (missing file, corrupt or truncated data, empty or overlong clip,
NaN samples) becomes an ``AudioError`` naming the file; no soundfile traceback escapes.

libsndfile quietly shrinks the frame count of a truncated WAV to what the file holds, so the WAV
``data`` chunk size is read from the RIFF header here and compared with the frames actually present.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from speechprune.errors import AudioError

SAMPLE_RATE = 16000

# A WAV data size that means "unknown length" (streamed writers put 0 or 0xFFFFFFFF there).
_UNKNOWN_WAV_SIZES = (0, 0xFFFFFFFF)
_MAX_RIFF_CHUNKS = 64


def _check_path(path: Path) -> None:
    """Raise if ``path`` does not exist or is not a regular file."""
    if not path.exists():
        raise AudioError("file not found", path)
    if not path.is_file():
        raise AudioError("not a file", path)


def _libsndfile_reason(exc: Exception, path: Path) -> str:
    """soundfile's message without the ``Error opening '<path>': `` prefix (the error class adds the path)."""
    msg = " ".join(str(exc).split())
    for prefix in (f"Error opening {str(path)!r}:", "Error :"):
        if msg.startswith(prefix):
            msg = msg[len(prefix):].strip()
            break
    return msg.rstrip(".") or type(exc).__name__


def _open(path: Path) -> sf.SoundFile:
    """Open ``path`` with soundfile, turning any failure into an ``AudioError``."""
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"cannot read audio ({_libsndfile_reason(exc, path)})", path) from None


def wav_header_frames(path: str | Path) -> int | None:
    """Frames a RIFF/WAVE file's ``data`` chunk claims to hold, or None when that is unknown.

    None for non-RIFF files (RIFX, RF64, FLAC, ...), streamed WAVs (size 0 or 0xFFFFFFFF) and
    headers that cannot be parsed (libsndfile reports those itself).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            for _ in range(_MAX_RIFF_CHUNKS):
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"data":
                    if size in _UNKNOWN_WAV_SIZES or block_align <= 0:
                        return None
                    return size // block_align
                body_start = f.tell()
                if cid == b"fmt ":
                    fmt = f.read(min(size, 16))
                    if len(fmt) < 14:
                        return None
                    block_align = struct.unpack("<H", fmt[12:14])[0]
                f.seek(body_start + size + (size & 1))
    except OSError:
        return None
    return None


def _check_frames(path: Path, info_frames: int, format_name: str) -> None:
    """Raise when the header promises more frames than the file holds, or when there are none."""
    header = wav_header_frames(path) if format_name == "WAV" else None
    if header is not None and info_frames < header:
        raise AudioError(f"truncated: header says {header} frames, read {info_frames}", path)
    if info_frames == 0:
        raise AudioError("audio is empty (0 samples)", path)


def _check_length(path: Path, frames: int, sample_rate: int, max_seconds: float | None) -> None:
    """Raise when the clip lasts longer than ``max_seconds``."""
    if max_seconds is None:
        return
    seconds = frames / sample_rate
    if seconds > max_seconds:
        raise AudioError(f"clip is {seconds:.2f} s, longer than the {max_seconds:g} s limit", path)


def _read_frames(path: Path, f: sf.SoundFile) -> np.ndarray:
    """All frames of an open file as float32 [frames, channels]; a short or failed read is 'truncated'."""
    expected = f.frames
    try:
        data = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioError(f"truncated or corrupt audio data ({_libsndfile_reason(exc, path)})", path) from None
    if data.shape[0] != expected:
        raise AudioError(f"truncated: header says {expected} frames, read {data.shape[0]}", path)
    return data


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of a [frames, channels] array into a 1-D float32 array."""
    if data.ndim == 1:
        return data.astype(np.float32, copy=False)
    if data.shape[1] == 1:
        return data[:, 0].astype(np.float32, copy=False)
    return data.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample 1-D float32 audio with soxr (HQ); returns the input unchanged when the rates match."""
    if from_rate == to_rate:
        return samples
    out = soxr.resample(samples, from_rate, to_rate, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Read ``path`` (wav, flac, ogg, ...) as mono float32 samples at ``sample_rate``.

    Channels are averaged; other rates are resampled with soxr HQ. Raises :class:`AudioError` when
    the file is missing, unreadable, truncated, empty, holds NaN/inf samples, or lasts longer than
    ``max_seconds`` (checked on the file's own length, before decoding).
    """
    path = Path(path)
    _check_path(path)
    with _open(path) as f:
        file_rate = f.samplerate
        _check_frames(path, f.frames, f.format)
        _check_length(path, f.frames, file_rate, max_seconds)
        data = _read_frames(path, f)
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise AudioError(f"audio has {bad} non-finite samples (NaN or inf)", path)
    return resample(to_mono(data), file_rate, sample_rate)


def readable_clips(items: list, max_seconds: float | None = None) -> tuple[list, list[np.ndarray]]:
    """The items (anything with an ``audio`` path) whose audio reads, up to ``max_seconds``, and their 16 kHz
    samples, in order; an unreadable clip is left out (its ``AudioError`` is not raised)."""
    kept, audios = [], []
    for item in items:
        try:
            audios.append(load_audio(item.audio, max_seconds=max_seconds))
            kept.append(item)
        except AudioError:
            continue
    return kept, audios


def audio_duration(path: str | Path) -> float:
    """Length of ``path`` in seconds from its header (``soundfile.info``); errors as in :func:`load_audio`."""
    path = Path(path)
    _check_path(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise AudioError(f"cannot read audio ({_libsndfile_reason(exc, path)})", path) from None
    if info.samplerate <= 0 or not math.isfinite(info.duration):
        raise AudioError(f"invalid sample rate {info.samplerate}", path)
    return info.frames / info.samplerate


def decode_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """A whole audio file held in memory (WAV, Ogg Vorbis, FLAC, MP3...) through libsndfile: float32
    ``[frames, channels]`` and its sample rate."""
    import io

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return samples, int(rate)


def to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    """Mono float32 at 16 kHz, clipped to [-1, 1] (integer input is scaled from its type's full range)."""
    x = np.asarray(samples)
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        x = (x.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    mono = resample(to_mono(x.astype(np.float32, copy=False)), int(rate), SAMPLE_RATE)
    return np.clip(mono, -1.0, 1.0).astype(np.float32, copy=False)


def pcm16_wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz mono samples in [-1, 1] as 16-bit WAV file bytes."""
    import io

    buf = io.BytesIO()
    sf.write(buf, samples, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def read_training_clip(utt, vocab, labelled: bool) -> tuple[str, np.ndarray | None, str | None]:
    """``(text, audio, reason)`` of a clip a CTC-style trainer reads: its normalized text (``""`` unless
    ``labelled``) and audio, or a skip ``reason`` (no text or characters outside ``vocab`` (``vocab.unknown``), both
    only when ``labelled``; unreadable audio) with ``audio`` None. Length limits are the caller's (its stem)."""
    from .normalize import normalize_text

    text = normalize_text(utt.text) if labelled else ""
    if labelled and not text:
        return text, None, "no text"
    if labelled and vocab.unknown(text):
        return text, None, "characters outside the vocabulary"
    try:
        return text, load_audio(utt.audio), None
    except AudioError:
        return text, None, "unreadable audio"
