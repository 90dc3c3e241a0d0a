"""KTuberling object names (Debian ``ktuberling-data``): single English words and short names read for children.

``/usr/share/ktuberling/sounds/en.soundtheme`` lists ``<sound name="egypt_camel" file="en/egypt_camel.ogg"/>``;
the name without its playground prefix (``egypt_``, ``moon_``, ``pizzeria_``, ``tv_``) is what is said, after
:data:`WORD_FIXES` for names that run words together or are misspelled. The ogg files are read where they lie.
Id: the sound name (``egypt_camel``).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

from speechprune.data.audio import audio_duration
from speechprune.data.manifest import Utterance
from speechprune.data.normalize import normalize_text, subtitle_reference
from speechprune.data.sources.common import require
from speechprune.errors import ConfigError

NAME = "ktuberling"
SOUNDS_DIR = Path("/usr/share/ktuberling/sounds")
THEME = "en.soundtheme"
PACKAGE = "ktuberling-data"
PREFIXES = ("egypt_", "moon_", "pizzeria_", "tv_")

# sound-name words -> what is said (lower-case whole words)
WORD_FIXES: dict[str, str] = {"palmtree": "palm tree", "fallingstar": "falling star", "brocolli": "broccoli",
                              "sphynx": "sphinx"}
# utterance id -> why it is left out
DROPPED: dict[str, str] = {}


def parse_sound_theme(content: str) -> dict[str, str]:
    """``{sound name: file path relative to the sounds folder}`` from a ``.soundtheme`` file."""
    try:
        root = ET.fromstring(content)
    except ET.ParseError as exc:
        raise ValueError(f"not a sound theme ({exc})") from None
    return {s.attrib["name"]: s.attrib["file"] for s in root.iter("sound") if "name" in s.attrib and "file" in s.attrib}


def spoken_name(sound_name: str) -> str:
    """What a sound name says: the playground prefix dropped, ``_`` as spaces, :data:`WORD_FIXES` applied."""
    for prefix in PREFIXES:
        if sound_name.startswith(prefix):
            sound_name = sound_name[len(prefix):]
            break
    return subtitle_reference(sound_name.replace("_", " "), WORD_FIXES)


def read_ktuberling(sounds_dir: Path = SOUNDS_DIR) -> list[Utterance]:
    """Every English object name with a clip, sorted by id."""
    require(sounds_dir / THEME, PACKAGE, "KTuberling English sound theme", want_dir=False)
    return list(_read(sounds_dir.resolve()))


@lru_cache(maxsize=4)
def _read(sounds_dir: Path) -> tuple[Utterance, ...]:
    theme = sounds_dir / THEME
    try:
        sounds = parse_sound_theme(theme.read_text("utf-8"))
    except ValueError as exc:
        raise ConfigError(str(exc), theme) from None
    out = []
    for name, rel in sorted(sounds.items()):
        clip = sounds_dir / rel
        text = spoken_name(name)
        if name in DROPPED or not normalize_text(text):
            continue
        if not clip.is_file():
            raise ConfigError(f"{THEME} names {rel}, which is missing", sounds_dir)
        out.append(Utterance(id=name, audio=clip, text=text, language="en", task="transcribe",
                             duration=audio_duration(clip)))
    return tuple(out)
