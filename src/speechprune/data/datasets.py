"""Resolve a data set spec: a bundled name (``asterisk``, ``asterisk-multiword``) or a ``.jsonl`` manifest path."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from speechprune.data.asterisk import SPLITS, asterisk_utterances
from speechprune.data.manifest import Utterance, read_manifest
from speechprune.errors import ConfigError
from speechprune.paths import cache_dir

# bundled name -> subset of the Asterisk prompts
_BUNDLED_SUBSETS = {"asterisk": "all", "asterisk-multiword": "multiword"}
BUNDLED_DATASETS: tuple[str, ...] = tuple(_BUNDLED_SUBSETS)
DEFAULT_SPLIT = "test"
# synthetic training speech made on first use in the cache: name -> telephone-band augmentation
SYNTHETIC_SETS = {"synth": False, "synth-telephone": True}


def load_dataset(spec: str, split: str | None = None) -> list[Utterance]:
    """Utterances of a bundled set (``split`` in dev/test/all, default test) or of a manifest file (``split`` None or "all")."""
    if spec in _BUNDLED_SUBSETS:
        return asterisk_utterances(split or DEFAULT_SPLIT, _BUNDLED_SUBSETS[spec])
    if not Path(spec).is_file():
        raise ConfigError(
            f"unknown data set {spec!r}: not a bundled name ({', '.join(BUNDLED_DATASETS)}) nor an existing manifest file"
        )
    if split not in (None, "all"):
        raise ConfigError(
            f"split {split!r} applies to bundled data sets only ({', '.join(SPLITS)}); a manifest is used whole", spec
        )
    return read_manifest(spec)


def synthetic_utterances(name: str, n: int, workers: int | None = None, progress: bool = True) -> list[Utterance]:
    """The first ``n`` utterances of the synthetic training set ``name`` (see ``SYNTHETIC_SETS``): offline TTS of
    Debian text corpora (seed 0, every engine in turn), made on first use under the cache and extended when more
    are asked for. Never evaluation data: the sentences come from text corpora, not from the asterisk prompts."""
    import os

    from speechprune.data.synth import synthesize

    if name not in SYNTHETIC_SETS:
        raise ConfigError(f"unknown synthetic set {name!r}; choose from {', '.join(SYNTHETIC_SETS)}")
    if n < 1:
        raise ConfigError(f"{name}: ask for at least one utterance, got {n}")
    manifest = synthesize(cache_dir() / "synth" / name, n, telephone=SYNTHETIC_SETS[name],
                          workers=workers or os.cpu_count() or 1, progress=progress)
    return read_manifest(manifest)[:n]


@dataclass(frozen=True)
class TrainingSpec:
    """A parsed ``name[:split]`` training-data spec: a bundled set's dev split, ``N`` synthetic clips, or a manifest."""

    kind: str  # "bundled" | "synthetic" | "manifest"
    name: str
    split: str | None = None  # bundled: "dev"
    count: int | None = None  # synthetic: how many clips


def parse_training_spec(spec: str) -> TrainingSpec:
    """Check one spec without touching data: ``asterisk[:dev]``, ``synth-telephone:600`` or ``path.jsonl``. Nothing
    that calibrates or trains may read the test split; a synthetic set needs a count. ``ConfigError`` otherwise."""
    name, _, split = spec.partition(":")
    if name in SYNTHETIC_SETS:
        if not (split.isdigit() and int(split) > 0):
            raise ConfigError(f"{spec!r}: a synthetic set needs a count, e.g. '{name}:600'")
        return TrainingSpec("synthetic", name, count=int(split))
    if name in BUNDLED_DATASETS:
        if split not in ("", "dev"):
            raise ConfigError(f"{spec!r}: nothing that calibrates or trains may read the {split or 'test'} split; use dev")
        return TrainingSpec("bundled", name, split="dev")
    if spec.endswith(".jsonl"):
        return TrainingSpec("manifest", spec)
    raise ConfigError(f"{spec!r}: not a bundled set ({', '.join(BUNDLED_DATASETS)}), a synthetic set "
                      f"({', '.join(f'{n}:N' for n in SYNTHETIC_SETS)}) or a .jsonl manifest")


def training_utterances(specs: list[str], limit: int | None = None) -> list[Utterance]:
    """Utterances for calibration or training from specs (see ``parse_training_spec``); synthetic clips are made on
    first use. At most ``limit`` in all, in spec order."""
    out: list[Utterance] = []
    for spec in specs:
        t = parse_training_spec(spec)
        if t.kind == "synthetic":
            out += synthetic_utterances(t.name, t.count)
        else:
            out += load_dataset(t.name, t.split)
    return out[:limit] if limit else out
