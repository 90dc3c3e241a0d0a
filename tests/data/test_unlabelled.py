"""Unlabelled recovery speech: decoders on bytes made here, the resumable cache, balanced sampling on a fake
registry, missing-package errors, and one integration test on the real Debian packages."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import speechprune.data.unlabelled as unlabelled
from speechprune.data.manifest import Utterance, read_manifest
from speechprune.data.unlabelled import (SOURCES, UnlabelledSource, available_sources, balanced_sample,
                                         source_utterances, unlabelled_utterances)
from speechprune.data.unlabelled import cache as cache_mod
from speechprune.data.unlabelled import codec2, hedgewars, megaglest, openarena, queen
from speechprune.data.unlabelled.cache import Clip, build_source, dropped_while_decoding, pause_cuts, source_dir
from speechprune.errors import ConfigError
from speechprune.paths import CACHE_ENV

HAS_MP3 = "MP3" in sf.available_formats()


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(root))
    return root


def tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encoded(seconds: float, rate: int, fmt: str, subtype: str) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, rate), rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# -- queen.1c ----------------------------------------------------------------------------------------

def sb_uncompressed(seconds: float, version: int = 104) -> bytes:
    """A ``.SB`` entry of the uncompressed CD version: header (u16 LE version at byte 2), unsigned 8-bit samples."""
    header = bytearray(queen.SB_HEADER_SIZES[version])
    header[2:4] = struct.pack("<H", version)
    samples = np.round(tone(seconds, queen.SB_RATE) * 127 + 128).astype(np.uint8)
    return bytes(header) + samples.tobytes()


def queen_file(entries: list[tuple[str, bytes]], compression: int, version: bytes = b"CEM10") -> bytes:
    """A rebuilt queen.1c: QTBL header, the table, then each entry's bytes."""
    offset = queen.table_size(len(entries))
    table, blob = b"", b""
    for name, data in entries:
        table += struct.pack(">12sBII", name.encode(), 1, offset + len(blob), len(data))
        blob += data
    head = struct.pack(">4s6s2xB", b"QTBL", version.ljust(6, b"\0"), compression)
    return head + struct.pack(">H", len(entries)) + table + blob


def test_parse_table() -> None:
    data = queen_file([("020006J1.SB", b"abc"), ("88SSSSSS.SB", b"defg"), ("QUEEN.JAS", b"h")], compression=1)
    table = queen.parse_table(data)
    assert table.version == "CEM10" and table.compression == 1
    assert [(e.name, e.bundle, e.size) for e in table.entries] == [("020006J1.SB", 1, 3), ("88SSSSSS.SB", 1, 4),
                                                                   ("QUEEN.JAS", 1, 1)]
    first, second = table.entries[0], table.entries[1]
    assert data[first.offset:first.offset + first.size] == b"abc"
    assert data[second.offset:second.offset + second.size] == b"defg"
    assert [e.name for e in queen.speech_entries(table)] == ["020006J1.SB"]


def test_parse_table_rejects_other_files() -> None:
    with pytest.raises(ValueError, match="no QTBL table"):
        queen.parse_table(b"RIFF" + bytes(40))
    with pytest.raises(ValueError, match="cut short"):
        queen.parse_table(queen_file([("A.SB", b"x"), ("B.SB", b"y")], 1)[:queen.table_size(1)])
    with pytest.raises(ValueError, match="too short"):
        queen.parse_table(b"QTBL")


@pytest.mark.parametrize("name, speech", [
    ("020006J1.SB", True), ("C01A_001.SB", True), ("JOE00012.SB", True), ("03SSSSJ1.SB", True),
    ("88SSSSSS.SB", False), ("1001SSSS.SB", False), ("103ASSSS.SB", False), ("21CSSSSS.SB", False),
    ("ROOM1.PCX", False), ("020006J1", False),
])
def test_speech_names(name: str, speech: bool) -> None:
    assert queen.is_speech_name(name) is speech


def test_decode_uncompressed_sb() -> None:
    for version in (104, 110):
        samples, rate = queen.decode_sb(sb_uncompressed(0.5, version), queen.COMPRESSION_NONE)
        assert rate == 11025 and samples.dtype == np.uint8 and samples.size == round(0.5 * 11025)
    with pytest.raises(ValueError, match="unknown compression 7"):
        queen.decode_sb(b"xxxx", 7)


@pytest.mark.skipif(not HAS_MP3, reason="this libsndfile cannot write MP3")
def test_decode_mp3_sb() -> None:
    samples, rate = queen.decode_sb(encoded(1.0, 11025, "MP3", "MPEG_LAYER_III"), queen.COMPRESSION_MP3)
    assert rate == 11025
    assert samples.shape[0] == pytest.approx(11025, abs=1200)  # MP3 frames pad the end
    assert 0.2 < float(np.abs(samples).max()) < 0.4


def make_queen(tmp_path: Path, compression: int) -> Path:
    if compression == queen.COMPRESSION_MP3:
        clip = lambda s: encoded(s, 11025, "MP3", "MPEG_LAYER_III")  # noqa: E731
    else:
        clip = sb_uncompressed
    path = tmp_path / "queen.1c"
    line = clip(2.0)
    path.write_bytes(queen_file([("020006J1.SB", clip(1.0)), ("88SSSSSS.SB", clip(1.0)), ("C01A_001.SB", line),
                                 ("CINTR001.SB", line), ("JOE00001.SB", clip(0.2)), ("QUEEN.JAS", b"CEM10")],
                                compression))
    return path


@pytest.mark.parametrize("compression", [
    queen.COMPRESSION_NONE,
    pytest.param(queen.COMPRESSION_MP3, marks=pytest.mark.skipif(not HAS_MP3, reason="no MP3 writer")),
])
def test_read_fake_queen(tmp_path: Path, cache: Path, compression: int, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_queen(tmp_path, compression)
    utts = queen.read_queen(path)
    assert [u.id for u in utts] == ["queen/020006J1", "queen/C01A_001"]  # effect, copy and 0.2 s clip left out
    tolerance = 0.15 if compression == queen.COMPRESSION_MP3 else 1e-3
    assert [u.duration for u in utts] == [pytest.approx(1.0, abs=tolerance), pytest.approx(2.0, abs=tolerance)]
    for u in utts:
        assert u.text == "" and u.language == "en"
        assert u.audio.parent == cache / "unlabelled" / "queen" / "wavs"
        info = sf.info(str(u.audio))
        assert (info.samplerate, info.channels) == (16000, 1)
    assert dropped_while_decoding("queen") == {"queen/JOE00001": "shorter than 0.5 s (0.20 s)"}
    # a rerun reads the manifest and decodes nothing
    monkeypatch.setattr(queen, "decode_sb", lambda *a: pytest.fail("decoded again"))
    assert queen.read_queen(path) == utts
    monkeypatch.setattr(queen, "NOT_SPEECH", frozenset({"C01A_001"}))
    assert [u.id for u in queen.read_queen(path)] == ["queen/020006J1"]


def test_queen_other_language(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "queen.1c"
    path.write_bytes(queen_file([("020006J1.SB", sb_uncompressed(1.0))], 0, version=b"CGM10"))
    with pytest.raises(ConfigError, match=r"'CGM10' is not the English talkie"):
        queen.read_queen(path)


# -- the other decoders and readers ---------------------------------------------------------------------------

def test_decode_raw_s16() -> None:
    samples, rate = codec2.decode_raw_s16(struct.pack("<3h", 0, -32768, 32767) + b"\x01")
    assert rate == 8000 and samples.tolist() == [0, -32768, 32767]
    x = cache_mod.to_16k(samples, 16000)
    assert x.dtype == np.float32 and x.tolist() == pytest.approx([0.0, -1.0, 32767 / 32768])


def test_to_16k_mixes_and_resamples() -> None:
    stereo = np.stack([tone(1.0, 44100), -tone(1.0, 44100)], axis=1)
    assert np.abs(cache_mod.to_16k(stereo, 44100)).max() < 1e-6  # opposite channels cancel
    assert cache_mod.to_16k(tone(1.0, 11025), 11025).size == 16000
    u8 = np.array([0, 128, 255], dtype=np.uint8)
    assert cache_mod.to_16k(u8, 16000).tolist() == pytest.approx([-1.0, 0.0, 127 / 128])


def test_read_fake_codec2(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "codec2"
    for rel in codec2.RECORDINGS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".raw"):
            (root / rel).write_bytes((tone(1.0, 8000) * 32767).astype("<i2").tobytes())
        else:
            sf.write(root / rel, tone(1.0, 16000), 16000)
    # one long recording with pauses: cut into pieces of at most 20 s
    long = np.concatenate([np.concatenate([tone(9.0, 8000), np.zeros(8000, np.float32)]) for _ in range(5)])
    (root / "raw/ve9qrp.raw").write_bytes((long * 32767).astype("<i2").tobytes())
    utts = codec2.read_codec2(root)
    pieces = [u for u in utts if u.id.startswith("codec2/ve9qrp/")]
    assert [u.id for u in pieces] == ["codec2/ve9qrp/000", "codec2/ve9qrp/001", "codec2/ve9qrp/002"]
    assert sum(u.duration for u in pieces) == pytest.approx(50.0, abs=1e-3)
    assert all(u.duration <= 20.0 for u in pieces)
    assert len(utts) == len(codec2.RECORDINGS) - 1 + 3


def test_read_fake_hedgewars(tmp_path: Path, cache: Path) -> None:
    voices = tmp_path / "voices"
    ow = encoded(0.3, 44100, "OGG", "VORBIS")
    for pack in ("Default", "Pirate", "Default_es"):
        (voices / pack).mkdir(parents=True)
        (voices / pack / "Incoming.ogg").write_bytes(encoded(1.0, 44100, "OGG", "VORBIS"))
        (voices / pack / "Ow1.ogg").write_bytes(ow)
    (voices / "Pirate" / "Incoming.ogg").write_bytes(encoded(1.2, 44100, "OGG", "VORBIS"))
    (voices / "Pirate" / "Hello.ogg").write_bytes((voices / "Default" / "Incoming.ogg").read_bytes())  # a copy
    assert [u.id for u in hedgewars.read_hedgewars(voices)] == ["hedgewars/Default/Incoming",
                                                                 "hedgewars/Pirate/Incoming"]
    assert set(dropped_while_decoding("hedgewars")) == {"hedgewars/Default/Ow1"}  # Pirate's is Default's copy


def test_megaglest_voice_files(tmp_path: Path, cache: Path) -> None:
    units = tmp_path / "factions" / "magic" / "units"
    freq = iter(range(200, 2000, 50))  # every file written here differs from the others
    units_files = {
        "initiate": ["initiate_ack1", "initiate_select2", "initiate_attack3", "initiate_die1", "knife1"],
        "summoner": ["initiate_ack1", "summoner_ack1"],  # a shared file name, another recording
        "summoner_berserk": ["summoner_ack1"],  # played backwards
        "dragon": ["dragon_ack1"],  # a creature
    }
    for unit, names in units_files.items():
        (units / unit / "sounds").mkdir(parents=True)
        for name in names:
            sf.write(units / unit / "sounds" / f"{name}.wav", tone(1.0, 22050, freq=next(freq)), 22050)
    ids = [u.id for u in megaglest.read_megaglest(tmp_path / "factions")]
    assert ids == ["megaglest/magic/initiate/initiate_ack1", "megaglest/magic/initiate/initiate_select2",
                   "megaglest/magic/summoner/initiate_ack1", "megaglest/magic/summoner/summoner_ack1"]
    # the same bytes under another unit are read once
    shutil.copy(units / "initiate" / "sounds" / "initiate_select2.wav",
                units / "summoner" / "sounds" / "summoner_ack1.wav")
    assert [u.id for u in megaglest.read_megaglest(tmp_path / "factions")] == ids[:3]  # new inputs: built again


def test_read_fake_openarena(tmp_path: Path, cache: Path) -> None:
    misc, data = tmp_path / "pak6-misc.pk3", tmp_path / "mp-pak0.pk3"
    with zipfile.ZipFile(misc, "w") as zf:
        zf.writestr("sound/feedback/prepare.wav", encoded(1.0, 22050, "WAV", "PCM_16"))
        zf.writestr("sound/feedback/sub/x.wav", encoded(1.0, 22050, "WAV", "PCM_16"))
        zf.writestr("sound/items/doubler.wav", encoded(1.0, 22050, "WAV", "PCM_16"))
    with zipfile.ZipFile(data, "w") as zf:
        zf.writestr("sound/voices/rott/coverme.ogg", encoded(1.0, 22050, "OGG", "VORBIS"))
        zf.writestr("sound/voices/rott/credit", "RottKing")
        zf.writestr("sound/voices/festivoxmale/coverme.ogg", encoded(1.0, 22050, "OGG", "VORBIS"))
    ids = [u.id for u in openarena.read_openarena(misc, data)]
    assert ids == ["openarena/feedback/prepare", "openarena/rott/coverme"]


@pytest.mark.parametrize("call, path, package", [
    (lambda p: queen.read_queen(p / "queen.1c"), "queen.1c", "flight-of-the-amazon-queen"),
    (lambda p: hedgewars.read_hedgewars(p / "voices"), "voices/Default", "hedgewars-data"),
    (lambda p: megaglest.read_megaglest(p / "factions"), "factions", "megaglest-data"),
    (lambda p: openarena.read_openarena(p / "a.pk3", p / "b.pk3"), "a.pk3", "openarena-081-misc"),
    (lambda p: codec2.read_codec2(p), "raw/big_dog.raw", "codec2-examples"),
])
def test_missing_package_is_a_one_line_error(tmp_path: Path, cache: Path, call, path: str, package: str) -> None:
    with pytest.raises(ConfigError) as info:
        call(tmp_path)
    assert str(info.value) == f"{tmp_path / path}: not found; install it with: sudo apt-get install {package}"


# -- the cache: pauses, resuming, rebuilding --------------------------------------------------------------------

def test_pause_cuts_fall_in_pauses() -> None:
    rate = 1000
    speech = lambda s: np.full(int(s * rate), 0.5, np.float32)  # noqa: E731
    x = np.concatenate([speech(7), np.zeros(500, np.float32), speech(12), np.zeros(500, np.float32), speech(9)])
    cuts = pause_cuts(x, rate, max_seconds=15, min_seconds=4)
    assert cuts[0][0] == 0 and cuts[-1][1] == x.size
    assert all(a[1] == b[0] for a, b in zip(cuts, cuts[1:]))
    assert len(cuts) == 3
    assert 7.0 * rate <= cuts[1][0] <= 7.5 * rate and 19.5 * rate <= cuts[2][0] <= 20.0 * rate  # in the pauses
    # no pause at all: cut at the limit, every piece short enough
    flat = speech(50)
    assert all(b - a <= 15 * rate for a, b in pause_cuts(flat, rate, 15, 4))
    assert pause_cuts(speech(3), rate, 15, 4) == [(0, 3 * rate)]
    with pytest.raises(ValueError):
        pause_cuts(flat, rate, 4, 15)


class Stop(Exception):
    """Stands for a build killed half-way."""


def clips_for(durations: dict[str, float], calls: list[str], fail_at: str | None = None):
    def make(name: str, seconds: float) -> Clip:
        def decode():
            calls.append(name)
            if name == fail_at:
                raise Stop
            if seconds < 0:
                raise RuntimeError("Error : corrupt stream")
            return tone(seconds, 8000) if seconds else np.zeros(8000, np.float32), 8000
        return Clip(name, decode)

    return lambda: [make(k, v) for k, v in durations.items()]


def test_build_resumes_after_a_kill_and_then_reuses(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"package")
    durations = {"a": 1.0, "b": 2.0, "c": 0.0, "d": -1.0, "e": 45.0, "f": 1.5}
    calls: list[str] = []
    with pytest.raises(Stop):
        build_source("fake", 1, [src], clips_for(durations, calls, fail_at="f"))
    assert not (source_dir("fake") / "complete.json").exists()
    calls.clear()
    utts = build_source("fake", 1, [src], clips_for(durations, calls))
    assert calls == ["e", "f"]  # done clips are skipped; the long recording's pieces are checked again
    assert [u.id for u in utts] == ["fake/a", "fake/b", "fake/e/000", "fake/e/001", "fake/e/002", "fake/f"]
    assert sum(u.duration for u in utts if u.id.startswith("fake/e/")) == pytest.approx(45.0, abs=1e-3)
    assert dropped_while_decoding("fake") == {"fake/c": "silent (peak 0.0e+00)",
                                              "fake/d": "cannot decode (Error : corrupt stream)"}
    assert read_manifest(source_dir("fake") / "manifest.jsonl") == utts
    calls.clear()
    assert build_source("fake", 1, [src], clips_for(durations, calls)) == utts and calls == []
    # other rules or another package version: built again from scratch
    build_source("fake", 2, [src], clips_for(durations, calls))
    assert calls == list(durations)
    calls.clear()
    src.write_bytes(b"package, version 2")
    assert [u.id for u in build_source("fake", 2, [src], clips_for({"z": 1.0}, calls))] == ["fake/z"]


def test_build_survives_a_torn_manifest_line(tmp_path: Path, cache: Path) -> None:
    src = tmp_path / "in.bin"
    src.write_bytes(b"x")
    calls: list[str] = []
    with pytest.raises(Stop):
        build_source("fake", 1, [src], clips_for({"a": 1.0, "b": 1.0}, calls, fail_at="b"))
    with open(source_dir("fake") / "manifest.jsonl", "a") as f:
        f.write('{"id": "fake/b", "aud')  # killed while appending
    utts = build_source("fake", 1, [src], clips_for({"a": 1.0, "b": 1.0}, calls))
    assert [u.id for u in utts] == ["fake/a", "fake/b"]


# -- sampling over a fake registry ---------------------------------------------------------------------------

def fake_utts(name: str, durations: list[float]) -> list[Utterance]:
    return [Utterance(id=f"{name}/{i:03d}", audio=Path(f"/x/{name}/{i}.wav"), text="", language="en", duration=d)
            for i, d in enumerate(durations)]


@pytest.fixture
def fake_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Three installed sources (10, 3 and 50 clips in 0.5-30 s, plus some outside it) and one not installed."""
    files = {name: tmp_path / f"{name}.pkg" for name in ("big", "tiny", "huge", "absent")}
    for name in ("big", "tiny", "huge"):
        files[name].write_bytes(b"")
    pools = {"big": [1.0] * 10 + [0.3, 31.0], "tiny": [0.5, 30.0, 2.0, 0.49], "huge": [5.0] * 50, "absent": [1.0]}
    registry = {
        name: UnlabelledSource(name=name, packages=(f"pkg-{name}",), needs=((files[name], f"pkg-{name}"),),
                               licence="x", description="x", speakers=1, speakers_counted="x",
                               reader=lambda name=name: fake_utts(name, pools[name]))
        for name in ("big", "tiny", "absent", "huge")
    }
    monkeypatch.setattr(unlabelled, "SOURCES", registry)
    return files


def source(u: Utterance) -> str:
    return u.id.split("/", 1)[0]


def test_sampling_is_balanced(fake_registry) -> None:
    assert available_sources() == ["big", "tiny", "huge"]
    picked = unlabelled_utterances(9, seed=3)
    assert [source(u) for u in picked] == ["big", "tiny", "huge"] * 3
    everything = unlabelled_utterances(100, seed=3)
    assert len(everything) == 10 + 3 + 50  # all in-window clips; none outside 0.5-30 s
    assert all(0.5 <= u.duration <= 30.0 for u in everything)
    assert len({u.id for u in everything}) == len(everything)
    counts = {name: sum(source(u) == name for u in everything[:27]) for name in ("big", "tiny", "huge")}
    assert counts == {"big": 10, "tiny": 3, "huge": 14}  # tiny runs out, then big: the others take turns


def test_sampling_is_deterministic(fake_registry) -> None:
    first = unlabelled_utterances(30, seed=0)
    assert unlabelled_utterances(30, seed=0) == first
    assert unlabelled_utterances(12, seed=0) == first[:12]  # a smaller n gives a prefix
    other = unlabelled_utterances(30, seed=1)
    assert other != first and sorted(u.id for u in other[:9]) != sorted(u.id for u in first[:9])
    assert unlabelled_utterances(0) == []


def test_balanced_sample_shuffles_within_a_source() -> None:
    pools = {"a": fake_utts("a", [1.0] * 20)}
    ids = [u.id for u in balanced_sample(pools, 20, seed=0)]
    assert sorted(ids) == [u.id for u in pools["a"]] and ids != sorted(ids)
    assert [u.id for u in balanced_sample({"a": list(reversed(pools["a"]))}, 20, seed=0)] == ids  # input order


def test_sampling_with_named_sources(fake_registry) -> None:
    assert {source(u) for u in unlabelled_utterances(20, sources=["tiny", "huge"])} == {"tiny", "huge"}
    with pytest.raises(ConfigError, match=r"absent\.pkg: not found; install it with: sudo apt-get install pkg-absent$"):
        unlabelled_utterances(5, sources=["absent"])
    with pytest.raises(ConfigError, match="unknown unlabelled source 'nope'"):
        unlabelled_utterances(5, sources=["nope"])
    for bad in ({"n": -1}, {"n": 2, "seed": -1}, {"n": 1.5}):
        with pytest.raises(ConfigError):
            unlabelled_utterances(**bad)


def test_no_source_installed(fake_registry) -> None:
    for name in ("big", "tiny", "huge"):
        fake_registry[name].unlink()
    with pytest.raises(ConfigError) as info:
        unlabelled_utterances(5)
    message = str(info.value)
    assert "\n" not in message and message.startswith("no unlabelled speech source is installed (missing ")
    assert str(fake_registry["big"]) in message
    assert message.endswith("install them with: sudo apt-get install pkg-big pkg-tiny pkg-absent pkg-huge")


def test_registry_does_not_read_evaluation_packages() -> None:
    evaluation = {"drascula", "scummvm-data", "warzone2100-data", "klettres-data", "ktuberling-data",
                  "tuxpaint-stamps-default", "saytime", "beneath-a-steel-sky", "asterisk-core-sounds-en",
                  "asterisk-core-sounds-en-wav"}
    assert list(SOURCES) == ["queen", "hedgewars", "megaglest", "openarena", "codec2"]
    for s in SOURCES.values():
        assert not evaluation & set(s.packages), s.name
        assert {pkg for _, pkg in s.needs} <= set(s.packages) and s.speakers >= 1 and s.licence


# -- the real packages ---------------------------------------------------------------------------------------

# source -> (clips kept, minutes), with Debian 12 (bookworm) packages and the modules' NOT_SPEECH lists
EXPECTED = {
    "queen": (6518, 271.03),
    "hedgewars": (379, 8.30),
    "megaglest": (270, 4.43),
    "openarena": (77, 1.64),
    "codec2": (22, 2.86),
}


@pytest.mark.integration
def test_real_sources() -> None:
    installed = available_sources()
    if not installed:
        pytest.skip("no unlabelled-speech Debian package installed")
    for name in installed:
        utts = source_utterances(name)
        count, minutes = EXPECTED[name]
        assert (len(utts), round(sum(u.duration for u in utts) / 60, 2)) == (count, pytest.approx(minutes, abs=0.01))
        assert len({u.id for u in utts}) == len(utts)
        every_id = {json.loads(line)["id"].split("/", 1)[1]
                    for line in (source_dir(name) / "manifest.jsonl").read_text().splitlines()}
        assert getattr(unlabelled, name).NOT_SPEECH <= every_id, "NOT_SPEECH names clips that do not exist"
        first = sf.info(str(utts[0].audio))
        assert (first.samplerate, first.channels) == (16000, 1)
        assert first.frames / 16000 == pytest.approx(utts[0].duration, abs=1e-3)
    picked = unlabelled_utterances(10 * len(installed), seed=0)
    assert len(picked) == 10 * len(installed)
    assert {name: sum(source(u) == name for u in picked) for name in installed} == {n: 10 for n in installed}
    assert all(0.5 <= u.duration <= 30.0 and u.audio.is_file() for u in picked)
