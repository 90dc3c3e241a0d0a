"""Warzone 2100 reader: the tutorial.js parser and a tiny base.wz zip built here."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.sources import warzone2100
from speechprune.data.audio import decode_bytes as decode_ogg
from speechprune.data.sources.warzone2100 import parse_tutorial_messages, read_warzone2100
from speechprune.errors import ConfigError

SCRIPT = r'''
function setUpConsoleAndAudioVar()
{
	consoleVar = [
		{"audio": "tut1.ogg", "clear": false, "message": _("In this training session you'll learn"), "state": 0, "wait": 1},
		{"audio": "tut6.ogg", "clear": false, "message": undefined, "state": 2, "wait": 2},
		{"audio": "tut10.ogg", "clear": true, "message": _("Left click the \"BUILD\" icon"), "state": 5, "func": "f"},
		{"audio": "tut12.ogg", "clear": false, "message": _('single quotes are not used'), "state": 7},
	];
}
'''


def ogg_bytes(seconds: float, rate: int = 11025) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate, format="OGG", subtype="VORBIS")
    return buf.getvalue()


def test_parse_tutorial_messages() -> None:
    assert parse_tutorial_messages(SCRIPT) == {
        "tut1.ogg": "In this training session you'll learn",
        "tut10.ogg": 'Left click the "BUILD" icon',
    }
    assert parse_tutorial_messages(r'{"audio": "a.ogg", "message": _("it\'s")}') == {"a.ogg": "it's"}


def test_decode_ogg() -> None:
    samples, rate = decode_ogg(ogg_bytes(0.5))
    assert rate == 11025 and samples.shape[1] == 1
    assert samples.shape[0] == pytest.approx(5512, abs=2)


@pytest.fixture
def archive(tmp_path: Path, cache: Path) -> Path:
    path = tmp_path / "base.wz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("script/tutorial.js", SCRIPT)
        for name, seconds in (("tut1", 1.0), ("tut6", 0.5), ("tut10", 2.0), ("tut11", 0.5)):
            zf.writestr(f"audio/tutorial/{name}.ogg", ogg_bytes(seconds))
    return path


def test_fake_archive(archive: Path, cache: Path) -> None:
    utts = read_warzone2100(archive)
    assert [(u.id, u.text) for u in utts] == [("tut1", "In this training session you'll learn"),
                                             ("tut10", "Left click the BUILD icon")]
    assert [u.duration for u in utts] == [pytest.approx(1.0, abs=1e-3), pytest.approx(2.0, abs=1e-3)]
    for u in utts:
        assert u.audio.parent == cache / "sources" / "warzone2100"
        assert sf.info(str(u.audio)).samplerate == 16000
    warzone2100._read.cache_clear()
    assert read_warzone2100(archive) == utts  # reused from the cache


def test_dropped_lines_are_left_out(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warzone2100, "DROPPED", {"tut1": "the clip holds half the line"})
    assert [u.id for u in read_warzone2100(archive)] == ["tut10"]


def test_errors(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(ConfigError, match=r"base\.wz: Warzone 2100 base data \(base\.wz\) not found; "
                                          r"install it with: sudo apt-get install warzone2100-data$"):
        read_warzone2100(tmp_path / "base.wz")
    no_script = tmp_path / "a.wz"
    with zipfile.ZipFile(no_script, "w") as zf:
        zf.writestr("audio/tutorial/tut1.ogg", ogg_bytes(0.2))
    with pytest.raises(ConfigError, match="no script/tutorial.js in the archive"):
        read_warzone2100(no_script)
    no_clip = tmp_path / "b.wz"
    with zipfile.ZipFile(no_clip, "w") as zf:
        zf.writestr("script/tutorial.js", SCRIPT)
    with pytest.raises(ConfigError, match="names tut1.ogg, which is not in audio/tutorial/"):
        read_warzone2100(no_clip)
    not_zip = tmp_path / "c.wz"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="cannot open the archive"):
        read_warzone2100(not_zip)
