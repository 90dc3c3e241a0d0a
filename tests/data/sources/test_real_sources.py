"""The out-of-domain sets read from the real Debian packages (skipped where a package is absent)."""

from __future__ import annotations

import re

import pytest
import soundfile as sf

from speechprune.data.normalize import normalize_text
from speechprune.data.sources import POOLED, POOLED_PER_SOURCE, SET_NAMES, SOURCES, source_of, source_utterances
from speechprune.errors import ConfigError

# set -> (utterances, minutes) with the Debian 12 (bookworm) packages and the modules' DROPPED lists
EXPECTED = {
    "drascula": (502, 27.26),
    "warzone2100": (20, 0.99),
    "tuxpaint": (65, 0.85),
    "ktuberling": (71, 1.00),
    "klettres": (39, 1.23),
    "saytime": (37, 0.41),
}
EXPECTED[POOLED] = (352, 10.90)  # at most POOLED_PER_SOURCE (120) of each


def _voices(name: str, local_ids: list[str]) -> set[str]:
    """What the ids tell about speakers: Drascula's voice tables (file prefixes), KLettres' voice folders."""
    if name == "drascula":
        return {re.fullmatch(r"([A-Z]*)\d+", i).group(1) for i in local_ids}
    if name == "klettres":
        return {i.split("/")[0] for i in local_ids}
    return set()


@pytest.mark.integration
@pytest.mark.parametrize("name", SET_NAMES)
def test_real_set(name: str) -> None:
    try:
        utts = source_utterances(name)
    except ConfigError as exc:
        pytest.skip(f"a Debian package for {name} is not installed: {exc}")
    count, minutes = EXPECTED[name]
    assert len(utts) == count
    assert sum(u.duration for u in utts) / 60 == pytest.approx(minutes, abs=0.02)
    ids = [u.id for u in utts]
    assert len(set(ids)) == len(ids)
    for u in utts:
        assert u.language == "en" and u.task == "transcribe", u.id
        assert normalize_text(u.text), u.id
        assert 0.1 < u.duration < 30, u.id  # a word at least, and speech that fits one Whisper window
        assert u.audio.is_file(), u.id
    info = sf.info(str(utts[-1].audio))
    assert info.frames / info.samplerate == pytest.approx(utts[-1].duration, abs=1e-3)
    sources = [source_of(i) for i in ids]
    if name == POOLED:
        assert list(dict.fromkeys(sources)) == list(SOURCES)  # every source, in registry order
        for source, (n, _) in EXPECTED.items():
            if source != POOLED:
                assert sources.count(source) == min(n, POOLED_PER_SOURCE), source
        return
    assert set(sources) == {name}
    local = [i.split("/", 1)[1] for i in ids]
    if name == "drascula":
        assert _voices(name, local) == {"", "B", "BJ", "D", "E", "I", "L", "P", "T", "VB"}
    elif name == "klettres":
        assert _voices(name, local) == {"en", "en_GB"}
        assert SOURCES[name].speakers == 2
