"""Decode a source's packaged audio once into 16 kHz mono WAVs under the cache, resumably.

Layout of ``cache_dir() / "unlabelled" / <source>``::

    wavs/<local id>.wav     16 kHz mono 16-bit PCM
    manifest.jsonl          one line per kept clip (format of speechprune.data.manifest; text "", language "en")
    dropped.jsonl           one line per clip left out while decoding: {"id", "reason"}
    build.json              what the folder is built from: source rules version + fingerprint of the input files
    complete.json           written last, equal to build.json: the build finished

Every WAV is written atomically before its manifest line is appended (and flushed), so a killed build resumes
where it stopped: a rerun skips the ids already in ``manifest.jsonl`` or ``dropped.jsonl``. Once
``complete.json`` matches the inputs, a rerun only reads the manifest. Changed inputs (another package version)
or changed rules give a fresh build. A lock file serialises two processes building the same source.

What is decided here, from the signal alone: a clip that cannot be decoded, is silent (peak below
:data:`SILENT_PEAK`) or lasts less than :data:`MIN_SECONDS` is dropped with its reason; a recording longer than
:data:`MAX_SECONDS` is cut at its quietest points into pieces ``<id>/000``, ``<id>/001``... of at most
:data:`PIECE_SECONDS` (see :func:`pause_cuts`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechprune.data.audio import SAMPLE_RATE, to_16k  # noqa: F401  (to_16k: used here and by its tests)
from speechprune.data.audio import decode_bytes as decode_soundfile  # noqa: F401  (the source readers' decoder)
from speechprune.data.audio import pcm16_wav_bytes
from speechprune.data.manifest import Utterance, read_manifest
from speechprune.io import (append_jsonl, atomic_write_bytes, atomic_write_json, locked, read_jsonl_tolerant,
                            repair_jsonl)
from speechprune.paths import cache_dir

MIN_SECONDS = 0.5  # shorter clips are grunts, clicks and single syllables
MAX_SECONDS = 30.0  # Whisper's window: longer recordings are cut into pieces
PIECE_SECONDS = 20.0  # longest piece cut from a long recording
MIN_PIECE_SECONDS = 4.0  # no cut closer than this to the previous one
SILENT_PEAK = 1e-3  # -60 dBFS
FORMAT_VERSION = 1  # of this folder layout; part of build.json

MANIFEST = "manifest.jsonl"
DROPPED = "dropped.jsonl"
BUILD = "build.json"
COMPLETE = "complete.json"
WAV_DIR = "wavs"
_FRAME_SECONDS = 0.02

log = logging.getLogger(__name__)

Decoded = tuple[np.ndarray, int]  # samples ([frames] or [frames, channels], any float/int dtype) and sample rate


@dataclass(frozen=True)
class Clip:
    """One packaged clip before decoding: its id within the source and how to decode it."""

    id: str  # local id, unique in the source: letters, digits, "_-./" (it names the WAV under wavs/)
    decode: Callable[[], Decoded]


def unique_files(files: Sequence[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """``files`` (id, path) without the later copies of a byte-identical file, in their order."""
    seen: set[bytes] = set()
    out = []
    for utt_id, path in files:
        digest = hashlib.sha256(path.read_bytes()).digest()
        if digest not in seen:
            seen.add(digest)
            out.append((utt_id, path))
    return out


def source_dir(name: str) -> Path:
    """Where source ``name``'s converted clips and manifest live."""
    return cache_dir() / "unlabelled" / name


def pause_cuts(samples: np.ndarray, rate: int, max_seconds: float = PIECE_SECONDS,
               min_seconds: float = MIN_PIECE_SECONDS) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` sample ranges covering ``samples``, none longer than ``max_seconds``: each cut is
    in the middle of the quietest 20 ms frame (the latest, among equally quiet ones) between ``min_seconds`` and
    ``max_seconds`` after the previous cut."""
    if max_seconds <= min_seconds or min_seconds <= 0:
        raise ValueError(f"need 0 < min_seconds < max_seconds, got {min_seconds}, {max_seconds}")
    frame = max(1, int(round(_FRAME_SECONDS * rate)))
    n = len(samples)
    usable = n // frame * frame
    energy = np.asarray(samples[:usable], np.float64).reshape(-1, frame) if usable else np.zeros((0, frame))
    energy = (energy**2).mean(axis=1)
    max_len, min_len = int(max_seconds * rate), int(min_seconds * rate)
    cuts, start = [], 0
    while n - start > max_len:
        lo, hi = (start + min_len) // frame, (start + max_len) // frame  # frames whose start may be the cut
        window = energy[lo:hi]
        last_min = window.size - 1 - int(np.argmin(window[::-1])) if window.size else 0  # latest of equal minima
        cut = (lo + last_min) * frame + frame // 2 if window.size else start + max_len
        cut = min(max(cut, start + 1), start + max_len)
        cuts.append((start, cut))
        start = cut
    cuts.append((start, n))
    return cuts


def inputs_fingerprint(paths: Iterable[Path]) -> str:
    """SHA-256 over the path, size and modification time of each input file (sorted)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        st = p.stat()
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _records(utt_id: str, audio: np.ndarray) -> list[tuple[str, np.ndarray | None, str]]:
    """(id, samples or None, drop reason) for one decoded clip: the clip itself, or its pieces when it is long."""
    seconds = audio.size / SAMPLE_RATE
    if seconds > MAX_SECONDS:
        pieces = [(f"{utt_id}/{i:03d}", audio[a:b]) for i, (a, b) in enumerate(pause_cuts(audio, SAMPLE_RATE))]
    else:
        pieces = [(utt_id, audio)]
    out: list[tuple[str, np.ndarray | None, str]] = []
    for pid, x in pieces:
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak < SILENT_PEAK:
            out.append((pid, None, f"silent (peak {peak:.1e})"))
        elif x.size < MIN_SECONDS * SAMPLE_RATE:
            out.append((pid, None, f"shorter than {MIN_SECONDS:g} s ({x.size / SAMPLE_RATE:.2f} s)"))
        else:
            out.append((pid, x, ""))
    return out


def _done_ids(folder: Path) -> set[str]:
    """Local ids already kept or dropped (a long recording's clip id never is: only its pieces' ids)."""
    done = set()
    for name in (MANIFEST, DROPPED):
        repair_jsonl(folder / name)
        done.update(str(r.get("id", "")).split("/", 1)[-1] for r in read_jsonl_tolerant(folder / name))
    return done


def build_source(name: str, rules: int, inputs: Sequence[Path], clips: Callable[[], Iterable[Clip]],
                 progress: bool = False) -> list[Utterance]:
    """The kept clips of source ``name`` (ids ``<name>/<local id>``), decoding what the cache lacks.

    ``rules`` is the source module's version of its clip selection (bump it to rebuild); ``inputs`` are the
    packaged files the clips come from; ``clips()`` lists the clips to decode. See the module docstring.
    """
    folder = source_dir(name)
    stamp = {"format": FORMAT_VERSION, "rules": rules, "inputs": inputs_fingerprint(inputs)}
    with locked(folder):
        if _read_json(folder / COMPLETE) != stamp:
            _build(folder, name, stamp, clips, progress)
        manifest = folder / MANIFEST
        return read_manifest(manifest) if manifest.stat().st_size else []


def _build(folder: Path, name: str, stamp: dict, clips: Callable[[], Iterable[Clip]], progress: bool) -> None:
    if _read_json(folder / BUILD) != stamp:  # another package version or other rules: start again
        for entry in (WAV_DIR, MANIFEST, DROPPED, COMPLETE):
            path = folder / entry
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        atomic_write_json(folder / BUILD, stamp)
    done = _done_ids(folder)
    todo = [c for c in clips() if c.id not in done]
    if todo:
        log.info("unlabelled %s: decoding %d clips into %s", name, len(todo), folder)
    for clip in tqdm(todo, desc=f"unlabelled {name}", unit="clip", disable=not progress):
        try:
            audio = to_16k(*clip.decode())
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            append_jsonl(folder / DROPPED, {"id": f"{name}/{clip.id}", "reason": f"cannot decode ({reason})"})
            continue
        for pid, samples, reason in _records(clip.id, audio):
            if pid in done:  # a piece of a long recording that a killed build already wrote
                continue
            if samples is None:
                append_jsonl(folder / DROPPED, {"id": f"{name}/{pid}", "reason": reason})
                continue
            rel = f"{WAV_DIR}/{pid}.wav"
            atomic_write_bytes(folder / rel, pcm16_wav_bytes(samples))
            append_jsonl(folder / MANIFEST, {"id": f"{name}/{pid}", "audio": rel, "text": "", "language": "en",
                                             "duration": round(samples.size / SAMPLE_RATE, 4)})
    (folder / MANIFEST).touch()
    atomic_write_json(folder / COMPLETE, stamp)


def dropped_while_decoding(name: str) -> dict[str, str]:
    """``{id: reason}`` of the clips of ``name`` that the last build left out (empty before a build)."""
    return {str(r["id"]): str(r.get("reason", "")) for r in read_jsonl_tolerant(source_dir(name) / DROPPED)
            if "id" in r}
