"""Hedgewars voice packs (Debian ``hedgewars-data``): short exclamations by a different actor per pack.

Audio: ``/usr/share/games/hedgewars/Data/Sounds/voices/<pack>/<Line>.ogg`` (Vorbis, 44.1/48 kHz, some stereo).
Each pack is one voice speaking the same ~60 game lines ("Incoming", "Take cover", "You'll regret that") in
a character (British, HillBilly, Mobster, Pirate, Singer, Surfer; ``Russian`` is English with a Russian accent).
Only the packs in :data:`ENGLISH_PACKS` are read: ``Default_es/_pl/_ru/_uk`` and ``Russian_pl`` speak other
languages, and ``Robot`` is a vocoded machine voice (maybe synthetic, and far from any test domain). Grunts and
pain noises (``Ow1``, ``Ooff2``, ``Laugh``...) are mostly under 0.5 s (dropped while decoding) or in
:data:`NOT_SPEECH`, found by whisper-tiny.en. Byte-identical copies between packs are read once.
"""

from __future__ import annotations

from pathlib import Path

from speechprune.data.manifest import Utterance
from speechprune.data.sources.common import require
from speechprune.data.unlabelled.cache import Clip, build_source, decode_soundfile, unique_files

NAME = "hedgewars"
PACKAGE = "hedgewars-data"
VOICES = Path("/usr/share/games/hedgewars/Data/Sounds/voices")
RULES = 1
ENGLISH_PACKS = ("British", "Classic", "Default", "HillBilly", "Mobster", "Pirate", "Russian", "Singer", "Surfer")

# clips in which whisper-tiny.en heard no words (criterion: speechprune.data.unlabelled's docstring)
NOT_SPEECH: frozenset[str] = frozenset({
    "British/Fire", "British/Hmm", "British/Jump2", "British/Laugh", "Classic/Hello", "Classic/Hmm",
    "Classic/Laugh", "Classic/Uh-oh", "Default/Fire", "Default/Firepunch3", "Default/Firepunch4",
    "Default/Firepunch5", "Default/Jump1", "Default/PoisonCough", "HillBilly/Firepunch3", "HillBilly/Firepunch4",
    "HillBilly/Laugh", "HillBilly/PoisonCough", "Mobster/Laugh", "Mobster/Ouch", "Mobster/Uh-oh", "Pirate/Drat",
    "Pirate/Hmm", "Pirate/Laugh", "Russian/Laugh", "Singer/Coward", "Singer/Drat", "Singer/Hmm", "Singer/Jump2",
    "Singer/Laugh", "Singer/Ouch", "Singer/Uh-oh", "Surfer/Kamikaze", "Surfer/Laugh", "Surfer/Uh-oh",
})


def _clip(path: Path, local_id: str) -> Clip:
    return Clip(local_id, lambda: decode_soundfile(path.read_bytes()))


def pack_files(voices: Path) -> list[tuple[str, Path]]:
    """``(local id "<pack>/<line>", file)`` for every ``.ogg`` of the English packs present, in pack order; a file
    that is a byte-for-byte copy of an earlier one (``Classic`` reuses some of ``Default``) is read once."""
    out = []
    for pack in ENGLISH_PACKS:
        folder = voices / pack
        if folder.is_dir():
            out += sorted((f"{pack}/{p.stem}", p) for p in folder.iterdir()
                          if p.suffix.lower() == ".ogg" and p.is_file())
    return unique_files(out)


def read_hedgewars(voices: Path = VOICES, progress: bool = False) -> list[Utterance]:
    """The English voice-pack lines, decoded once into the cache; ids ``hedgewars/<pack>/<line>``."""
    require(voices / "Default", PACKAGE)
    files = pack_files(voices)
    utts = build_source(NAME, RULES, [p for _, p in files], lambda: [_clip(p, i) for i, p in files], progress)
    return [u for u in utts if u.id.split("/", 1)[1] not in NOT_SPEECH]
