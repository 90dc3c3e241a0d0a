"""Tux Paint reader on a stamps tree built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.sources import tuxpaint
from speechprune.data.sources.tuxpaint import read_tuxpaint, spoken_name
from speechprune.errors import ConfigError


def _clip(path: Path, seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(seconds * 22050), np.float32), 22050, format="OGG", subtype="VORBIS")


def test_spoken_name() -> None:
    assert spoken_name("crow") == "crow"
    assert spoken_name("mountaingoat") == "mountain goat"
    assert spoken_name("wild_boar") == "wild boar"
    assert spoken_name("frog-1") == "frog 1"


def test_fake_stamps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stamps = tmp_path / "stamps"
    _clip(stamps / "animals/birds/crow_desc.ogg", 1.0)
    (stamps / "animals/birds/crow.txt").write_text("A crow.\nfr.utf8=Un corbeau.\n", "utf-8")  # not the reference
    _clip(stamps / "animals/birds/crow_desc_fr.ogg", 1.0)  # another language: not read
    _clip(stamps / "animals/mountaingoat_desc.ogg", 0.5)
    _clip(stamps / "animals/birds/nandou_desc.ogg", 0.5)
    monkeypatch.setattr(tuxpaint, "DROPPED", {"animals/birds/nandou": "French name"})
    utts = read_tuxpaint(stamps)
    assert [(u.id, u.text) for u in utts] == [("animals/birds/crow", "crow"), ("animals/mountaingoat", "mountain goat")]
    assert utts[0].audio == stamps / "animals/birds/crow_desc.ogg"
    assert utts[0].duration == pytest.approx(1.0) and utts[1].duration == pytest.approx(0.5)


def test_missing_package(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"stamps: .*apt-get install tuxpaint-stamps-default$"):
        read_tuxpaint(tmp_path / "stamps")
