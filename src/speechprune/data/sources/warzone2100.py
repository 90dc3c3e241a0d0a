"""Warzone 2100 tutorial narration (Debian ``warzone2100-data``): one narrator reading instructions.

Both audio and text are inside the zip archive ``/usr/share/games/warzone2100/base.wz``: the clips are
``audio/tutorial/tutN.ogg`` (Vorbis, 11,025 Hz) and ``script/tutorial.js`` pairs each with its console line::

    {"audio": "tut1.ogg", "clear": false, "message": _("In this training session you'll learn ..."), ...},

Clips whose message is ``undefined`` have no text and are left out, and so are the other tutorial clips,
which no script line labels. The recordings are older than the script's current wording: about half the lines
no longer say what is recorded (a clip holds half the line, "flashing" is not said, another sentence). Those are
in :data:`DROPPED`, found by listening through two models (Whisper tiny.en and base agreeing with each other on
words the line does not have); mishearings where the two models differ are kept. The clips are converted once
into the cache (soundfile cannot open a zip member). Id: the clip's stem (``tut1``).
"""

from __future__ import annotations

import json
import re
import zipfile
from functools import lru_cache
from pathlib import Path

import soundfile as sf

from speechprune.data.audio import decode_bytes
from speechprune.data.manifest import Utterance
from speechprune.data.normalize import normalize_text, subtitle_reference
from speechprune.data.sources.common import converted_wav, require, source_cache
from speechprune.errors import ConfigError

NAME = "warzone2100"
ARCHIVE = Path("/usr/share/games/warzone2100/base.wz")
PACKAGE = "warzone2100-data"
SCRIPT = "script/tutorial.js"
AUDIO_DIR = "audio/tutorial/"

_ENTRY = re.compile(r'"audio"\s*:\s*"([^"]+)"[^\n]*?"message"\s*:\s*(?:_\(\s*("(?:[^"\\]|\\.)*")\s*\)|undefined)')

_OTHER_SENTENCE = "the recording is another sentence than the script's line"
_NO_FLASHING = "the recording does not say 'flashing'"
# utterance id -> why it is left out
DROPPED: dict[str, str] = {
    "tut4": "the recording says 'then left click ...' and stops after 'radar pulse'",
    "tut5": "the recording holds only the first sentence",
    "tut8": "the recording stops before 'on the left'",
    "tut9": "the recording says 'then left click', not 'and left click'",
    "tut12": "the recording says 'the truck will now help build', not 'the other truck will now help to build'",
    "tut16": "the recording stops before 'and left click to recover it'",
    "tut19": _NO_FLASHING,
    "tut22": _NO_FLASHING,
    "tut23": "the recording does not say 'machinegun'",
    "tut28": "the recording goes on 'using the Viper body' and does not say 'now'",
    "tut29": _NO_FLASHING,
    "tut37": "the recording says 'the flashing CLOSE icon'",
    "tut38": "the recording says 'your Viper', not 'your new vehicle'",
    "tut39": _NO_FLASHING,
    "tut40": "the recording says only 'then left click the factory'",
    "tut41": _OTHER_SENTENCE,
    "tut42": "the recording says 'the factory's delivery point'",
    "tut43": _OTHER_SENTENCE,
    "tut45": "the recording says 'then left click where you want to position it'",
    "tut47": _OTHER_SENTENCE,
    "tut50": _OTHER_SENTENCE,
    "tut51": _OTHER_SENTENCE,
}


def parse_tutorial_messages(script: str) -> dict[str, str]:
    """``{clip file name: message}`` from ``tutorial.js`` source; entries whose message is ``undefined`` are left
    out. Messages are JSON-style string literals inside ``_(...)``."""
    out: dict[str, str] = {}
    for audio, literal in _ENTRY.findall(script):
        if literal:
            out[audio] = json.loads(literal.replace("\\'", "'"))  # JS allows \' inside "..."
    return out


def read_warzone2100(archive: Path = ARCHIVE) -> list[Utterance]:
    """The labelled tutorial clips, sorted by clip number; audio converted once into the cache. ConfigError when
    the package is missing or the archive lacks the script."""
    require(archive, PACKAGE, "Warzone 2100 base data (base.wz)", want_dir=False)
    return list(_read(archive.resolve(), source_cache(NAME)))


@lru_cache(maxsize=4)
def _read(archive: Path, cache: Path) -> tuple[Utterance, ...]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(f"cannot open the archive ({exc})", archive) from None
    with zf:
        try:
            messages = parse_tutorial_messages(zf.read(SCRIPT).decode("utf-8"))
        except KeyError:
            raise ConfigError(f"no {SCRIPT} in the archive", archive) from None
        out = []
        for clip, message in messages.items():
            utt_id = clip.rsplit(".", 1)[0]
            text = subtitle_reference(message)
            if utt_id in DROPPED or not normalize_text(text):
                continue
            try:
                info = zf.getinfo(AUDIO_DIR + clip)
            except KeyError:
                raise ConfigError(f"{SCRIPT} names {clip}, which is not in {AUDIO_DIR}", archive) from None
            try:
                wav, duration = converted_wav(cache, utt_id, f"{info.CRC:08x}",
                                              lambda info=info: decode_bytes(zf.read(info)))
            except (sf.LibsndfileError, RuntimeError) as exc:
                raise ConfigError(f"cannot decode {info.filename} ({exc})", archive) from None
            out.append(Utterance(id=utt_id, audio=wav, text=text, language="en", task="transcribe", duration=duration))
    return tuple(sorted(out, key=lambda u: int(re.sub(r"\D", "", u.id) or 0)))
