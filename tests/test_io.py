"""Atomic writes: a folder is published whole or not at all; bad outputs are refused before any work."""

from __future__ import annotations

import pytest

from speechprune.errors import ConfigError
from speechprune.io import atomic_write_json, check_output_dir, read_jsonl_tolerant, staged_dir


def test_a_staged_folder_replaces_the_old_one_only_when_finished(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not out.exists()  # nothing visible while it is written
    assert (out / "a.txt").read_text() == "one"

    with pytest.raises(RuntimeError):
        with staged_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "a.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left

    with staged_dir(out) as tmp:
        (tmp / "b.txt").write_text("two")
    assert sorted(p.name for p in out.iterdir()) == ["b.txt"]
    assert out.stat().st_mode & 0o777 == 0o755


def test_outputs_are_checked_before_work(tmp_path):
    check_output_dir(tmp_path / "new", overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="file: output exists and is not a folder"):
        check_output_dir(tmp_path / "file", overwrite=True)
    full = tmp_path / "full"
    atomic_write_json(full / "x.json", {"a": 1})
    with pytest.raises(ConfigError, match="not empty"):
        check_output_dir(full, overwrite=False)
    check_output_dir(full, overwrite=True)
    with pytest.raises(ConfigError, match="is the model folder"):
        check_output_dir(full, overwrite=True, source=full)
    assert list(read_jsonl_tolerant(tmp_path / "missing.jsonl")) == []


def test_a_locked_build_makes_the_second_builder_wait_and_find_the_first_result(tmp_path):
    """Two builders of one cache folder (threads here; processes lock the same way): the second enters only after
    the first left, so it sees the finished folder and builds nothing."""
    import threading
    import time

    from speechprune.io import locked

    target, built, order = tmp_path / "cache" / "entry", [], []

    def builder(name):
        with locked(target):
            order.append(f"{name} in")
            if not (target / "done").exists():
                time.sleep(0.3)  # a slow build: the other builder must wait, not start its own
                with staged_dir(target) as tmp:
                    (tmp / "done").write_text(name)
                built.append(name)
            order.append(f"{name} out")

    threads = [threading.Thread(target=builder, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and (target / "done").read_text() == built[0]
    assert [o.split()[1] for o in order] == ["in", "out", "in", "out"]  # never both inside
    assert (tmp_path / "cache" / ".entry.lock").is_file() and not target.with_suffix(".lock").exists()
