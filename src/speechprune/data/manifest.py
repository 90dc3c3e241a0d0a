"""JSONL manifests: one utterance per line, e.g.

    {"id": "u1", "audio": "clips/u1.wav", "text": "press one", "language": "en"}

Keys: ``audio`` and ``text`` (required; text may be ""), and optional ``id`` (default: ``audio`` as
written), ``language``, ``task`` ("transcribe" or "translate"), ``translation`` and ``duration``
(seconds). Unknown keys are errors, and so is a translation pair with an empty side (``translation`` given but
blank). Relative audio paths resolve against the manifest's folder.
Audio files are not opened here: evaluation reports unreadable audio per utterance.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from speechprune.errors import ManifestError
from speechprune.io import atomic_write_text

TASKS = ("transcribe", "translate")
REQUIRED_KEYS = ("audio", "text")
OPTIONAL_KEYS = ("id", "language", "task", "translation", "duration")
KNOWN_KEYS = REQUIRED_KEYS + OPTIONAL_KEYS


@dataclass(frozen=True)
class Utterance:
    """One clip and its reference."""

    id: str
    audio: Path  # absolute
    text: str  # reference transcript (for translation, the source-language transcript may be here)
    language: str | None = None
    task: str | None = None  # "transcribe" | "translate"
    translation: str | None = None  # reference translation, scored with BLEU
    duration: float | None = None  # seconds


class _LineError(Exception):
    """A problem on one manifest line; read_manifest adds the line number and the file."""


def _decode_line(raw: bytes, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _LineError("not UTF-8") from None
    if lineno == 1:
        text = text.removeprefix("\ufeff")
    return text.strip()


def _parse_object(line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise _LineError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise _LineError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _check_keys(obj: dict[str, Any]) -> None:
    unknown = [k for k in obj if k not in KNOWN_KEYS]
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise _LineError(f"unknown key{'s' if len(unknown) > 1 else ''} {names} (allowed: {', '.join(KNOWN_KEYS)})")
    for key in REQUIRED_KEYS:
        if key not in obj:
            raise _LineError(f"missing key {key!r}")


def _string(obj: dict[str, Any], key: str, *, nonempty: bool = False) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _LineError(f"{key!r} must be a string, got {_json_type(value)}")
    if nonempty and not value.strip():
        raise _LineError(f"{key!r} must not be empty")
    return value


def _optional_string(obj: dict[str, Any], key: str, *, nonempty: bool = False) -> str | None:
    return None if obj.get(key) is None else _string(obj, key, nonempty=nonempty)


def _duration(obj: dict[str, Any]) -> float | None:
    value = obj.get("duration")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _LineError(f"'duration' must be a number, got {_json_type(value)}")
    if not math.isfinite(value) or value < 0:
        raise _LineError(f"'duration' must be a finite number >= 0, got {value}")
    return float(value)


def _task(obj: dict[str, Any]) -> str | None:
    task = _optional_string(obj, "task")
    if task is not None and task not in TASKS:
        raise _LineError(f"'task' must be one of {', '.join(TASKS)}, got {task!r}")
    return task


def _json_type(value: Any) -> str:
    names = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _resolve_audio(audio: str, base: Path) -> Path:
    """Absolute, normalised path (symlinks kept); relative paths are taken from ``base``."""
    return Path(os.path.normpath(base / Path(audio).expanduser()))


def _utterance(obj: dict[str, Any], base: Path) -> Utterance:
    _check_keys(obj)
    audio = _string(obj, "audio", nonempty=True)
    text = _string(obj, "text")
    utt_id = _optional_string(obj, "id", nonempty=True)
    translation = _optional_string(obj, "translation")
    if translation is not None and not translation.strip():
        raise _LineError("'translation' is empty: a translation pair needs both sides "
                         "(leave the key out if there is none)")
    return Utterance(
        id=audio if utt_id is None else utt_id,
        audio=_resolve_audio(audio, base),
        text=text,
        language=_optional_string(obj, "language", nonempty=True),
        task=_task(obj),
        translation=translation,
        duration=_duration(obj),
    )


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ManifestError("file not found", path)
    if not path.is_file():
        raise ManifestError("not a file", path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read ({exc.strerror})", path) from None


def read_manifest(path: str | Path) -> list[Utterance]:
    """Parse a JSONL manifest; raises :class:`ManifestError` naming the file and line of the first problem."""
    path = Path(path)
    base = Path(os.path.abspath(path)).parent
    utterances: list[Utterance] = []
    first_line: dict[str, int] = {}
    for lineno, raw in enumerate(_read_bytes(path).split(b"\n"), start=1):
        try:
            line = _decode_line(raw, lineno)
            if not line:
                continue
            utt = _utterance(_parse_object(line), base)
            if utt.id in first_line:
                raise _LineError(f"duplicate id {utt.id!r} (first on line {first_line[utt.id]})")
        except _LineError as exc:
            raise ManifestError(f"line {lineno}: {exc}", path) from None
        first_line[utt.id] = lineno
        utterances.append(utt)
    if not utterances:
        raise ManifestError("no utterances", path)
    return utterances


def _audio_for(audio: Path, base: Path) -> str:
    """``audio`` relative to ``base`` when it lies inside it, else absolute (POSIX separators)."""
    audio = Path(os.path.abspath(audio))
    try:
        return audio.relative_to(base).as_posix()
    except ValueError:
        return audio.as_posix()


def utterance_record(utt: Utterance, base: Path) -> dict[str, Any]:
    """The JSON object written for ``utt`` in a manifest stored in folder ``base``."""
    record: dict[str, Any] = {"id": utt.id, "audio": _audio_for(utt.audio, base), "text": utt.text}
    for key in ("language", "task", "translation", "duration"):
        value = getattr(utt, key)
        if value is not None:
            record[key] = value
    return record


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> None:
    """Write ``utterances`` as JSONL, atomically; audio inside the manifest's folder is stored relative to it."""
    path = Path(path)
    base = Path(os.path.abspath(path)).parent
    lines = [json.dumps(utterance_record(u, base), ensure_ascii=False) + "\n" for u in utterances]
    atomic_write_text(path, "".join(lines))
