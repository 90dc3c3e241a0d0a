"""Federated clients split by speaker: each client holds the clips of its own speakers, and the held-out speakers,
whose clips no client trains on, are what a federated run is scored on."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from ..errors import ConfigError


def split_by_speaker(utterances: list, speaker_of: Callable[[object], str], clients: int, held_out: float,
                     seed: int = 0) -> tuple[list[list], list, dict]:
    """``(client clip lists, held-out clips, speakers)``: the speakers ordered by a hash of (seed, speaker), the first
    ``held_out`` share of them (at least one) held out, the rest dealt to ``clients`` clients in turn; ``speakers``
    maps ``"held_out"`` and each client's index to its speaker names. Every clip of a speaker goes to one place, so
    no held-out voice is ever trained on. Fewer speakers than clients + 1 is a ``ConfigError``."""
    if clients < 1:
        raise ConfigError(f"a federated split needs at least one client, got {clients}")
    if not 0.0 < held_out < 1.0:
        raise ConfigError(f"the held-out share of speakers is in (0, 1), got {held_out}")
    by_speaker: dict[str, list] = {}
    for u in utterances:
        by_speaker.setdefault(speaker_of(u), []).append(u)
    names = sorted(by_speaker, key=lambda s: hashlib.sha256(f"{seed}/{s}".encode()).hexdigest())
    if len(names) < clients + 1:
        raise ConfigError(f"{len(names)} speakers cannot give {clients} clients and a held-out speaker")
    n_out = min(max(1, round(held_out * len(names))), len(names) - clients)
    out_names, rest = names[:n_out], names[n_out:]
    parts: list[list] = [[] for _ in range(clients)]
    speakers: dict = {"held_out": sorted(out_names)}
    for i, name in enumerate(rest):
        parts[i % clients].extend(by_speaker[name])
        speakers.setdefault(i % clients, []).append(name)
    return parts, [u for name in out_names for u in by_speaker[name]], speakers
