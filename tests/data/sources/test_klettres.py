"""KLettres reader on a sounds tree built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.sources.klettres import read_klettres, text_for
from speechprune.errors import ConfigError


def test_text_for() -> None:
    assert text_for("BALL") == "ball"
    assert text_for("dog") == "dog"
    assert text_for("th") is None and text_for("CH") is None and text_for("aw") is None


def test_fake_tree(tmp_path: Path) -> None:
    for rel in ("en/alpha/A.ogg", "en/syllab/dog.ogg", "en/syllab/th.ogg", "en_GB/alpha/b.ogg", "en_GB/syllab/ball.ogg",
                "fr/syllab/chat.ogg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / rel, np.zeros(8000, np.float32), 16000, format="OGG")
    utts = read_klettres(tmp_path)  # letters, sounds and other languages are not read
    assert [(u.id, u.text) for u in utts] == [("en/dog", "dog"), ("en_GB/ball", "ball")]
    assert all(u.duration == pytest.approx(0.5) for u in utts)


def test_missing_package(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"klettres/en/syllab: KLettres en words folder not found; "
                                          r".*apt-get install klettres-data$"):
        read_klettres(tmp_path / "klettres")
