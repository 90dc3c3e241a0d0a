"""KLettres words (Debian ``klettres-data``): two English voices, American (``en``) and British (``en_GB``), each
saying short words for children learning to read.

Clips: ``/usr/share/klettres/<voice>/syllab/<word>.ogg``; the file stem is the text. Left out: the ``syllab``
clips that are sounds rather than words (:data:`NOT_WORDS`: "ch", "th", "aw"), and the ``alpha`` clips (the
alphabet): an isolated letter name cannot be told from its homophones (C/see, U/you, Y/why, Z/"zed"/said), so no
transcript can be scored against it; the asterisk set already has spoken letters. The ogg files are read where
they lie. Id: ``<voice>/<word>`` (``en_GB/ball``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from speechprune.data.audio import audio_duration
from speechprune.data.manifest import Utterance
from speechprune.data.sources.common import require

NAME = "klettres"
ROOT = Path("/usr/share/klettres")
PACKAGE = "klettres-data"
VOICES = ("en", "en_GB")
WORDS = "syllab"
NOT_WORDS = frozenset({"ch", "th", "aw"})

# utterance id -> why it is left out
DROPPED: dict[str, str] = {}


def text_for(stem: str) -> str | None:
    """The reference for a word clip's stem (lower case); None for :data:`NOT_WORDS`."""
    return None if stem.lower() in NOT_WORDS else stem.lower()


def read_klettres(root: Path = ROOT) -> list[Utterance]:
    """Every English word clip of both voices, sorted by id."""
    for voice in VOICES:
        require(root / voice / WORDS, PACKAGE, f"KLettres {voice} words folder", want_dir=True)
    return list(_read(root.resolve()))


@lru_cache(maxsize=4)
def _read(root: Path) -> tuple[Utterance, ...]:
    out = []
    for voice in VOICES:
        for clip in sorted((root / voice / WORDS).glob("*.ogg")):
            utt_id = f"{voice}/{clip.stem}"
            text = text_for(clip.stem)
            if text is None or utt_id in DROPPED:
                continue
            out.append(Utterance(id=utt_id, audio=clip, text=text, language="en", task="transcribe",
                                 duration=audio_duration(clip)))
    return tuple(out)
