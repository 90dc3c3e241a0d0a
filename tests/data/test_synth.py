"""Synthetic training speech: sentence cleaning (pure), text sources, the TTS engines, resuming a folder."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from speechprune.data import synth, text_corpora
from speechprune.data.manifest import read_manifest
from speechprune.data.synth import engine_missing, synthesize, telephone_band
from speechprune.data.text_corpora import (
    clean_sentence,
    clean_sentences,
    parse_bible,
    parse_fortunes,
    sentences,
    split_sentences,
)
from speechprune.errors import ConfigError

FORTUNES = """A gift of a flower will soon be made to you.
%
Go.
%
The early bird gets the worm, but the second mouse gets the cheese.
		-- Steven Wright
%
Write $5 on a card & send it to /dev/null now!
%
You will be married within a year, and divorced within two years after that.
%
Never put off till tomorrow what you can do the day after tomorrow!!!  Mr. Twain said so, you know.
%
ALL HAIL THE MIGHTY CHEESE OF THE MOON!
%
Beware of low-flying butterflies.
"""


@pytest.fixture
def fake_fortunes(tmp_path, monkeypatch):
    folder = tmp_path / "fortunes"
    folder.mkdir()
    (folder / "misc").write_text(FORTUNES)
    (folder / "misc.dat").write_bytes(b"\0\1binary")
    monkeypatch.setenv(text_corpora.FORTUNES_ENV, str(folder))
    return folder


# -- cleaning ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  A visit to a   fresh place\twill bring strange work. ", "A visit to a fresh place will bring strange work."),
        ("\u201cIt\u2019s late,\u201d she said.", "It's late, she said."),
        ("I came -- I saw -- I left!!!", "I came, I saw, I left!"),
        ("On the 3rd day, 1,250 people came.", "On the 3rd day, 1,250 people came."),
        ("Too short.", None),  # 2 words
        (" ".join(["word"] * 26).capitalize() + ".", None),  # 26 words
        ("lowercase start is not a sentence.", None),
        ("No end punctuation here at all", None),
        ("Send $5 to me now.", None),
        ("See the (hidden) remark here.", None),
        ("Use foo_bar in your code.", None),
        ("Wait... what happened here?", None),
        ("Caf\u00e9 au lait for everyone today.", None),
        ("A CAN OF ASPARAGUS AND SOME LIVE AMMO!", None),  # shouting
        ("The UNIX system has a kernel and many users.", "The UNIX system has a kernel and many users."),
        ("A supercalifragilisticexpialidocious word appears.", None),  # 34 letters
    ],
)
def test_clean_sentence(raw, expected):
    assert clean_sentence(raw) == expected
    assert clean_sentence(raw) == clean_sentence(raw)


def test_clean_sentence_is_idempotent():
    for raw in FORTUNES.split("%"):
        for s in split_sentences(raw):
            cleaned = clean_sentence(s)
            assert cleaned is None or clean_sentence(cleaned) == cleaned


def test_split_sentences_keeps_abbreviations():
    text = "Mr. Smith went to Washington. He saw J. Edgar Hoover! Was it 5 p.m.? Yes."
    assert split_sentences(text) == ["Mr. Smith went to Washington.", "He saw J. Edgar Hoover!", "Was it 5 p.m.?", "Yes."]


def test_clean_sentences_dedupes_and_keeps_order():
    texts = ["The cat sat down. The dog ran off.", "the  CAT sat down!", "Junk & more junk here."]
    assert clean_sentences(texts) == ["The cat sat down.", "The dog ran off."]


def test_parse_fortunes_drops_attribution():
    texts = parse_fortunes(FORTUNES)
    assert "The early bird gets the worm, but the second mouse gets the cheese." in texts
    assert not any("Steven Wright" in t for t in texts)
    assert len(texts) == 8


def test_parse_bible_lowercases_small_capitals():
    out = parse_bible("Ge1:1 In the beginning GOD created.\nPs23:1 The LORD is my shepherd; I shall not want.\n\n")
    assert out == ["In the beginning God created.", "The Lord is my shepherd; I shall not want."]


# -- sentences() ---------------------------------------------------------------------------------------

def test_sentences_from_fake_fortunes(fake_fortunes):
    every = sentences(None, seed=0, sources=("fortunes",))
    assert sorted(every) == sorted(
        [
            "A gift of a flower will soon be made to you.",
            "The early bird gets the worm, but the second mouse gets the cheese.",
            "You will be married within a year, and divorced within two years after that.",
            "Never put off till tomorrow what you can do the day after tomorrow!",
            "Mr. Twain said so, you know.",
            "Beware of low-flying butterflies.",
        ]
    )
    assert sentences(3, seed=0, sources=("fortunes",)) == every[:3]  # a larger n extends a smaller one
    assert sentences(None, seed=0, sources="fortunes") == every
    assert any(sentences(None, seed=s, sources=("fortunes",)) != every for s in range(1, 5))
    with pytest.raises(ConfigError, match="only 6"):
        sentences(7, sources=("fortunes",))


def test_missing_sources_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv(text_corpora.FORTUNES_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="apt-get install fortunes"):
        sentences(1, sources=("fortunes",))
    monkeypatch.setenv(text_corpora.BIBLE_ENV, str(tmp_path / "no-bible"))
    with pytest.raises(ConfigError, match="apt-get install bible-kjv"):
        sentences(1, sources=("bible",))
    monkeypatch.setenv(text_corpora.GCIDE_ENV, str(tmp_path / "no.dict.dz"))
    with pytest.raises(ConfigError, match="apt-get install dict-gcide"):
        sentences(1, sources=("gcide",))
    with pytest.raises(ConfigError, match="unknown text source"):
        sentences(1, sources=("shakespeare",))


@pytest.mark.parametrize("source", ["fortunes", "bible"])
def test_real_debian_sources(source):
    try:
        got = sentences(200, seed=1, sources=(source,))
    except ConfigError as exc:
        pytest.skip(f"Debian text source not installed: {exc}")
    assert len(set(got)) == 200
    assert all(clean_sentence(s) == s for s in got)
    assert sentences(200, seed=1, sources=(source,)) == got


# -- audio ---------------------------------------------------------------------------------------------

def test_telephone_band_removes_high_and_low_frequencies():
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    x = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t) + 0.3 * np.sin(2 * np.pi * 100 * t))
    y = telephone_band(x.astype(np.float32), rng)
    assert y.shape == x.shape and y.dtype == np.float32 and np.all(np.isfinite(y))
    spec = np.abs(np.fft.rfft(y))
    assert spec[6000] < 0.01 * spec[1000] and spec[100] < 0.05 * spec[1000]


@pytest.mark.parametrize("engine", synth.ENGINES)
def test_engine_writes_16k_mono_speech(engine, fake_fortunes, tmp_path):
    reason = engine_missing(engine)
    if reason:
        pytest.skip(reason)
    manifest = synthesize(tmp_path / "out", 3, engines=(engine,), sources=("fortunes",), progress=False)
    utts = read_manifest(manifest)
    assert len(utts) == 3
    for u in utts:
        audio, rate = sf.read(u.audio, dtype="float32")
        assert rate == 16000 and audio.ndim == 1
        assert np.sqrt(np.mean(audio**2)) > 0.01
        assert u.language == "en" and u.task == "transcribe" and u.id.split("-")[1:2] == [engine.split("-")[0]]
        assert u.duration == pytest.approx(audio.size / 16000, abs=1e-3)
        seconds_per_word = u.duration / len(u.text.split())
        assert 0.12 < seconds_per_word < 1.2, (u.text, u.duration)
    by_length = sorted(utts, key=lambda u: len(u.text))
    assert by_length[0].duration < by_length[-1].duration


def test_missing_engine_names_the_install(monkeypatch, fake_fortunes, tmp_path):
    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="apt-get install flite"):
        synthesize(tmp_path, 2, engines=("flite",), sources=("fortunes",), progress=False)
    with pytest.raises(ConfigError, match="unknown TTS engine"):
        synthesize(tmp_path, 2, engines=("sam",), sources=("fortunes",), progress=False)


@pytest.fixture
def counting_engine(monkeypatch):
    """espeak-ng replaced by a tone generator that counts its calls (no binary needed)."""
    calls = []

    def fake(text, rng):
        calls.append(text)
        t = np.arange(int(0.3 * 16000 * len(text.split()))) / 16000
        return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), "fake"

    monkeypatch.setitem(synth._RENDER, "espeak-ng", fake)
    monkeypatch.setattr(synth, "engine_missing", lambda engine: None)
    return calls


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_skips_finished_utterances(counting_engine, fake_fortunes, tmp_path, workers):
    out = tmp_path / "out"
    kw = dict(engines=("espeak-ng",), sources=("fortunes",), progress=False, workers=workers)
    manifest = synthesize(out, 3, **kw)
    if workers == 1:
        assert len(counting_engine) == 3
    wavs = sorted((out / "wavs").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in wavs}
    synthesize(out, 3, **kw)
    assert {p: p.stat().st_mtime_ns for p in wavs} == mtimes
    assert len(read_manifest(manifest)) == 3

    # a killed run leaves a truncated line: it is cut, and that utterance is made again
    lines = manifest.read_text().splitlines(keepends=True)
    manifest.write_text("".join(lines[:2]) + lines[2][:20])
    synthesize(out, 5, **kw)
    utts = read_manifest(manifest)
    assert [u.id[:6] for u in utts] == ["000000", "000001", "000002", "000003", "000004"]
    assert len({u.id for u in utts}) == 5
    if workers == 1:
        assert len(counting_engine) == 6
    assert not [p for p in (out / "wavs").iterdir() if p.name.startswith(".")]  # no temp files left

    with pytest.raises(ConfigError, match="other settings"):
        synthesize(out, 5, seed=1, **kw)
