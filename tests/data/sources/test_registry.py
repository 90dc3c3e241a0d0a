"""The source registry: what each entry declares, id prefixes, the pooled set and source_of."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from speechprune.data.manifest import Utterance
from speechprune.data.sources import POOLED, SET_NAMES, SOURCES, Source, source_of, source_utterances
from speechprune.errors import ConfigError


def test_registry_entries_are_complete() -> None:
    assert len(SOURCES) >= 3
    assert SET_NAMES == (*SOURCES, POOLED) and POOLED not in SOURCES
    for name, s in SOURCES.items():
        assert isinstance(s, Source) and s.name == name
        assert "/" not in name and name == name.lower()
        assert s.packages and all(p and " " not in p for p in s.packages)
        assert s.licence and s.description and s.speakers_counted
        assert s.speakers is None or (isinstance(s.speakers, int) and s.speakers >= 1)
        assert callable(s.reader)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SOURCES["drascula"].speakers = 3  # type: ignore[misc]


def _fake(name: str, ids: list[str]):
    def reader() -> list[Utterance]:
        return [Utterance(id=i, audio=Path(f"/x/{name}/{i}.wav"), text=f"text {i}", language="en",
                          task="transcribe", duration=1.0) for i in ids]
    return reader


@pytest.fixture
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(SOURCES):
        monkeypatch.setitem(SOURCES, name, dataclasses.replace(SOURCES[name], reader=_fake(name, [])))
    monkeypatch.setitem(SOURCES, "drascula", dataclasses.replace(SOURCES["drascula"], reader=_fake("d", ["1", "D2"])))
    monkeypatch.setitem(SOURCES, "saytime", dataclasses.replace(SOURCES["saytime"], reader=_fake("s", ["the_time_is"])))


def test_ids_are_prefixed_by_the_source(fake_sources: None) -> None:
    utts = source_utterances("drascula")
    assert [u.id for u in utts] == ["drascula/1", "drascula/D2"]
    assert utts[1].text == "text D2" and utts[1].audio == Path("/x/d/D2.wav")


def test_pooled_set_is_every_source_in_registry_order(fake_sources: None) -> None:
    ids = [u.id for u in source_utterances(POOLED)]
    assert ids == ["drascula/1", "drascula/D2", "saytime/the_time_is"]
    assert [source_of(i) for i in ids] == ["drascula", "drascula", "saytime"]


def test_unknown_source() -> None:
    with pytest.raises(ConfigError, match="unknown source 'asterisk'; choose from drascula, "):
        source_utterances("asterisk")


@pytest.mark.parametrize("utt_id", ["digits/1", "agent-pass", "english-ood/1", "", "drascula"])
def test_source_of_refuses_other_ids(utt_id: str) -> None:
    with pytest.raises(ConfigError, match="is not from an out-of-domain source"):
        source_of(utt_id)


def test_source_of_nested_ids() -> None:
    assert source_of("klettres/en_GB/syllab/ball") == "klettres"
    assert source_of("tuxpaint/animals/birds/crow") == "tuxpaint"


def test_pooled_set_caps_each_source_by_id_hash(fake_sources: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    import speechprune.data.sources as sources

    ids = [f"u{i}" for i in range(6)]
    monkeypatch.setitem(SOURCES, "drascula", dataclasses.replace(SOURCES["drascula"], reader=_fake("d", ids)))
    monkeypatch.setattr(sources, "POOLED_PER_SOURCE", 2)
    pooled = [u.id for u in source_utterances(POOLED)]
    full = [f"drascula/{i}" for i in ids]
    first_two = set(sorted(full, key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:2])
    assert pooled == [i for i in full if i in first_two] + ["saytime/the_time_is"]  # original order kept
    assert [u.id for u in source_utterances("drascula")] == full  # a single source is never capped
