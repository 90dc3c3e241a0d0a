"""The bundled evaluation set: Asterisk's English prompts (Debian ``asterisk-core-sounds-en-wav`` + ``-en``).

One speaker, 8 kHz telephone recordings, CC-BY-SA-3.0. Audio: ``/usr/share/asterisk/sounds/en/**.wav``;
texts: ``/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz`` (``name: text`` lines, ``;``
comments). Override the locations with ``$SPEECHPRUNE_ASTERISK_SOUNDS`` and ``$SPEECHPRUNE_ASTERISK_TEXT``.

An utterance's id is its path under the sounds folder without ``.wav`` (``digits/1``, ``agent-pass``).
Its reference is :func:`~speechprune.data.normalize.asterisk_reference` of the text; files without a
text, and texts that are only annotations (``[ascending tones]``, ``(5 seconds of silence)``,
``<beep ascending>``), are left out.

Split, fixed by the id alone: ``test`` when ``int(sha256(id.encode()).hexdigest()[:8], 16) / 2**32 < 0.5``,
else ``dev`` (about half each, disjoint); ``all`` is both. Subset ``multiword``: utterances whose
normalized reference has at least two words (single digits, letters and words are the hard, noisy part).
"""

from __future__ import annotations

import gzip
import hashlib
import os
from functools import lru_cache
from pathlib import Path

from speechprune.data.audio import audio_duration
from speechprune.data.manifest import Utterance
from speechprune.data.normalize import asterisk_reference, normalize_text
from speechprune.errors import ConfigError

SOUNDS_ENV = "SPEECHPRUNE_ASTERISK_SOUNDS"
TEXT_ENV = "SPEECHPRUNE_ASTERISK_TEXT"
DEFAULT_SOUNDS = Path("/usr/share/asterisk/sounds/en")
DEFAULT_TEXT = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
SPLITS = ("dev", "test", "all")
SUBSETS = ("all", "multiword")
TEST_FRACTION = 0.5


def _located(env: str, default: Path, package: str, want_dir: bool) -> Path:
    """The path from ``$env`` or ``default``; a one-line ConfigError with the install command when absent."""
    value = os.environ.get(env)
    path = Path(value).expanduser() if value else default
    if want_dir and path.is_dir() or not want_dir and path.is_file():
        return path
    source = f"set by ${env}" if value else f"set ${env} to use another location"
    kind = "folder" if want_dir else "file"
    raise ConfigError(
        f"Asterisk prompt {kind} not found ({source}); install it with: sudo apt-get install {package}", path
    )


def sounds_dir() -> Path:
    """Folder of the English prompt WAVs (``asterisk-core-sounds-en-wav``)."""
    return _located(SOUNDS_ENV, DEFAULT_SOUNDS, "asterisk-core-sounds-en-wav", want_dir=True)


def text_file() -> Path:
    """The prompt texts file (``asterisk-core-sounds-en``)."""
    return _located(TEXT_ENV, DEFAULT_TEXT, "asterisk-core-sounds-en", want_dir=False)


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def parse_prompt_texts(content: str, source: Path | str | None = None) -> dict[str, str]:
    """``{name: raw text}`` from ``core-sounds-en.txt`` content; blank and ``;`` lines are skipped."""
    texts: dict[str, str] = {}
    for lineno, line in enumerate(content.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        name, sep, text = line.partition(":")
        if not sep or not name.strip():
            raise ConfigError(f"line {lineno}: expected 'name: text'", source)
        texts[name.strip()] = text.strip()
    return texts


def split_of(utt_id: str) -> str:
    """"test" or "dev", from the SHA-256 of the id (see the module docstring)."""
    h = int(hashlib.sha256(utt_id.encode("utf-8")).hexdigest()[:8], 16)
    return "test" if h / 2**32 < TEST_FRACTION else "dev"


def is_multiword(reference: str) -> bool:
    """True when the normalized reference has two or more words."""
    return len(normalize_text(reference).split()) >= 2


def _wav_ids(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).with_suffix("").as_posix(): p for p in folder.rglob("*.wav") if p.is_file()}


@lru_cache(maxsize=4)
def _all_utterances(folder: Path, texts_path: Path) -> tuple[Utterance, ...]:
    texts = parse_prompt_texts(_read_text_file(texts_path), texts_path)
    utterances = []
    for utt_id, wav in sorted(_wav_ids(folder).items()):
        reference = asterisk_reference(texts.get(utt_id, ""))
        if not normalize_text(reference):
            continue
        utterances.append(
            Utterance(
                id=utt_id,
                audio=Path(os.path.abspath(wav)),
                text=reference,
                language="en",
                task="transcribe",
                duration=audio_duration(wav),
            )
        )
    return tuple(utterances)


def asterisk_utterances(split: str = "test", subset: str = "all") -> list[Utterance]:
    """The prompts of ``split`` ("dev", "test", "all") and ``subset`` ("all", "multiword"), sorted by id."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for the asterisk set (choose from {', '.join(SPLITS)})")
    if subset not in SUBSETS:
        raise ConfigError(f"unknown subset {subset!r} for the asterisk set (choose from {', '.join(SUBSETS)})")
    folder, texts_path = sounds_dir(), text_file()
    return [
        u
        for u in _all_utterances(folder, texts_path)
        if (split == "all" or split_of(u.id) == split) and (subset == "all" or is_multiword(u.text))
    ]
