"""Drascula reader: .ALS decoding, the drascula.dat text tables and a fake install, all built here."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.sources import drascula
from speechprune.data.sources.drascula import (
    ALS_RATE,
    HEADER_RECORD_SIZES,
    TEXT_TABLES,
    decode_als,
    is_mostly_interjection,
    parse_text_tables,
    reference_for,
    read_drascula,
    voice_file_key,
)
from speechprune.errors import ConfigError


def als_bytes(samples: np.ndarray) -> bytes:
    """An .ALS file: 32 junk header bytes, unsigned 8-bit samples, 32 junk trailer bytes."""
    return b"H" * 32 + bytes(samples.astype(np.uint8)) + b"T" * 32


def _texts_block(texts: list[str]) -> bytes:
    """One language's block as ScummVM's create_drascula writes it (4-byte aligned entries)."""
    out = b"\0\0"
    for text in texts:
        raw = text.encode("latin-1") + b"\0"
        pad = 4 - (len(raw) + 2) % 4
        out += struct.pack(">H", len(raw) + pad + 2) + raw + b"\0" * pad
    return out


def dat_bytes(tables: dict[str, list[list[str]]], version: int = 6) -> bytes:
    """A drascula.dat: header tables with a record or two of zeros, then the given text tables per language
    (``{table: [language 0 lines, language 1 lines]}``; tables not given are one empty line)."""
    out = b"DRASCULA" + bytes([version])
    for i, size in enumerate(HEADER_RECORD_SIZES):
        count = i % 3
        out += struct.pack(">H", count) + b"\0" * (count * size)
    languages = 2
    out += struct.pack(">H", languages)
    for name in TEXT_TABLES:
        per_lang = tables.get(name, [[""]] * languages)
        out += struct.pack(">H", len(per_lang[0]))
        for texts in per_lang:
            block = _texts_block(texts)
            out += struct.pack(">H", len(block)) + block
    return out


TABLES = {
    "text": [["", "THAT'S THE SECOND BIGGEST DOOR", "", "I HOPE SOMEONE F...(WHISTLE) YOU", "HA, HA, HA"],
             ["", "ES LA SEGUNDA PUERTA", "", "OJALA", "JA, JA, JA"]],
    "textd": [["", "HEY IGOR, HOW IS EVERYTHING GOING?"], ["", "OYE IGOR"]],
    "texti": [["", "MASTER, THIS IS \"NOT\" WORKING..."], ["", "AMO"]],
}


def test_decode_als_skips_header_and_trailer() -> None:
    samples = decode_als(als_bytes(np.array([128, 0, 255, 192])))
    assert samples.dtype == np.float32
    assert samples.tolist() == [0.0, -1.0, 127 / 128, 0.5]
    with pytest.raises(ValueError, match="more than 64 bytes, got 64"):
        decode_als(b"x" * 64)


def test_parse_text_tables_reads_one_language() -> None:
    data = dat_bytes(TABLES)
    english = parse_text_tables(data)
    assert list(english) == list(TEXT_TABLES)
    assert english["text"] == TABLES["text"][0]
    assert english["texti"][1] == 'MASTER, THIS IS "NOT" WORKING...'
    assert parse_text_tables(data, language=1)["textd"][1] == "OYE IGOR"
    with pytest.raises(ValueError, match="language 2 not in the file"):
        parse_text_tables(data, language=2)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda d: b"DRASCULO" + d[8:], "no DRASCULA magic"),
        (lambda d: d + b"\0", "1 bytes after the last text table"),
        (lambda d: d[:-3], "truncated"),
    ],
)
def test_parse_text_tables_refuses_other_bytes(mangle, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_text_tables(mangle(dat_bytes(TABLES)))


@pytest.mark.parametrize(
    ("name", "key"),
    [("12.ALS", ("", 12)), ("BJ3.ALS", ("BJ", 3)), ("d7.als", ("D", 7)), ("VB62.ALS", ("VB", 62)),
     ("S1.ALS", None), ("F2.ALS", None), ("96.ALG", None), ("2AUX62.ALG", None)],
)
def test_voice_file_key(name: str, key) -> None:
    assert voice_file_key(name) == key


@pytest.mark.parametrize(
    ("raw", "reference"),
    [
        ("YOUUU SKELETONNNN!!", "YOU SKELETON!!"),
        ("OOOOKAY. SORRY.", "OKAY. SORRY."),
        ("...HE IS PALE, WEARS A TOUPE\x90  HE SURE IS DRASCULA!", "HE IS PALE, WEARS A TOUPE HE SURE IS DRASCULA!"),
        ("I HOPE SOMEONE F...(WHISTLE) YOU", "I HOPE SOMEONE F YOU"),
        ('"SAFE AWAY LOCKS LTD."', "SAFE AWAY LOCKS LTD."),
        ("GOOD EVENING", "GOOD EVENING"),  # two letters in a row are spelling, not shouting
    ],
)
def test_reference_for(raw: str, reference: str) -> None:
    assert reference_for(raw) == reference


@pytest.mark.parametrize(
    ("text", "mostly"),
    [("HA, HA, HA", True), ("HA, HE, HI, HO, HU, GREAT!", True), ("AHH YES", True), ("BLA, BLA, BLA.", True),
     ("AH A WEREWOLF!! DIE YOU DAMNED EVIL!", False), ("HI THERE", False), ("HE IS HERE", False), ("", True)],
)
def test_is_mostly_interjection(text: str, mostly: bool) -> None:
    assert is_mostly_interjection(text) is mostly


@pytest.fixture
def fake_install(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.setattr(drascula, "REVISED_AFTER_RECORDING", frozenset())  # the real list names real lines
    voices = tmp_path / "en"
    voices.mkdir()
    ramp = np.arange(ALS_RATE) % 256  # 1 s
    for name in ("1.ALS", "2.ALS", "3.ALS", "4.ALS", "D1.ALS", "I1.ALS", "I9.ALS", "S1.ALS", "96.ALG"):
        (voices / name).write_bytes(als_bytes(ramp))
    dat = tmp_path / "drascula.dat"
    dat.write_bytes(dat_bytes(TABLES))
    return voices, dat


def test_fake_install(fake_install: tuple[Path, Path], cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drascula, "DROPPED", {"3": "whistles over the words"})
    utts = read_drascula(*fake_install)
    # 2 has an empty subtitle, 3 is dropped, 4 is laughter, I9 has no line, S1 is an effect, 96.ALG a picture
    assert [u.id for u in utts] == ["1", "D1", "I1"]
    by_id = {u.id: u for u in utts}
    assert by_id["I1"].text == "MASTER, THIS IS NOT WORKING"
    assert by_id["D1"].text == "HEY IGOR, HOW IS EVERYTHING GOING?"
    assert all(u.language == "en" and u.task == "transcribe" for u in utts)
    for u in utts:
        assert u.audio.parent == cache / "sources" / "drascula"
        info = sf.info(str(u.audio))
        assert (info.samplerate, info.channels) == (16000, 1)
        assert u.duration == pytest.approx(1.0, abs=1e-3)
    wavs = sorted(p.name for p in (cache / "sources" / "drascula").iterdir())
    assert len(wavs) == 3 and all(w.endswith(".wav") for w in wavs)


def test_revised_lines_are_left_out(fake_install: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(drascula, "REVISED_AFTER_RECORDING", frozenset({"D1"}))
    assert [u.id for u in read_drascula(*fake_install)] == ["1", "3", "I1"]


def test_real_drop_lists_name_real_voice_files() -> None:
    pattern = r"[A-Z]*\d+"
    assert all(re.fullmatch(pattern, i) for i in drascula.REVISED_AFTER_RECORDING | set(drascula.DROPPED))
    assert not drascula.REVISED_AFTER_RECORDING & set(drascula.DROPPED)
    assert len(drascula.REVISED_AFTER_RECORDING) == 229


def test_rerun_reuses_the_converted_audio(fake_install: tuple[Path, Path], cache: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    first = read_drascula(*fake_install)
    stamps = {u.id: u.audio.stat().st_mtime_ns for u in first}
    drascula._read.cache_clear()

    def no_decoding(data: bytes):
        raise AssertionError("decoded again")

    monkeypatch.setattr(drascula, "decode_als", no_decoding)
    again = read_drascula(*fake_install)
    assert again == first
    assert {u.id: u.audio.stat().st_mtime_ns for u in again} == stamps


def test_missing_packages(tmp_path: Path, fake_install: tuple[Path, Path]) -> None:
    voices, dat = fake_install
    with pytest.raises(ConfigError, match=r"no-en: .*apt-get install drascula$"):
        read_drascula(tmp_path / "no-en", dat)
    with pytest.raises(ConfigError, match=r"none\.dat: Drascula subtitle tables \(drascula\.dat\) not found; "
                                          r"install it with: sudo apt-get install drascula$"):
        read_drascula(voices, tmp_path / "none.dat")


def test_a_corrupt_table_file_is_a_config_error(fake_install: tuple[Path, Path]) -> None:
    voices, dat = fake_install
    dat.write_bytes(dat.read_bytes() + b"junk")
    with pytest.raises(ConfigError, match=r"drascula\.dat: cannot read the subtitle tables \(4 bytes after"):
        read_drascula(voices, dat)


def test_a_short_voice_file_is_a_config_error(fake_install: tuple[Path, Path]) -> None:
    voices, dat = fake_install
    (voices / "1.ALS").write_bytes(b"x" * 40)
    with pytest.raises(ConfigError, match=r"1\.ALS: an \.ALS file needs more than 64 bytes, got 40"):
        read_drascula(voices, dat)
