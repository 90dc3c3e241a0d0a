"""OpenArena announcer and team-order voice (Debian ``openarena-081-misc`` + ``openarena-data``).

Both are zip archives (``.pk3``) that soundfile cannot open in place, so the members are decoded from memory:

- ``/usr/share/games/openarena/baseoa/pak6-misc.pk3`` (``openarena-081-misc``): ``sound/feedback/*.wav``, the
  match announcer ("Prepare to fight", "You have taken the lead", "Impressive").
- ``/usr/share/games/openarena/missionpack/mp-pak0.pk3`` (``openarena-data``): ``sound/voices/rott/*.ogg``, bot
  team orders ("Base under attack", "I'm going in") voiced by RottKing. ``sound/voices/festivoxmale`` in the same
  archive is Festival TTS and is not read.

Ids: ``openarena/feedback/<stem>`` and ``openarena/rott/<stem>``; :data:`NOT_SPEECH` are hit beeps and the like.
"""

from __future__ import annotations

import zipfile
from pathlib import Path, PurePosixPath

from speechprune.data.manifest import Utterance
from speechprune.data.sources.common import require
from speechprune.data.unlabelled.cache import Clip, build_source, decode_soundfile
from speechprune.errors import ConfigError

NAME = "openarena"
MISC_PACKAGE = "openarena-081-misc"
DATA_PACKAGE = "openarena-data"
MISC_PK3 = Path("/usr/share/games/openarena/baseoa/pak6-misc.pk3")
DATA_PK3 = Path("/usr/share/games/openarena/missionpack/mp-pak0.pk3")
RULES = 1
# (archive, member folder, id prefix)
VOICE_FOLDERS = (("misc", "sound/feedback/", "feedback"), ("data", "sound/voices/rott/", "rott"))
AUDIO_SUFFIXES = (".wav", ".ogg")

# clips in which whisper-tiny.en heard no words (criterion: speechprune.data.unlabelled's docstring)
NOT_SPEECH: frozenset[str] = frozenset({"feedback/hit", "feedback/hitlo"})


def voice_members(names: list[str], folder: str) -> list[str]:
    """Audio members directly inside ``folder`` of an archive listing, sorted."""
    return sorted(n for n in names if n.startswith(folder) and "/" not in n[len(folder):]
                  and n.lower().endswith(AUDIO_SUFFIXES))


def _clip(archive: Path, member: str, local_id: str) -> Clip:
    def decode():
        with zipfile.ZipFile(archive) as zf:
            return decode_soundfile(zf.read(member))

    return Clip(local_id, decode)


def _clips(archives: dict[str, Path]) -> list[Clip]:
    out = []
    for key, folder, prefix in VOICE_FOLDERS:
        try:
            with zipfile.ZipFile(archives[key]) as zf:
                members = voice_members(zf.namelist(), folder)
        except (zipfile.BadZipFile, OSError) as exc:
            raise ConfigError(f"cannot open the archive ({exc})", archives[key]) from None
        out += [_clip(archives[key], m, f"{prefix}/{PurePosixPath(m).stem}") for m in members]
    return out


def read_openarena(misc_pk3: Path = MISC_PK3, data_pk3: Path = DATA_PK3, progress: bool = False) -> list[Utterance]:
    """The announcer and team-order lines, decoded once into the cache."""
    archives = {"misc": require(misc_pk3, MISC_PACKAGE), "data": require(data_pk3, DATA_PACKAGE)}
    utts = build_source(NAME, RULES, list(archives.values()), lambda: _clips(archives), progress)
    return [u for u in utts if u.id.split("/", 1)[1] not in NOT_SPEECH]
