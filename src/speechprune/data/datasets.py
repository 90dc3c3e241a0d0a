"""Resolve a data set spec: a bundled name (``asterisk``, ``asterisk-multiword``) or a ``.jsonl`` manifest path."""

from __future__ import annotations

from pathlib import Path

from speechprune.data.asterisk import SPLITS, asterisk_utterances
from speechprune.data.manifest import Utterance, read_manifest
from speechprune.errors import ConfigError

# bundled name -> subset of the Asterisk prompts
_BUNDLED_SUBSETS = {"asterisk": "all", "asterisk-multiword": "multiword"}
BUNDLED_DATASETS: tuple[str, ...] = tuple(_BUNDLED_SUBSETS)
DEFAULT_SPLIT = "test"


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
