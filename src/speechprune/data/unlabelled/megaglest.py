"""MegaGlest unit voices (Debian ``megaglest-data``): short acknowledgements of the strategy game's units.

Audio: ``/usr/share/games/megaglest/techs/megapack/factions/<faction>/units/<unit>/sounds/*.wav``. A unit
answers when selected (``<unit>_select3.wav``: "What do you want?") or given an order (``<unit>_ack2.wav``:
"As you wish"); only those files are read. The others are effects and cries: ``_attack`` files are grunts and
war cries (whisper-tiny.en heard words in few of them), ``_die``, ``_hit``, ``knife1``... are effects.

Left out as well: the animal and monster units in :data:`CREATURES` (clucks, roars, screeches); the
``*_berserk`` units, whose lines are the plain unit's recordings played backwards (same files reversed,
correlation 1.0); byte-identical copies of a file under another unit (read once, for the first unit in sorted
order); and the clips in :data:`NOT_SPEECH` (groans and grunts, found by whisper-tiny.en). Units that share file
names (``stickfighter_ack1.wav`` under four units) hold different recordings and are all read.
Ids: ``megaglest/<faction>/<unit>/<file stem>``.
"""

from __future__ import annotations

import re
from pathlib import Path

from speechprune.data.manifest import Utterance
from speechprune.data.sources.common import require
from speechprune.data.unlabelled.cache import Clip, build_source, decode_soundfile, unique_files

NAME = "megaglest"
PACKAGE = "megaglest-data"
FACTIONS = Path("/usr/share/games/megaglest/techs/megapack/factions")
RULES = 1
VOICE_FILE = re.compile(r".*_(select|ack)\d*\.wav", re.IGNORECASE)
REVERSED_UNIT = re.compile(r".*_berserk")
CREATURES = frozenset({"chicken", "bull", "thunderbird", "dragon", "evil_dragon", "wild_sow", "sheep", "elephant",
                       "snake_basket", "eagle_pillar"})

# clips in which whisper-tiny.en heard no words (criterion: speechprune.data.unlabelled's docstring)
NOT_SPEECH: frozenset[str] = frozenset({
    "egypt/mummy/mummy_ack4", "egypt/mummy/mummy_select1", "egypt/mummy/mummy_select2", "egypt/mummy/mummy_select3",
    "egypt/mummy/mummy_select4", "egypt/mummy/mummy_select5", "egypt/mummy/mummy_select6",
    "indian/horseman/horseman_ack4", "indian/horseman/horseman_ack5", "indian/shaman/shaman_select4",
    "magic/dragon_rider/dr_ack1", "magic/dragon_rider/dr_ack2", "magic/dragon_rider/dr_ack3",
    "magic/dragon_rider/dr_ack4", "magic/dragon_rider/dr_select3", "magic/ghost_armor/ghost_armor_select1",
    "magic/ghost_armor/ghost_armor_select3", "norsemen/battleaxe/daemon_select4",
    "norsemen/cudgel_lady/cudgel_ack6", "norsemen/cudgel_lady/cudgel_ack7", "norsemen/spearman/swordman_select2",
    "norsemen/spearman/swordman_select4",
})


def voice_files(factions: Path) -> list[tuple[str, Path]]:
    """``(local id "<faction>/<unit>/<stem>", file)`` for the units' voice files, sorted, each file's bytes once."""
    found = []
    for path in factions.glob("*/units/*/sounds/*"):
        faction, unit = path.parts[-5], path.parts[-3]
        if (path.is_file() and VOICE_FILE.fullmatch(path.name) and unit not in CREATURES
                and not REVERSED_UNIT.fullmatch(unit)):
            found.append((f"{faction}/{unit}/{path.stem}", path))
    return unique_files(sorted(found))


def _clip(path: Path, local_id: str) -> Clip:
    return Clip(local_id, lambda: decode_soundfile(path.read_bytes()))


def read_megaglest(factions: Path = FACTIONS, progress: bool = False) -> list[Utterance]:
    """The units' spoken lines, decoded once into the cache."""
    require(factions, PACKAGE)
    files = voice_files(factions)
    utts = build_source(NAME, RULES, [p for _, p in files], lambda: [_clip(p, i) for i, p in files], progress)
    return [u for u in utts if u.id.split("/", 1)[1] not in NOT_SPEECH]
