"""Atomic, incremental file writes: a killed run never leaves a half-written file behind."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from speechprune.errors import ConfigError, ModelError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a file or folder that may not exist yet) for the block: a lock file
    ``.<name>.lock`` beside it, so the folder itself can still be replaced. Two processes that build the same cache
    entry (test workers, sweep workers, two jobs) take turns: the second finds the first's result instead of
    building it again or writing into it at the same time."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def replace_dir(new: str | Path, out: str | Path) -> None:
    """Publish the finished folder ``new`` as ``out`` by rename; an existing ``out`` is moved aside first, then
    removed (a folder cannot be renamed over a non-empty one)."""
    new, out = Path(new), Path(out)
    if out.is_dir():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(new, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, out)


def check_output_dir(out: str | Path, overwrite: bool, source: str | Path | None = None) -> None:
    """Refuse, before any work, an output that is a file, the ``source`` folder itself, or a non-empty folder
    (unless ``overwrite``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError("output exists and is not a folder", out)
    if source is not None and out.resolve() == Path(source).resolve():
        raise ConfigError("output folder is the model folder", out)
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError("output folder exists and is not empty (pass overwrite to replace it)", out)


@contextmanager
def staged_dir(out: str | Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` to fill. When the block ends, its files are synced to disk and it replaces
    ``out`` by rename, so readers see the old folder or the finished new one, never half of one; on an error it is
    removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path, missing: str = "file is missing", where: str | Path | None = None) -> Any:
    """The JSON in ``path``, or a one-line ``ModelError``: ``missing`` (naming ``where``, default the file) when there
    is no such file, "cannot read JSON" when it is unreadable or malformed."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(missing, where or path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read JSON ({type(e).__name__})", path) from None


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record as a line and flush it to disk, so a killed run keeps every finished record."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path: str | Path) -> Iterator[dict]:
    """Read records from a JSONL file written by :func:`append_jsonl`.

    A run killed mid-write can leave a truncated last line; it is dropped (the record is recomputed on resume).
    """
    path = Path(path)
    if not path.exists():
        return
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for raw in lines:
        if not raw.strip():
            continue
        try:
            yield json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue


def tree_size_bytes(paths: Iterable[str | Path]) -> int:
    total = 0
    for p in paths:
        p = Path(p)
        if p.is_file():
            total += p.stat().st_size
        elif p.is_dir():
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def repair_jsonl(path: str | Path) -> None:
    """Cut a truncated last line (left by a killed writer) so the next :func:`append_jsonl` starts clean."""
    path = Path(path)
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
