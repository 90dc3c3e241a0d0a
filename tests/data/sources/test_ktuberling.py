"""KTuberling reader on a sound theme built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.sources import ktuberling
from speechprune.data.sources.ktuberling import parse_sound_theme, read_ktuberling, spoken_name
from speechprune.errors import ConfigError

THEME = """<language code="en">
    <sound name="ball" file="en/ball.ogg" />
    <sound name="egypt_palmtree" file="en/egypt_palmtree.ogg" />
    <sound name="moon_ufo" file="en/moon_ufo.ogg" />
</language>
"""


def test_parse_sound_theme() -> None:
    assert parse_sound_theme(THEME) == {"ball": "en/ball.ogg", "egypt_palmtree": "en/egypt_palmtree.ogg",
                                        "moon_ufo": "en/moon_ufo.ogg"}
    with pytest.raises(ValueError, match="not a sound theme"):
        parse_sound_theme("<language>")


def test_spoken_name() -> None:
    assert spoken_name("ball") == "ball"
    assert spoken_name("pizzeria_brocolli") == "broccoli"
    assert spoken_name("egypt_palmtree") == "palm tree"
    assert spoken_name("pizzeria_olive") == "olive"
    assert spoken_name("tv_car") == "car"


def test_fake_theme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "en").mkdir()
    (tmp_path / "en.soundtheme").write_text(THEME, "utf-8")
    for name in ("ball", "egypt_palmtree", "moon_ufo"):
        sf.write(tmp_path / "en" / f"{name}.ogg", np.zeros(4410, np.float32), 22050, format="OGG")
    monkeypatch.setattr(ktuberling, "DROPPED", {"moon_ufo": "spelled out"})
    utts = read_ktuberling(tmp_path)
    assert [(u.id, u.text) for u in utts] == [("ball", "ball"), ("egypt_palmtree", "palm tree")]
    assert utts[0].duration == pytest.approx(0.2)
    assert utts[1].audio == tmp_path / "en" / "egypt_palmtree.ogg"


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"en\.soundtheme: .*apt-get install ktuberling-data$"):
        read_ktuberling(tmp_path)
    (tmp_path / "en.soundtheme").write_text(THEME, "utf-8")
    with pytest.raises(ConfigError, match="names en/ball.ogg, which is missing"):
        read_ktuberling(tmp_path)
