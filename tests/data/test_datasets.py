"""load_dataset: bundled names, manifest paths, and the errors for everything else; evaluation-only sets."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from speechprune.data import BUNDLED_DATASETS, EVALUATION_ONLY, load_dataset, source_of
from speechprune.data import asterisk
from speechprune.data.asterisk import asterisk_utterances
from speechprune.data.datasets import MULTILINGUAL, parse_training_spec, training_utterances
from speechprune.data.manifest import Utterance
from speechprune.data.sources import POOLED, SOURCES
from speechprune.errors import ConfigError


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"audio": "a.wav", "text": "hi"}) + "\n", "utf-8")
    return path


def test_bundled_names() -> None:
    # the in-domain set first, the multilingual sets, then one evaluation-only set per registered source, then the
    # pooled one
    assert BUNDLED_DATASETS[:2] == ("asterisk", "asterisk-multiword")
    assert BUNDLED_DATASETS[2 : 2 + len(MULTILINGUAL)] == tuple(MULTILINGUAL)
    assert BUNDLED_DATASETS[2 + len(MULTILINGUAL) :] == EVALUATION_ONLY == (*SOURCES, POOLED)
    assert len(set(BUNDLED_DATASETS)) == len(BUNDLED_DATASETS)
    assert {"drascula", "english-ood"} <= set(BUNDLED_DATASETS)


@pytest.fixture
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every source reads two utterances of its own, without touching Debian files."""
    for name in list(SOURCES):
        def reader(name: str = name) -> list[Utterance]:
            return [Utterance(id=f"u{i}", audio=Path(f"/x/{name}/{i}.wav"), text="hello", language="en",
                              task="transcribe", duration=1.0) for i in range(2)]
        monkeypatch.setitem(SOURCES, name, dataclasses.replace(SOURCES[name], reader=reader))


@pytest.mark.parametrize("split", [None, "all", "test"])
def test_evaluation_only_sets_are_used_whole(fake_sources: None, split: str | None) -> None:
    assert [u.id for u in load_dataset("drascula", split)] == ["drascula/u0", "drascula/u1"]
    pooled = load_dataset("english-ood", split)
    assert len(pooled) == 2 * len(SOURCES)
    assert sorted({source_of(u.id) for u in pooled}) == sorted(SOURCES)


@pytest.mark.parametrize("name", ["drascula", "english-ood"])
@pytest.mark.parametrize("split", ["dev", "train"])
def test_evaluation_only_sets_have_no_other_split(fake_sources: None, name: str, split: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_dataset(name, split)
    assert str(info.value) == (f"{name!r} is an evaluation-only set used whole: split {split!r} does not exist "
                               "(use test or all, which are the same)")


@pytest.mark.parametrize("name", EVALUATION_ONLY)
@pytest.mark.parametrize("suffix", ["", ":dev", ":test", ":all"])
def test_evaluation_only_sets_are_never_training_data(name: str, suffix: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError) as info:
        parse_training_spec(name + suffix)
    assert str(info.value) == (f"{name + suffix!r}: {name} is an evaluation-only set (out-of-domain English); "
                               "it is never calibration or training data")
    with pytest.raises(ConfigError, match="evaluation-only"):
        training_utterances(["synth:4", name + suffix])  # refused before anything is synthesized
    assert not (tmp_path / "cache").exists()


def test_asterisk_is_still_training_data_on_dev() -> None:
    assert parse_training_spec("asterisk").split == "dev"
    with pytest.raises(ConfigError, match="may read the test split"):
        parse_training_spec("asterisk:test")


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
        f"unknown data set {spec!r}: not a bundled name (asterisk, asterisk-multiword, {', '.join(MULTILINGUAL)}, "
        f"{', '.join(EVALUATION_ONLY)}) "
        "nor an existing manifest file"
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


def test_training_sets_can_be_interleaved_so_none_fills_the_limit_alone(manifest, tmp_path):
    from speechprune.data.datasets import interleaved, training_utterances

    other = tmp_path / "o.jsonl"
    other.write_text("".join(json.dumps({"audio": f"o{i}.wav", "text": "x"}) + "\n" for i in range(3)), "utf-8")
    assert [u.id for u in training_utterances([str(other), str(manifest)], 2)] == ["o0.wav", "o1.wav"]
    assert [u.id for u in training_utterances([str(other), str(manifest)], 2, interleave=True)] == ["o0.wav", "a.wav"]
    assert interleaved([[1, 2, 3], [4], []]) == [1, 4, 2, 3]
