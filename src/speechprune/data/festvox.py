"""Read Russian sentences from Debian ``festvox-ru`` (the ``msu_ru_nsh_clunits`` Festival voice's recordings; BSD-like,
Nickolay V. Shmyrev 2005): 620 sentences of fiction read by one speaker, 16 kHz, ~99.5 min. Festival itself is not
needed: the recordings are ``wav/<id>.wav`` and their texts ``etc/txt.done.data`` under ``<root>`` (by default
``/usr/share/festival/voices/russian/msu_ru_nsh_clunits``, or ``$SPEECHPRUNE_FESTVOX_RU_DIR``).

``txt.done.data`` holds one ``( ru_0001 "text" )`` per line. The text marks stress with ``+`` before the stressed
vowel (``вол+ос``); the reference is the text without those marks, through
:func:`~speechprune.data.normalize.plain_reference`. An utterance's id is ``ru/festvox/<id>``, its language ``ru``,
its task ``transcribe`` (there is no English text). The split is :func:`speechprune.data.asterisk.split_of` of the
sentence id, the rule every bundled set uses.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from speechprune.data.asterisk import SPLITS, split_of
from speechprune.data.audio import audio_duration
from speechprune.data.manifest import Utterance
from speechprune.data.normalize import plain_reference
from speechprune.errors import ConfigError

ROOT_ENV = "SPEECHPRUNE_FESTVOX_RU_DIR"
DEFAULT_ROOT = Path("/usr/share/festival/voices/russian/msu_ru_nsh_clunits")
TEXTS = Path("etc") / "txt.done.data"
_LINE = re.compile(r'\(\s*(?P<id>[A-Za-z0-9_]+)\s+"(?P<text>(?:[^"\\]|\\.)*)"\s*\)')


def root_dir() -> Path:
    root = Path(os.environ.get(ROOT_ENV, DEFAULT_ROOT))
    if not (root / TEXTS).is_file():
        raise ConfigError(f"{root / TEXTS} not found: install the Debian package festvox-ru (install.sh does) or "
                          f"point ${ROOT_ENV} at a copy of the voice")
    return root


def read_texts(path: Path) -> dict[str, str]:
    """Sentence id -> text without stress marks, from a ``txt.done.data`` file; a line that is neither empty nor an
    entry is a one-line ``ConfigError`` naming the file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8") from None
    texts = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        m = _LINE.fullmatch(line.strip())
        if m is None:
            raise ConfigError(f"{path}, line {n}: not a ( id \"text\" ) entry")
        texts[m["id"]] = re.sub(r"\\(.)", r"\1", m["text"]).replace("+", "")
    return texts


@lru_cache(maxsize=4)
def _all_utterances(root: Path) -> tuple[Utterance, ...]:
    out = []
    for sid, text in sorted(read_texts(root / TEXTS).items()):
        wav = root / "wav" / f"{sid}.wav"
        reference = plain_reference(text)
        if not reference or not wav.is_file() or wav.stat().st_size == 0:
            continue
        out.append(Utterance(id=f"ru/festvox/{sid}", audio=wav, text=reference, language="ru", task="transcribe",
                             duration=audio_duration(wav)))
    return tuple(out)


def festvox_utterances(split: str = "test") -> list[Utterance]:
    """The sentences of ``split`` ("dev", "test", "all"), sorted by id."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for the festvox-ru set (choose from {', '.join(SPLITS)})")
    return [u for u in _all_utterances(root_dir())
            if split == "all" or split_of(u.id.rsplit("/", 1)[1]) == split]
