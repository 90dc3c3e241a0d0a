"""Out-of-domain English evaluation sources: real recorded speech from Debian packages, unlike the asterisk set.

Each module reads one source into :class:`~speechprune.data.manifest.Utterance` objects (language "en", task
"transcribe", duration set) with ids local to the source; :func:`source_utterances` prefixes them with the source
name (``drascula/D12``), so :func:`source_of` can tell any utterance's source, in a single set or the pooled
:data:`POOLED` set (every source in registry order, at most :data:`POOLED_PER_SOURCE` utterances of each, picked
by a hash of the id). These sets are for evaluation only: nothing calibrates,
distils or trains on them (``speechprune.data.datasets.parse_training_spec`` refuses them).

Audio soundfile cannot open is converted once into ``cache_dir()/sources/<name>`` (see
:mod:`speechprune.data.sources.common`). A missing Debian package is a one-line ConfigError naming the missing
file and the ``apt-get install`` command.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from speechprune.data.manifest import Utterance
from speechprune.data.sources import drascula, klettres, ktuberling, saytime, tuxpaint, warzone2100
from speechprune.errors import ConfigError


@dataclass(frozen=True)
class Source:
    """One out-of-domain source and what is known about it."""

    name: str  # bundled data set name, and the id prefix
    packages: tuple[str, ...]  # Debian packages that hold its audio and texts
    licence: str
    description: str  # speaking style and recording
    speakers: int | None  # distinct voices, None when unknown
    speakers_counted: str  # how ``speakers`` was counted
    reader: Callable[[], list[Utterance]]  # utterances with local ids, sorted


SOURCES: dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            name=drascula.NAME,
            packages=(drascula.PACKAGE,),
            licence="Drascula licence (free redistribution and modification, Alcachofa Soft S.L.)",
            description="adventure-game voice acting, 8-bit 11 kHz; subtitles as references, reworded lines left out",
            speakers=11,
            speakers_counted="characters by subtitle table and line range (ScummVM talk_* functions); actors unknown",
            reader=drascula.read_drascula,
        ),
        Source(
            name=warzone2100.NAME,
            packages=(warzone2100.PACKAGE,),
            licence="GPL-2+",
            description="strategy-game tutorial narration, read instructions, 11 kHz Vorbis",
            speakers=1,
            speakers_counted="one tutorial narrator (every clip is the same voice)",
            reader=warzone2100.read_warzone2100,
        ),
        Source(
            name=tuxpaint.NAME,
            packages=(tuxpaint.PACKAGE,),
            licence="GPL-2",
            description="isolated animal names (the stamps' file names), accented English, Vorbis",
            speakers=None,
            speakers_counted="not recorded in the package",
            reader=tuxpaint.read_tuxpaint,
        ),
        Source(
            name=ktuberling.NAME,
            packages=(ktuberling.PACKAGE,),
            licence="GPL-2+",
            description="single words and short names read for children, Vorbis",
            speakers=None,
            speakers_counted="not recorded in the package",
            reader=ktuberling.read_ktuberling,
        ),
        Source(
            name=klettres.NAME,
            packages=(klettres.PACKAGE,),
            licence="GPL-2+",
            description="isolated short words read for children, Vorbis",
            speakers=2,
            speakers_counted="one voice per folder: en (American) and en_GB (British)",
            reader=klettres.read_klettres,
        ),
        Source(
            name=saytime.NAME,
            packages=(saytime.PACKAGE,),
            licence="GPL (sounds by David C. Dawson, 2004)",
            description="talking-clock words and numbers, 8 kHz mu-law",
            speakers=1,
            speakers_counted="one speaker credited in the package's copyright file",
            reader=saytime.read_saytime,
        ),
    )
}
POOLED = "english-ood"
SET_NAMES: tuple[str, ...] = (*SOURCES, POOLED)
# the pooled set takes at most this many utterances of each source (fixed by a hash of the id), so one large
# source cannot be the whole suite and evaluating it beside every in-domain figure stays cheap
POOLED_PER_SOURCE = 120


def _pooled_pick(utts: list[Utterance], n: int) -> list[Utterance]:
    """The ``n`` utterances whose SHA-256 of the id sorts first (all when fewer), in their original order."""
    import hashlib

    if len(utts) <= n:
        return utts
    chosen = set(sorted(range(len(utts)), key=lambda i: hashlib.sha256(utts[i].id.encode()).hexdigest())[:n])
    return [u for i, u in enumerate(utts) if i in chosen]


def source_utterances(name: str) -> list[Utterance]:
    """Utterances of source ``name``, or of every source for :data:`POOLED` (at most ``POOLED_PER_SOURCE`` each),
    with ids ``<source>/<local id>``."""
    if name == POOLED:
        return [u for source in SOURCES for u in _pooled_pick(source_utterances(source), POOLED_PER_SOURCE)]
    if name not in SOURCES:
        raise ConfigError(f"unknown source {name!r}; choose from {', '.join(SET_NAMES)}")
    return [replace(u, id=f"{name}/{u.id}") for u in SOURCES[name].reader()]


def source_of(utt_id: str) -> str:
    """The source of an utterance id from :func:`source_utterances` (``drascula/D12`` -> "drascula")."""
    prefix, sep, _ = utt_id.partition("/")
    if not sep or prefix not in SOURCES:
        raise ConfigError(f"utterance id {utt_id!r} is not from an out-of-domain source ({', '.join(SOURCES)})")
    return prefix


__all__ = ["POOLED", "SET_NAMES", "SOURCES", "Source", "source_of", "source_utterances"]
