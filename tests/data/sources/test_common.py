"""Shared reader helpers: package checks and the convert-once cache."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.sources.common import converted_wav, fingerprint, require, source_cache, wav_bytes
from speechprune.errors import ConfigError


def test_require_names_the_file_and_the_package(tmp_path: Path) -> None:
    (tmp_path / "there.dat").write_bytes(b"x")
    assert require(tmp_path / "there.dat", "pkg", "a file") == tmp_path / "there.dat"
    assert require(tmp_path, "pkg", "a folder", want_dir=True) == tmp_path
    with pytest.raises(ConfigError) as info:
        require(tmp_path / "missing.dat", "drascula", "Drascula subtitle tables")
    message = str(info.value)
    assert message == (f"{tmp_path / 'missing.dat'}: Drascula subtitle tables not found; "
                       "install it with: sudo apt-get install drascula")
    with pytest.raises(ConfigError, match="apt-get install pkg$"):
        require(tmp_path / "there.dat", "pkg", "a folder", want_dir=True)  # a file is not a folder


def test_wav_bytes_is_16k_mono_pcm16_and_clipped() -> None:
    stereo = np.stack([np.full(11025, 2.0), np.full(11025, -2.0)], axis=1).astype(np.float32)  # 1 s, out of range
    data, rate = sf.read(io.BytesIO(wav_bytes(stereo[:, :1] * 0.25, 11025)), dtype="float32")
    info = sf.info(io.BytesIO(wav_bytes(stereo, 11025)))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert info.frames == pytest.approx(16000, abs=2)
    assert rate == 16000 and np.allclose(data[2000:-2000], 0.5, atol=1e-3)
    clipped, _ = sf.read(io.BytesIO(wav_bytes(stereo[:, :1], 11025)), dtype="float32")
    assert clipped.max() <= 1.0 and clipped[2000:-2000].min() > 0.99  # 2.0 clipped, not wrapped to negative


def test_converted_wav_is_written_once_and_reused(cache: Path) -> None:
    calls = []

    def decode():
        calls.append(1)
        return np.full(8000, 0.25, np.float32), 8000

    folder = source_cache("demo")
    assert folder == cache / "sources" / "demo"
    path, seconds = converted_wav(folder, "a", "0000abcd", decode)
    assert path == folder / "a.0000abcd.wav" and seconds == pytest.approx(1.0)
    mtime = path.stat().st_mtime_ns
    again, seconds2 = converted_wav(folder, "a", "0000abcd", decode)
    assert (again, seconds2, len(calls), again.stat().st_mtime_ns) == (path, seconds, 1, mtime)
    other, _ = converted_wav(folder, "a", "ffff0000", decode)  # changed input -> a new file, never the stale one
    assert other != path and len(calls) == 2
    assert sorted(p.name for p in folder.iterdir()) == ["a.0000abcd.wav", "a.ffff0000.wav"]


def test_a_failed_decode_leaves_no_file(cache: Path) -> None:
    def broken():
        raise ValueError("bad bytes")

    folder = source_cache("demo")
    with pytest.raises(ValueError, match="bad bytes"):
        converted_wav(folder, "b", "00000001", broken)
    assert not folder.exists() or list(folder.iterdir()) == []


def test_fingerprint_is_content_crc() -> None:
    assert fingerprint(b"abc") == "352441c2"
    assert fingerprint(b"abd") != fingerprint(b"abc")
