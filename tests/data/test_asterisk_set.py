"""The bundled Asterisk evaluation set: parsing and splitting on a small tree built here, then the real Debian files."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data import asterisk
from speechprune.data.asterisk import SPLITS, asterisk_utterances, parse_prompt_texts, split_of
from speechprune.data.audio import load_audio
from speechprune.errors import ConfigError

TEXTS = """; Core Asterisk Sounds in English

agent-pass: Please enter your password followed by the pound key.
beep: [this is a simple beep tone]
silence/1: (1 second of silence)
digits/1: one
letters/at: at [@]
dictate/both_help: press * to toggle pause, press # to enter a new dictation filename
no-audio: There is no file for this text.
"""
FILES = {"agent-pass": 1.0, "beep": 0.25, "silence/1": 1.0, "digits/1": 0.5, "letters/at": 0.5,
         "dictate/both_help": 2.0, "untranscribed": 0.5}


@pytest.fixture
def fake_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    sounds = tmp_path / "sounds"
    for name, seconds in FILES.items():
        (sounds / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(sounds / f"{name}.wav", np.zeros(int(seconds * 8000), np.float32), 8000)
    text = tmp_path / "core-sounds-en.txt.gz"
    text.write_bytes(gzip.compress(TEXTS.encode()))
    monkeypatch.setenv(asterisk.SOUNDS_ENV, str(sounds))
    monkeypatch.setenv(asterisk.TEXT_ENV, str(text))
    return sounds


def test_split_rule_is_the_documented_hash() -> None:
    for utt_id in ("digits/1", "agent-pass", "letters/at", "vm-intro", "a", "b"):
        h = int(hashlib.sha256(utt_id.encode()).hexdigest()[:8], 16)
        assert split_of(utt_id) == ("test" if h / 2**32 < 0.5 else "dev")
    assert [split_of(i) for i in ("digits/1", "agent-pass", "vm-intro", "a", "b")] == ["test", "dev", "test", "dev", "test"]


def test_parse_prompt_texts() -> None:
    texts = parse_prompt_texts(TEXTS)
    assert texts["agent-pass"] == "Please enter your password followed by the pound key."
    assert texts["letters/at"] == "at [@]"
    assert len(texts) == 7
    with pytest.raises(ConfigError, match="line 2: expected 'name: text'"):
        parse_prompt_texts("a: b\nno colon here\n", "x.txt")


def test_fake_install(fake_install: Path) -> None:
    utts = asterisk_utterances("all")
    assert [u.id for u in utts] == ["agent-pass", "dictate/both_help", "digits/1", "letters/at"]
    by_id = {u.id: u for u in utts}
    assert by_id["letters/at"].text == "at"
    assert by_id["dictate/both_help"].text == "press star to toggle pause, press pound to enter a new dictation filename"
    assert by_id["dictate/both_help"].duration == 2.0
    assert by_id["digits/1"].audio == fake_install / "digits" / "1.wav"
    assert all(u.language == "en" and u.task == "transcribe" for u in utts)
    assert [u.id for u in asterisk_utterances("all", "multiword")] == ["agent-pass", "dictate/both_help"]
    assert [u.id for u in asterisk_utterances("test")] == ["dictate/both_help", "digits/1"]
    assert [u.id for u in asterisk_utterances("dev")] == ["agent-pass", "letters/at"]


def test_bad_split_or_subset(fake_install: Path) -> None:
    with pytest.raises(ConfigError, match="unknown split 'train'.*dev, test, all"):
        asterisk_utterances("train")
    with pytest.raises(ConfigError, match="unknown subset 'short'"):
        asterisk_utterances("test", "short")


def test_missing_install_names_the_file_and_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(asterisk.SOUNDS_ENV, str(tmp_path / "no-sounds"))
    with pytest.raises(ConfigError) as info:
        asterisk_utterances()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'no-sounds'}: ")
    assert "apt-get install asterisk-core-sounds-en-wav" in message
    monkeypatch.delenv(asterisk.SOUNDS_ENV)
    monkeypatch.setenv(asterisk.TEXT_ENV, str(tmp_path / "none.txt.gz"))
    if asterisk.DEFAULT_SOUNDS.is_dir():
        with pytest.raises(ConfigError, match=r"none\.txt\.gz: .*apt-get install asterisk-core-sounds-en$"):
            asterisk_utterances()


def _require_debian_files() -> None:
    try:
        asterisk.sounds_dir(), asterisk.text_file()
    except ConfigError as exc:
        pytest.skip(f"Debian asterisk prompts not installed: {exc}")


@pytest.fixture
def real_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(asterisk.SOUNDS_ENV, raising=False)
    monkeypatch.delenv(asterisk.TEXT_ENV, raising=False)
    _require_debian_files()


@pytest.mark.integration
def test_real_set_sizes(real_install: None) -> None:
    sizes = {s: len(asterisk_utterances(s)) for s in SPLITS}
    multi = {s: len(asterisk_utterances(s, "multiword")) for s in SPLITS}
    assert sizes == {"dev": 269, "test": 282, "all": 551}
    assert multi == {"dev": 145, "test": 168, "all": 313}


@pytest.mark.integration
def test_real_splits_are_disjoint_cover_all_and_sorted(real_install: None) -> None:
    all_ids = [u.id for u in asterisk_utterances("all")]
    dev = {u.id for u in asterisk_utterances("dev")}
    test = {u.id for u in asterisk_utterances("test")}
    assert all_ids == sorted(all_ids) and len(set(all_ids)) == len(all_ids)
    assert not dev & test
    assert dev | test == set(all_ids)
    assert all(split_of(i) == "test" for i in test)


@pytest.mark.integration
def test_real_references_and_audio(real_install: None) -> None:
    utts = {u.id: u for u in asterisk_utterances("all")}
    assert utts["letters/at"].text == "at"
    assert utts["letters/exclaimation-point"].text == "exclamation-point"
    assert utts["agent-pass"].text == "Please enter your password followed by the pound key."
    assert "press star to toggle pause" in utts["dictate/both_help"].text
    for skipped in ("beep", "tt-monkeys", "silence/1", "confbridge-join"):
        assert skipped not in utts
    assert sum(u.duration for u in utts.values()) / 60 == pytest.approx(24.26, abs=0.01)
    x = load_audio(utts["agent-pass"].audio)
    assert len(x) == round(utts["agent-pass"].duration * 16000)
