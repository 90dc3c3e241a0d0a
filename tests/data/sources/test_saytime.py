"""saytime reader: the mu-law decoder and clips built here (headerless 8 kHz mu-law, as the package ships them)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.sources.saytime import decode_ulaw, read_saytime, text_for
from speechprune.errors import ConfigError


def ulaw_bytes(samples: np.ndarray) -> bytes:
    """Headerless mu-law bytes, encoded by libsndfile."""
    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), 8000, format="RAW", subtype="ULAW")
    return buf.getvalue()


def test_decode_ulaw_known_codes() -> None:
    # 0xFF and 0x7F are the two zeros; 0x80 / 0x00 the largest magnitudes (+/-32124 of 32768)
    assert decode_ulaw(bytes([0xFF, 0x7F, 0x80, 0x00])).tolist() == [0.0, 0.0, 32124 / 32768, -32124 / 32768]
    with pytest.raises(ValueError, match="no mu-law samples"):
        decode_ulaw(b"")


def test_decode_ulaw_matches_libsndfile() -> None:
    t = np.arange(800) / 8000
    data = ulaw_bytes(0.5 * np.sin(2 * np.pi * 440 * t))
    ours = decode_ulaw(data)
    theirs, _ = sf.read(io.BytesIO(data), format="RAW", subtype="ULAW", samplerate=8000, channels=1, dtype="float32")
    assert ours.shape == theirs.shape == (800,)
    assert np.array_equal(ours, theirs)
    assert np.abs(ours - 0.5 * np.sin(2 * np.pi * 440 * t)).max() < 0.02  # mu-law keeps ~2 % of full scale


def test_text_for() -> None:
    assert text_for("the_time_is") == "the time is"
    assert text_for("oclock") == "o'clock"
    assert text_for("12") == "12"


def test_fake_clips(tmp_path: Path, cache: Path) -> None:
    for stem, seconds in (("12", 0.5), ("the_time_is", 1.0)):
        (tmp_path / f"{stem}.au").write_bytes(ulaw_bytes(np.full(int(seconds * 8000), 0.1)))
    (tmp_path / "README").write_text("not a clip")
    utts = read_saytime(tmp_path)
    assert [(u.id, u.text) for u in utts] == [("12", "12"), ("the_time_is", "the time is")]
    assert [u.duration for u in utts] == [pytest.approx(0.5), pytest.approx(1.0)]
    assert all(u.audio.parent == cache / "sources" / "saytime" and sf.info(str(u.audio)).samplerate == 16000
               for u in utts)


def test_errors(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match=r"saytime: saytime sounds folder not found; .*apt-get install saytime$"):
        read_saytime(tmp_path / "saytime")
    (tmp_path / "empty.au").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"empty\.au: no mu-law samples"):
        read_saytime(tmp_path)
