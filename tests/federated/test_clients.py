"""Clients split by speaker, and the speakers of synthetic utterance ids."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from speechprune.data.synth import voice_of
from speechprune.errors import ConfigError
from speechprune.federated.clients import split_by_speaker


def test_synthetic_ids_name_their_voice():
    assert voice_of("000000-espeak-ng-en-029+f2") == "espeak-ng-en-029+f2"
    assert voice_of("000001-flite-rms") == "flite-rms"
    assert voice_of("000123-hibari-heart") == "hibari-heart"
    for bad in ("flite-rms", "000001-festival-x", "000001-flite-", "asterisk/agent-pass"):
        with pytest.raises(ConfigError, match="not a synthetic utterance id"):
            voice_of(bad)


def test_every_speaker_goes_to_one_place_and_held_out_speakers_are_never_trained_on():
    utts = [SimpleNamespace(id=f"{i}", speaker=f"s{i % 7}") for i in range(70)]
    parts, held, speakers = split_by_speaker(utts, lambda u: u.speaker, clients=3, held_out=0.3, seed=1)
    assert len(parts) == 3 and all(parts)
    trained = {u.speaker for p in parts for u in p}
    assert {u.speaker for u in held} == set(speakers["held_out"]) and not trained & set(speakers["held_out"])
    assert len(speakers["held_out"]) == 2 and trained | set(speakers["held_out"]) == {f"s{i}" for i in range(7)}
    assert sum(map(len, parts)) + len(held) == 70
    for i, p in enumerate(parts):  # a client's clips are exactly its speakers' clips
        assert {u.speaker for u in p} == set(speakers[i])
    assert split_by_speaker(utts, lambda u: u.speaker, 3, 0.3, seed=1)[2] == speakers  # deterministic
    assert split_by_speaker(utts, lambda u: u.speaker, 3, 0.3, seed=2)[2] != speakers
    with pytest.raises(ConfigError, match="cannot give"):
        split_by_speaker(utts, lambda u: u.speaker, clients=7, held_out=0.3)
    with pytest.raises(ConfigError, match="held-out share"):
        split_by_speaker(utts, lambda u: u.speaker, clients=2, held_out=0.0)
