"""Tux Paint stamp names (Debian ``tuxpaint-stamps-default``): isolated animal names, read by one accented voice.

Each stamp ``<dir>/<name>.png`` may have an English spoken description ``<name>_desc.ogg`` (other languages are
``<name>_desc_<lang>.ogg``). The clip says the stamp's file name, not the written description in ``<name>.txt``
("chimp" where the text has "A chimpanzee.", "hen" for "A brown hen."), so the reference is the name, with
:data:`WORD_FIXES` where the file name runs words together or is spelled another way. The ogg files are read where
they lie. Id: the stamp's path under the stamps folder (``animals/birds/crow``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from speechprune.data.audio import audio_duration
from speechprune.data.manifest import Utterance
from speechprune.data.normalize import subtitle_reference
from speechprune.data.sources.common import require

NAME = "tuxpaint"
STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
PACKAGE = "tuxpaint-stamps-default"
SUFFIX = "_desc.ogg"

# file-name words -> what is said (lower-case whole words)
WORD_FIXES: dict[str, str] = {"mountaingoat": "mountain goat", "wildboar": "wild boar", "tucan": "toucan"}
# utterance id -> why it is left out
DROPPED: dict[str, str] = {
    "animals/birds/nandou": "says the French name 'nandou' (a rhea), which has no English spelling",
}


def spoken_name(stem: str) -> str:
    """What a stamp's clip says: its file name with ``_``/``-`` as spaces and :data:`WORD_FIXES` applied."""
    return subtitle_reference(stem.replace("_", " ").replace("-", " "), WORD_FIXES)


def read_tuxpaint(stamps_dir: Path = STAMPS_DIR) -> list[Utterance]:
    """Every English stamp-name clip, sorted by id."""
    require(stamps_dir, PACKAGE, "Tux Paint stamps folder", want_dir=True)
    return list(_read(stamps_dir.resolve()))


@lru_cache(maxsize=4)
def _read(stamps_dir: Path) -> tuple[Utterance, ...]:
    out = []
    for clip in sorted(stamps_dir.rglob(f"*{SUFFIX}")):
        stem = clip.name[: -len(SUFFIX)]
        utt_id = (clip.parent.relative_to(stamps_dir) / stem).as_posix()
        if utt_id in DROPPED:
            continue
        out.append(Utterance(id=utt_id, audio=clip, text=spoken_name(stem), language="en", task="transcribe",
                             duration=audio_duration(clip)))
    return tuple(out)
