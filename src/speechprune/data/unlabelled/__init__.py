"""Real, unlabelled, varied English speech for recovery and calibration, from Debian packages.

Distillation needs only audio (the dense teacher labels it), so these sources carry no transcripts (manifest
text ""). None of them is an evaluation source: ``speechprune.data.sources`` (drascula, warzone2100, klettres,
ktuberling, tuxpaint, saytime) and beneath-a-steel-sky are kept for evaluation and are not read here.

Each source module decodes its packaged audio once into 16 kHz mono WAVs under
``cache_dir() / "unlabelled" / <name>`` with a JSONL manifest (:mod:`speechprune.data.unlabelled.cache`:
atomic, resumable, rebuilt when the package changes). Ids are ``<name>/<local id>``.

What is left out, and why:

- by name, before decoding: sound effects, other languages, TTS voices, modem signals and duplicate recordings
  (each module's docstring says which);
- while decoding: undecodable, silent (peak < -60 dBFS) or shorter than 0.5 s clips (``dropped.jsonl``);
- each module's ``NOT_SPEECH``: clips in which whisper-tiny.en (faster-whisper int8, greedy) heard no words:
  empty or punctuation only, only interjections ("Ah!", "Huh?", "Hmm", laughter "Ha ha ha"), a runaway repetition
  on a scream or a sung note (read by hand: Whisper looping on real speech, as on codec2 ``ve9qrp/005``, is
  kept), or just "you" (Whisper's usual output on noise). Checked once on every clip of hedgewars, megaglest,
  openarena and codec2, and on 556 queen clips: the 406 under 0.8 s or named outside the dialogue, cut-scene and
  Joe patterns (``03SSSSJ1``, ``MIK_0136``, ``COMIC141``, ``ROCKPAKS``...), 31 of them left out, and a random 150
  of the rest, 3 of them left out (2 %); the other ~6,000 queen lines are taken as speech without a check. (The
  check ran once, by hand: ~1 s a clip on two CPU cores, so no build runs a model.)
- here, in :func:`unlabelled_utterances`: anything outside 0.5-30 s.

:func:`unlabelled_utterances` draws clips round-robin over the installed sources (each shuffled with the seed),
so every prefix of the list is balanced across sources; a source that runs out drops out of the rotation.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from speechprune.data.manifest import Utterance
from speechprune.data.sources.common import require
from speechprune.data.unlabelled import codec2, hedgewars, megaglest, openarena, queen
from speechprune.data.unlabelled.cache import MAX_SECONDS, MIN_SECONDS
from speechprune.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnlabelledSource:
    """One source of unlabelled English speech and what is known about it."""

    name: str  # id prefix and cache folder
    packages: tuple[str, ...]  # Debian packages it reads
    needs: tuple[tuple[Path, str], ...]  # (file or folder, Debian package that installs it)
    licence: str  # of the audio, from /usr/share/doc/<package>/copyright
    description: str
    speakers: int  # approximate number of distinct voices
    speakers_counted: str  # how ``speakers`` was estimated
    reader: Callable[[], list[Utterance]]  # kept clips, decoded into the cache on first use

    def missing(self) -> list[tuple[Path, str]]:
        """The needed files that are absent, with their package."""
        return [(path, package) for path, package in self.needs if not path.exists()]


SOURCES: dict[str, UnlabelledSource] = {
    s.name: s
    for s in (
        UnlabelledSource(
            name=queen.NAME,
            packages=(queen.PACKAGE,),
            needs=((queen.RESOURCE, queen.PACKAGE),),
            licence="Flight of the Amazon Queen licence (freeware: free redistribution, modification allowed; "
                    "(c) 1995 John Passfield and Steven Stamatiadis)",
            description="adventure-game voice acting (CD talkie), MP3 16 kb/s at 11,025 Hz",
            speakers=31,
            speakers_counted="Joe plus the 30 characters with .DOG dialogue files (cut-scene voices besides); the "
                             "cast list is not in the package, so actors doubling roles would make fewer voices",
            reader=queen.read_queen,
        ),
        UnlabelledSource(
            name=hedgewars.NAME,
            packages=(hedgewars.PACKAGE,),
            needs=((hedgewars.VOICES / "Default", hedgewars.PACKAGE),),
            licence="GFDL-1.3 (Data/Sounds, (c) 2004-2006 Andrey Korotaev)",
            description="game exclamations acted in character (British, pirate, mobster, hillbilly...), 44.1 kHz",
            speakers=len(hedgewars.ENGLISH_PACKS),
            speakers_counted="one voice per English pack (Classic and Default share files: maybe one actor)",
            reader=hedgewars.read_hedgewars,
        ),
        UnlabelledSource(
            name=megaglest.NAME,
            packages=(megaglest.PACKAGE,),
            needs=((megaglest.FACTIONS, megaglest.PACKAGE),),
            licence="CC-BY-SA-3.0",
            description="strategy-game units answering orders ('As you wish', 'What do you want?'), 22-44 kHz",
            speakers=20,
            speakers_counted="28 units with kept lines; some are one actor (the stickfighter lines exist in four "
                             "takes), so about 20 voices",
            reader=megaglest.read_megaglest,
        ),
        UnlabelledSource(
            name=openarena.NAME,
            packages=(openarena.MISC_PACKAGE, openarena.DATA_PACKAGE),
            needs=((openarena.MISC_PK3, openarena.MISC_PACKAGE), (openarena.DATA_PK3, openarena.DATA_PACKAGE)),
            licence="GPL-2+",
            description="arena-shooter match announcer and bot team orders",
            speakers=2,
            speakers_counted="the announcer and the 'rott' team-order voice (RottKing)",
            reader=openarena.read_openarena,
        ),
        UnlabelledSource(
            name=codec2.NAME,
            packages=(codec2.PACKAGE,),
            needs=tuple((codec2.ROOT / rel, codec2.PACKAGE) for rel in codec2.RECORDINGS),
            licence="LGPL-2.1 ((c) 2007-2019 David Rowe)",
            description="read Harvard sentences and amateur-radio calls, 8 kHz, some over HF radio",
            speakers=10,
            speakers_counted="distinct recordings' voices (sentence readers may repeat)",
            reader=codec2.read_codec2,
        ),
    )
}


def available_sources() -> list[str]:
    """Names of the sources whose Debian packages are installed, in registry order."""
    return [name for name, s in SOURCES.items() if not s.missing()]


def _missing_error(names: Sequence[str]) -> ConfigError:
    missing = [(path, package) for name in names for path, package in SOURCES[name].missing()]
    files = ", ".join(str(p) for p, _ in missing)
    packages = " ".join(dict.fromkeys(pkg for _, pkg in missing))
    return ConfigError(f"no unlabelled speech source is installed (missing {files}); "
                       f"install them with: sudo apt-get install {packages}")


def source_utterances(name: str) -> list[Utterance]:
    """All kept clips of source ``name`` (any length the cache kept), decoding them on first use."""
    if name not in SOURCES:
        raise ConfigError(f"unknown unlabelled source {name!r}; choose from {', '.join(SOURCES)}")
    for path, package in SOURCES[name].needs:
        require(path, package)
    return SOURCES[name].reader()


def in_window(u: Utterance) -> bool:
    """True when the clip lasts 0.5-30 s (both included)."""
    return u.duration is not None and MIN_SECONDS <= u.duration <= MAX_SECONDS


def balanced_sample(pools: Mapping[str, Sequence[Utterance]], n: int, seed: int) -> list[Utterance]:
    """``n`` utterances taken round-robin over ``pools`` (in their order), each pool sorted by id and shuffled
    with ``(seed, crc32(pool name))``; a pool that runs out leaves the rotation. Fewer when the pools hold fewer."""
    shuffled = []
    for name, pool in pools.items():
        items = sorted(pool, key=lambda u: u.id)
        order = np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))]).permutation(len(items))
        shuffled.append([items[i] for i in order])
    out: list[Utterance] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in shuffled):
        out += [p[depth] for p in shuffled if depth < len(p)][: n - len(out)]
        depth += 1
    return out


def unlabelled_utterances(n: int, seed: int = 0, *, sources: Sequence[str] | None = None) -> list[Utterance]:
    """``n`` unlabelled English clips of 0.5-30 s, balanced across sources and fixed by ``seed``.

    ``sources`` (default: every installed one, in registry order) names the sources to draw from; an explicitly
    named source that is not installed is a ConfigError naming its file and package, and so is having none
    installed at all. The list is the first ``n`` of a round-robin over the sources (see :func:`balanced_sample`),
    so a smaller ``n`` with the same seed gives a prefix. Fewer than ``n`` (with a warning) when all sources
    together hold fewer clips. Clips are decoded into the cache on first use.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"n must be an integer >= 0, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
    if sources is None:
        names = available_sources()
        skipped = [name for name in SOURCES if name not in names]
        if not names:
            raise _missing_error(list(SOURCES))
        if skipped:
            log.info("unlabelled sources not installed, left out: %s", ", ".join(skipped))
    else:
        names = list(dict.fromkeys(sources))
        if not names:
            raise ConfigError("no unlabelled sources given")
    pools = {name: [u for u in source_utterances(name) if in_window(u)] for name in names}
    picked = balanced_sample(pools, n, seed)
    if len(picked) < n:
        log.warning("asked for %d unlabelled clips, the sources %s hold only %d", n, ", ".join(names), len(picked))
    return picked


__all__ = ["SOURCES", "UnlabelledSource", "available_sources", "balanced_sample", "in_window",
           "source_utterances", "unlabelled_utterances"]
