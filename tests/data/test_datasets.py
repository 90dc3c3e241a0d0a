"""load_dataset: bundled names, manifest paths, and the errors for everything else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from speechprune.data import BUNDLED_DATASETS, load_dataset
from speechprune.data import asterisk
from speechprune.data.asterisk import asterisk_utterances
from speechprune.errors import ConfigError


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"audio": "a.wav", "text": "hi"}) + "\n", "utf-8")
    return path


def test_bundled_names() -> None:
    assert BUNDLED_DATASETS == ("asterisk", "asterisk-multiword")


def test_manifest_path(manifest: Path) -> None:
    for split in (None, "all"):
        utts = load_dataset(str(manifest), split)
        assert [(u.id, u.audio, u.text) for u in utts] == [("a.wav", manifest.parent / "a.wav", "hi")]


def test_manifest_with_a_split_is_refused(manifest: Path) -> None:
    with pytest.raises(ConfigError, match=r"m\.jsonl: split 'dev' applies to bundled data sets only"):
        load_dataset(str(manifest), "dev")


@pytest.mark.parametrize("spec", ["librispeech", "missing.jsonl"])
def test_unknown_spec_lists_the_bundled_names(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_dataset(spec)
    assert str(info.value) == (
        f"unknown data set {spec!r}: not a bundled name (asterisk, asterisk-multiword) nor an existing manifest file"
    )


@pytest.mark.integration
def test_bundled_sets_default_to_test(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(asterisk.SOUNDS_ENV, raising=False)
    monkeypatch.delenv(asterisk.TEXT_ENV, raising=False)
    try:
        asterisk.sounds_dir(), asterisk.text_file()
    except ConfigError as exc:
        pytest.skip(f"Debian asterisk prompts not installed: {exc}")
    assert load_dataset("asterisk") == asterisk_utterances("test")
    assert load_dataset("asterisk", "dev") == asterisk_utterances("dev")
    assert load_dataset("asterisk-multiword", "all") == asterisk_utterances("all", "multiword")
    assert len(load_dataset("asterisk-multiword")) == 168
    with pytest.raises(ConfigError, match="unknown split 'train'"):
        load_dataset("asterisk", "train")
