"""Synthetic English training speech, made offline from text corpora: never the Asterisk test prompts.

:func:`synthesize` reads sentences from :mod:`speechprune.data.text_corpora`, speaks them with the engines
in turn (utterance ``i`` uses ``engines[i % len(engines)]``) and writes into ``out_dir``::

    wavs/000000-espeak-ng-en-us+m3.wav     16 kHz mono 16-bit PCM
    manifest.jsonl                         one line per finished utterance (format of data/manifest.py)
    synth.json                             seed, text sources and telephone flag the folder was made with

Engines (each voice, speed and pitch drawn from ``numpy.random.default_rng([seed, i])``, so an utterance
sounds the same on every run):

- ``"espeak-ng"``: Debian ``espeak-ng``; five English accents x a dozen voice variants, speed 150-190 wpm,
  pitch 35-65. Formant synthesis: robotic, the hardest for Whisper.
- ``"flite"``: Debian ``flite``; voices ``kal16``, ``awb``, ``rms``, ``slt`` (``kal`` is 8 kHz and
  ``awb_time`` only speaks clock times; both left out), duration stretch 0.9-1.15.
- ``"hibari"``: PyPI ``hibari-tts`` 0.2.1, a neural onnx voice; only the voice inside the package
  ("heart") is used: the others would be downloaded. Speed 0.9-1.15, noise seeded.

The subprocess engines write a temporary wav that :func:`~speechprune.data.audio.load_audio` resamples
to 16 kHz. Each clip is peak-normalized to a level drawn in [0.3, 0.9]. With ``telephone=True`` it then
goes through :func:`telephone_band` (the evaluation prompts are 8 kHz telephone recordings).

Resumable: wavs are written atomically before their manifest line is appended, a rerun skips the utterance
indices already in the manifest (and asking for more utterances extends the set: the sentence order for a
seed is fixed). A rerun with another seed, text sources or telephone flag is refused; other engines may be
used to finish a folder.
"""

from __future__ import annotations

import io
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import soundfile as sf
from tqdm import tqdm

from speechprune.data.audio import SAMPLE_RATE, load_audio, resample
from speechprune.data.text_corpora import DEFAULT_SOURCES, sentences
from speechprune.errors import ConfigError, SpeechpruneError
from speechprune.io import (append_jsonl, atomic_write_bytes, atomic_write_json, locked, read_jsonl_tolerant,
                            repair_jsonl)

log = logging.getLogger(__name__)

ENGINES = ("espeak-ng", "flite", "hibari")
MANIFEST = "manifest.jsonl"
SETTINGS = "synth.json"
WAV_DIR = "wavs"

ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt3")
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
HIBARI_VOICE = "heart"
HIBARI_VERSION = "0.2.1"
_SUBPROCESS_TIMEOUT = 60
_MIN_SECONDS = 0.2
_SILENT_PEAK = 1e-3


# -- engines --------------------------------------------------------------------------------------

def _hibari_model_ok() -> bool:
    try:
        from hibari.voices import voice_path
    except ImportError:
        return False
    try:
        return Path(voice_path(HIBARI_VOICE, download_missing=False)).is_file()
    except (FileNotFoundError, ValueError):
        return False


def engine_missing(engine: str) -> str | None:
    """Why ``engine`` cannot run here (with the install command), or None when it can."""
    if engine == "espeak-ng":
        return None if shutil.which("espeak-ng") else "espeak-ng not found; install it with: sudo apt-get install espeak-ng"
    if engine == "flite":
        return None if shutil.which("flite") else "flite not found; install it with: sudo apt-get install flite"
    if engine == "hibari":
        if _hibari_model_ok():
            return None
        return f"hibari-tts (with its bundled voice) not found; install it with: pip install hibari-tts=={HIBARI_VERSION}"
    raise ConfigError(f"unknown TTS engine {engine!r} (choose from {', '.join(ENGINES)})")


def available_engines() -> list[str]:
    """The engines of :data:`ENGINES` that can run here."""
    return [e for e in ENGINES if engine_missing(e) is None]


def _run(cmd: list[str], stdin: bytes | None = None) -> None:
    try:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=_SUBPROCESS_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise SpeechpruneError(f"{cmd[0]} ran past {_SUBPROCESS_TIMEOUT} s") from None
    if proc.returncode != 0:
        err = " ".join(proc.stderr.decode("utf-8", errors="replace").split())[:300]
        raise SpeechpruneError(f"{cmd[0]} failed with exit status {proc.returncode}: {err or 'no message'}")


def _subprocess_tts(cmd_for: Any, text: str) -> np.ndarray:
    """Run a TTS command that writes the wav path it is given; the wav read back at 16 kHz mono."""
    with tempfile.TemporaryDirectory(prefix="speechprune-tts-") as tmp:
        wav = Path(tmp) / "out.wav"
        cmd, stdin = cmd_for(wav)
        _run(cmd, stdin)
        return load_audio(wav, SAMPLE_RATE)


def _espeak(text: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    voice = ESPEAK_VOICES[rng.integers(len(ESPEAK_VOICES))]
    variant = ESPEAK_VARIANTS[rng.integers(len(ESPEAK_VARIANTS))]
    name = f"{voice}+{variant}" if variant else voice
    speed, pitch = int(rng.integers(150, 191)), int(rng.integers(35, 66))
    audio = _subprocess_tts(
        lambda wav: (["espeak-ng", "-v", name, "-s", str(speed), "-p", str(pitch), "-w", str(wav), "--stdin"],
                     text.encode("utf-8")),
        text,
    )
    return audio, name


def _flite(text: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    voice = FLITE_VOICES[rng.integers(len(FLITE_VOICES))]
    stretch = float(rng.uniform(0.9, 1.15))
    audio = _subprocess_tts(
        lambda wav: (["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.3f}", "-t", text,
                      "-o", str(wav)], None),
        text,
    )
    return audio, voice


_HIBARI: Any = None  # one model per process, loaded on first use


def _hibari(text: str, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    global _HIBARI
    if _HIBARI is None:
        from hibari import Hibari

        _HIBARI = Hibari(voice=HIBARI_VOICE, threads=1)
    speed = float(rng.uniform(0.9, 1.15))
    audio = _HIBARI(text, speed=speed, seed=int(rng.integers(2**31)))
    return resample(np.asarray(audio, np.float32), _HIBARI.sample_rate, SAMPLE_RATE), HIBARI_VOICE


_RENDER = {"espeak-ng": _espeak, "flite": _flite, "hibari": _hibari}


def voice_of(utt_id: str) -> str:
    """The voice (``engine-voice``, e.g. ``espeak-ng-en-029+f2``, ``flite-rms``) of a synthetic utterance id
    (``{index}-{engine}-{voice}``, as written by this module): the speaker, for splits by speaker. Another id is a
    ``ConfigError``."""
    index, _, rest = utt_id.partition("-")
    if index.isdigit():
        for engine in ENGINES:
            if rest.startswith(engine + "-") and len(rest) > len(engine) + 1:
                return rest
    raise ConfigError(f"{utt_id!r} is not a synthetic utterance id ({{index}}-{{engine}}-{{voice}})")


# -- augmentation (pure) --------------------------------------------------------------------------

def _mu_law(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """8-bit mu-law (G.711-like) quantization, encode then decode."""
    c = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    q = np.round(c * 127.0) / 127.0
    return (np.sign(q) * np.expm1(np.abs(q) * np.log1p(mu)) / mu).astype(np.float32)


def telephone_band(samples: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Telephone channel: to 8 kHz, light white noise (SNR 25-40 dB), 300 Hz high-pass, mu-law, back to ``sample_rate``."""
    x = resample(np.asarray(samples, np.float32), sample_rate, 8000).astype(np.float64)
    power = float(np.mean(x**2)) if x.size else 0.0
    snr_db = rng.uniform(25.0, 40.0)
    x = x + rng.standard_normal(x.size) * np.sqrt(power / 10 ** (snr_db / 10))
    spec = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(x.size, 1 / 8000)
    spec *= np.clip((freqs - 200.0) / 100.0, 0.0, 1.0)  # ramp from 200 to 300 Hz
    x = np.fft.irfft(spec, n=x.size)
    x = _mu_law(np.clip(x, -1.0, 1.0).astype(np.float32))
    return np.clip(resample(x, 8000, sample_rate), -1.0, 1.0).astype(np.float32)


# -- one utterance ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    index: int
    text: str
    engine: str
    seed: int
    telephone: bool
    out_dir: str


def _render(job: _Job) -> dict[str, Any] | None:
    """Synthesize one utterance, write its wav atomically; its manifest record, or None for silent output."""
    rng = np.random.default_rng([job.seed, job.index])
    audio, voice = _RENDER[job.engine](job.text, rng)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if audio.size < _MIN_SECONDS * SAMPLE_RATE or peak < _SILENT_PEAK:
        log.warning("%s gave no audible speech for %r; skipped", job.engine, job.text)
        return None
    audio = audio * (rng.uniform(0.3, 0.9) / peak)
    if job.telephone:
        audio = telephone_band(audio, rng)
    utt_id = f"{job.index:06d}-{job.engine}-{voice}"
    rel = f"{WAV_DIR}/{utt_id}.wav"
    buf = io.BytesIO()
    sf.write(buf, audio.astype(np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    atomic_write_bytes(Path(job.out_dir) / rel, buf.getvalue())
    return {"id": utt_id, "audio": rel, "text": job.text, "language": "en", "task": "transcribe",
            "duration": round(audio.size / SAMPLE_RATE, 4)}


# -- the folder ------------------------------------------------------------------------------------

def _done_indices(manifest: Path) -> set[int]:
    """Utterance indices already in the manifest (ids start with the zero-padded index)."""
    done = set()
    for record in read_jsonl_tolerant(manifest):
        head = str(record.get("id", "")).split("-", 1)[0]
        if head.isdigit():
            done.add(int(head))
    return done


def _check_settings(out_dir: Path, settings: dict[str, Any]) -> None:
    path = out_dir / SETTINGS
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError("unreadable synthesis settings; delete the folder to start again", path) from None
        if old != settings:
            diff = ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)
            raise ConfigError(f"folder was synthesized with other settings ({diff}); use a new folder", path)
    else:
        atomic_write_json(path, settings)


def _results(jobs: list[_Job], workers: int) -> Iterator[dict[str, Any] | None]:
    if workers <= 1 or len(jobs) <= 1:
        yield from map(_render, jobs)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(method)) as pool:
        yield from pool.map(_render, jobs, chunksize=1)


def synthesize(
    out_dir: str | Path,
    n_utterances: int,
    seed: int = 0,
    engines: Sequence[str] = ENGINES,
    *,
    sources: Sequence[str] = DEFAULT_SOURCES,
    telephone: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Make (or finish) ``n_utterances`` synthetic clips in ``out_dir``; returns the path of its ``manifest.jsonl``.

    ``engines`` take turns over the utterances; ``sources`` are text sources of
    :func:`~speechprune.data.text_corpora.sentences`; ``telephone`` passes each clip through
    :func:`telephone_band`; ``workers`` > 1 synthesizes in that many processes. Raises :class:`ConfigError`
    for an engine or text source that is not installed (naming what to install), and for a folder made with
    another seed, sources or telephone flag.
    """
    if isinstance(engines, str):
        engines = (engines,)
    engines = tuple(engines)
    if not engines:
        raise ConfigError("no TTS engines given")
    if n_utterances < 0:
        raise ConfigError(f"n_utterances must be >= 0, got {n_utterances}")
    problems = [p for p in map(engine_missing, dict.fromkeys(engines)) if p]
    if problems:
        raise ConfigError("; ".join(problems))
    texts = sentences(n_utterances, seed=seed, sources=sources)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with locked(out_dir):  # another process making the same set waits, then finds its clips done
        _check_settings(out_dir, {"seed": seed, "sources": list(sources), "telephone": bool(telephone)})
        manifest = out_dir / MANIFEST
        repair_jsonl(manifest)
        done = _done_indices(manifest)
        jobs = [_Job(i, text, engines[i % len(engines)], seed, bool(telephone), os.fspath(out_dir))
                for i, text in enumerate(texts) if i not in done]
        skipped = 0
        with tqdm(total=len(jobs), desc="synthesize", unit="utt", disable=not progress or not jobs) as bar:
            for record in _results(jobs, workers):
                if record is None:
                    skipped += 1
                else:
                    append_jsonl(manifest, record)
                bar.update()
        if skipped:
            log.warning("%d of %d utterances gave no audible speech and were left out", skipped, len(jobs))
        if not manifest.exists():
            manifest.touch()
    return manifest
