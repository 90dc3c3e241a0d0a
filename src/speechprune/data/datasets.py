"""Resolve a data set spec: a bundled name (``asterisk``, ``asterisk-multiword``) or a ``.jsonl`` manifest path."""

from __future__ import annotations

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
