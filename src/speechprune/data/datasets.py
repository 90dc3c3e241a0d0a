"""Resolve a data set spec: a bundled name or a ``.jsonl`` manifest path.

Bundled names: the in-domain asterisk set (``asterisk``, ``asterisk-multiword``; dev/test/all splits), the
multilingual sets (:data:`MULTILINGUAL`: ``asterisk-es`` transcribes Spanish prompts, ``asterisk-es-en`` translates
them into English, and so on for fr, it, ru; ``fillets-cs``, ``fillets-nl`` and their ``-en`` pairs; ``festvox-ru``
read Russian sentences, transcription only; dev/test/all
splits, the same prompt in the same split in every language) and the out-of-domain English sets of
:mod:`speechprune.data.sources` (one per source, and ``english-ood`` pooling them),
which are evaluation only: used whole (split None, "all" or "test"), never calibration or training data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from speechprune.data import asterisk, festvox, fillets
from speechprune.data.asterisk import SPLITS, asterisk_utterances
from speechprune.data.manifest import Utterance, read_manifest
from speechprune.data.sources import SET_NAMES as EVALUATION_ONLY
from speechprune.data.sources import source_of, source_utterances  # noqa: F401  (source_of: re-exported)
from speechprune.data.text import CORPORA as TEXT_CORPORA
from speechprune.errors import ConfigError
from speechprune.paths import cache_dir

# bundled name -> subset of the Asterisk prompts
_BUNDLED_SUBSETS = {"asterisk": "all", "asterisk-multiword": "multiword"}
# multilingual bundled name -> (family, language, task); translation is always into English
MULTILINGUAL: dict[str, tuple[str, str, str]] = {
    f"{family}-{lang}{suffix}": (family, lang, task)
    for family, languages in (("asterisk", asterisk.LANGUAGES[1:]), ("fillets", fillets.LANGUAGES))
    for task, suffix in (("transcribe", ""), ("translate", "-en"))
    for lang in languages
}
# read Russian sentences, one speaker (Debian festvox-ru, data/festvox.py): transcription only, no English text
MULTILINGUAL["festvox-ru"] = ("festvox", "ru", "transcribe")
_SPLIT_SETS = (*_BUNDLED_SUBSETS, *MULTILINGUAL)  # bundled sets read by split (dev for training, test for scores)
BUNDLED_DATASETS: tuple[str, ...] = (*_BUNDLED_SUBSETS, *MULTILINGUAL, *EVALUATION_ONLY)
_MULTILINGUAL_SHAPE = re.compile(r"(asterisk|fillets)-([A-Za-z]{2,3})(?:-([A-Za-z]{2,3}))?")
DEFAULT_SPLIT = "test"
# an evaluation-only set is used whole: these splits all mean "every utterance" ("test": nothing trains on it)
WHOLE_SET_SPLITS = (None, "all", "test")
# synthetic training speech made on first use in the cache: name -> telephone-band augmentation
SYNTHETIC_SETS = {"synth": False, "synth-telephone": True}
# real recorded English without transcripts (speechprune.data.unlabelled: game voices, radio; never evaluation
# sources), balanced across its sources; the dense teacher labels it
UNLABELLED = "unlabelled"


def _multilingual(name: str, split: str) -> list[Utterance]:
    family, language, task = MULTILINGUAL[name]
    if family == "asterisk":
        return asterisk_utterances(split, "all", language, task)
    if family == "festvox":
        return festvox.festvox_utterances(split)
    return fillets.fillets_utterances(language, split, task)


def _check_multilingual_name(spec: str) -> None:
    """A one-line ConfigError for a name shaped like a multilingual set whose language or task does not exist
    (``asterisk-de``, ``fillets-cs-fr``); nothing for any other spec."""
    m = _MULTILINGUAL_SHAPE.fullmatch(spec)
    if m is None or spec in MULTILINGUAL or Path(spec).exists():
        return
    family, language, target = m.groups()
    languages = tuple(lang for f, lang, _ in MULTILINGUAL.values() if f == family)
    if target is not None and target != "en":
        raise ConfigError(f"unknown data set {spec!r}: the {family} sets translate into English only "
                          f"(e.g. '{family}-{languages[0]}-en'), not into {target!r}")
    raise ConfigError(f"unknown data set {spec!r}: no language {language!r} in the {family} sets "
                      f"(choose from {', '.join(dict.fromkeys(languages))})")


def load_dataset(spec: str, split: str | None = None) -> list[Utterance]:
    """Utterances of a bundled set (asterisk and the multilingual sets: ``split`` in dev/test/all, default test; an
    evaluation-only set: None, "all" or "test", all meaning the whole set) or of a manifest file (``split`` None or
    "all")."""
    if spec in _BUNDLED_SUBSETS:
        return asterisk_utterances(split or DEFAULT_SPLIT, _BUNDLED_SUBSETS[spec])
    if spec in MULTILINGUAL:
        return _multilingual(spec, split or DEFAULT_SPLIT)
    _check_multilingual_name(spec)
    if spec in EVALUATION_ONLY:
        if split not in WHOLE_SET_SPLITS:
            raise ConfigError(f"{spec!r} is an evaluation-only set used whole: split {split!r} does not exist "
                              "(use test or all, which are the same)")
        return source_utterances(spec)
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

    kind: str  # "bundled" | "synthetic" | "unlabelled" | "manifest" | "text"
    name: str
    split: str | None = None  # bundled: "dev"; text: "train" or "dev"
    count: int | None = None  # synthetic, unlabelled: how many clips


def parse_training_spec(spec: str) -> TrainingSpec:
    """Check one spec without touching data: ``asterisk[:dev]``, ``synth-telephone:600``, ``path.jsonl`` or a text
    corpus's split (``english-text:train``: text only, what a language model calibrates and recovers on). Nothing
    that calibrates or trains may read the test split; a synthetic set needs a count. ``ConfigError`` otherwise."""
    name, _, split = spec.partition(":")
    if name in TEXT_CORPORA:
        if split not in ("train", "dev"):
            raise ConfigError(f"{spec!r}: a text corpus for calibration or training is read by split: "
                              f"'{name}:train' or '{name}:dev' (never test)")
        return TrainingSpec("text", name, split=split)
    if name in EVALUATION_ONLY:
        raise ConfigError(f"{spec!r}: {name} is an evaluation-only set (out-of-domain English); it is never "
                          "calibration or training data")
    if name in SYNTHETIC_SETS or name == UNLABELLED:
        kind = "unlabelled" if name == UNLABELLED else "synthetic"
        if not (split.isdigit() and int(split) > 0):
            raise ConfigError(f"{spec!r}: a {kind} set needs a count, e.g. '{name}:600'")
        return TrainingSpec(kind, name, count=int(split))
    _check_multilingual_name(name)
    if name in _SPLIT_SETS:
        if split not in ("", "dev"):
            raise ConfigError(f"{spec!r}: nothing that calibrates or trains may read the {split or 'test'} split; use dev")
        return TrainingSpec("bundled", name, split="dev")
    if spec.endswith(".jsonl"):
        return TrainingSpec("manifest", spec)
    raise ConfigError(f"{spec!r}: not a bundled set ({', '.join(_SPLIT_SETS)}), a synthetic set "
                      f"({', '.join(f'{n}:N' for n in SYNTHETIC_SETS)}), real unlabelled speech ({UNLABELLED}:N), "
                      f"a text corpus ({', '.join(f'{n}:train' for n in TEXT_CORPORA)}) or a .jsonl manifest")


def training_utterances(specs: list[str], limit: int | None = None, interleave: bool = False) -> list[Utterance]:
    """Utterances for calibration or training from specs (see ``parse_training_spec``); synthetic clips are made on
    first use. At most ``limit`` in all: in spec order, or with ``interleave`` one clip of each spec in turn (so a
    large set cannot fill ``limit`` alone)."""
    parsed = [parse_training_spec(spec) for spec in specs]  # every spec is checked before any data is made
    for t in parsed:
        if t.kind == "text":
            raise ConfigError(f"'{t.name}:{t.split}' is text without audio: it calibrates and recovers language "
                              "models, not speech models")
    sets: list[list[Utterance]] = []
    for t in parsed:
        if t.kind == "synthetic":
            sets.append(synthetic_utterances(t.name, t.count))
        elif t.kind == "unlabelled":
            from speechprune.data.unlabelled import unlabelled_utterances

            sets.append(unlabelled_utterances(t.count))
        else:
            sets.append(load_dataset(t.name, t.split))
    out = interleaved(sets) if interleave else [u for s in sets for u in s]
    return out[:limit] if limit else out


def interleaved(sets: list[list[Utterance]]) -> list[Utterance]:
    """Round robin over ``sets``: the first of each, then the second of each, ...; a set that runs out drops out."""
    longest = max((len(s) for s in sets), default=0)
    return [s[i] for i in range(longest) for s in sets if i < len(s)]
