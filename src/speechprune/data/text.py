"""English text for language models, offline: the bundled corpus ``english-text`` (built once from Debian packages
into the cache), transcripts of the audio sets' dev splits, and text files.

Sources of ``english-text`` (in this order; every one required, ``install.sh`` installs them):

- ``fortunes``: the fortune files (Debian ``fortunes``), ``bible``: the King James text (``bible-kjv``/
  ``bible-kjv-text``), ``gcide``: the 1913 Webster's definitions (``dict-gcide``); read as in
  ``data.text_corpora`` (which makes TTS sentences from the same packages);
- ``tdavid``: Spurgeon's *Treasury of David* (``sword-comm-tdavid``, public domain), exported by ``mod2imp TDavid
  -s`` (``libsword-utils``; ``$SPEECHPRUNE_MOD2IMP`` overrides the program).

Each text is split into sentences; a sentence is kept in two forms: ``normalized`` (Whisper's English normalizer, as
the references are scored: lower case, numbers as digits, no punctuation; at least :data:`MIN_WORDS` words) and
``written`` (a plain ASCII sentence as Whisper writes one, ``text_corpora.clean_sentence``; fewer pass). Repeated
lines are kept once. A line's split (train, dev, test) is a function of its normalized text alone
(:func:`split_of`: ~1 % dev, ~1 % test), so a sentence and its written form fall in the same split, and a line
repeated anywhere can never be in two splits.

The built corpus lives in ``$SPEECHPRUNE_CACHE/text/english-text/`` (``<split>.txt``, ``<split>.written.txt``,
``build.json`` with lines and words per source and split), written atomically; it is rebuilt when the packages'
versions or the rules change.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from speechprune.data.normalize import normalize_text
from speechprune.errors import ConfigError
from speechprune.io import locked, read_json, staged_dir
from speechprune.paths import cache_dir

CORPUS = "english-text"
CORPORA = (CORPUS,)
SOURCES = ("fortunes", "bible", "gcide", "tdavid")
SPLITS = ("train", "dev", "test")
FORMS = ("normalized", "written")
MIN_WORDS = 2  # a lone word is a heading or a fragment, not a sentence
RULES = 1  # of splitting, cleaning and the folder layout; part of build.json
BUILD = "build.json"
MOD2IMP_ENV = "SPEECHPRUNE_MOD2IMP"
PACKAGES = {"fortunes": "fortunes", "bible": "bible-kjv-text", "gcide": "dict-gcide", "tdavid": "sword-comm-tdavid"}

_ASCII = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-", "\u2014": " - ",
                        "`": "'", "*": " "})
_TDAVID_VERSE = re.compile(r"\bVerses? \d+(?:\s*[-,]\s*\d+)*\s*\.")


def split_of(line: str) -> str:
    """``train``, ``dev`` or ``test`` from a hash of the (normalized) line: ~1 % each for dev and test."""
    bucket = int.from_bytes(hashlib.sha256(line.encode("utf-8")).digest()[:8], "big") % 100
    return "test" if bucket == 0 else "dev" if bucket == 1 else "train"


def spread(lines: list[str], n: int | None) -> list[str]:
    """``n`` lines at evenly spaced places of ``lines`` (all of them when ``n`` is None or not smaller): a sample of
    every source of a corpus, whose lines are in source order."""
    if n is None or n >= len(lines):
        return list(lines)
    return [lines[i * len(lines) // n] for i in range(n)]


# -- sources --------------------------------------------------------------------------------------------------

def parse_tdavid(content: str) -> list[str]:
    """Paragraphs of ``mod2imp -s`` output: ``$$$`` entry headers dropped, emphasis stars and "Verse 3." cut."""
    texts = []
    for line in content.splitlines():
        if line.startswith("$$$"):
            continue
        line = " ".join(_TDAVID_VERSE.sub(" ", line.replace("*", " ")).split())
        if line:
            texts.append(line)
    return texts


def _read_tdavid() -> list[str]:
    program = os.environ.get(MOD2IMP_ENV) or shutil.which("mod2imp")
    install = "apt-get install libsword-utils sword-comm-tdavid"
    if not program or not Path(program).is_file():
        raise ConfigError(f"text source 'tdavid' needs the mod2imp program and the TDavid module; install them "
                          f"with: {install}", program)
    proc = subprocess.run([program, "TDavid", "-s"], stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
                          check=False)
    texts = parse_tdavid(proc.stdout.decode("utf-8", errors="replace"))
    if proc.returncode != 0 or not texts:
        raise ConfigError(f"text source 'tdavid': mod2imp printed no text (exit {proc.returncode}); install the "
                          f"module with: {install}", program)
    return texts


def default_readers() -> dict[str, Callable[[], list[str]]]:
    """The raw texts of each source of ``english-text``."""
    from speechprune.data.text_corpora import _read_bible, _read_fortunes, _read_gcide  # the same packages' readers

    return {"fortunes": _read_fortunes, "bible": _read_bible, "gcide": _read_gcide, "tdavid": _read_tdavid}


def _fingerprint(sources: Iterable[str]) -> dict:
    """The installed versions of the sources' packages (and any override of where they are read from)."""
    from speechprune.data import text_corpora as tc

    versions = {}
    for s in sources:
        try:
            proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", PACKAGES.get(s, s)], capture_output=True,
                                  timeout=30, check=False)
            versions[s] = proc.stdout.decode().strip() if proc.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            versions[s] = None
    env = {k: os.environ.get(k) for k in (tc.FORTUNES_ENV, tc.BIBLE_ENV, tc.GCIDE_ENV, MOD2IMP_ENV)}
    return {"rules": RULES, "packages": versions, "overrides": {k: v for k, v in env.items() if v}}


# -- building -------------------------------------------------------------------------------------------------

def sentence_forms(text: str) -> list[tuple[str, str | None]]:
    """``(normalized, written or None)`` of every sentence of ``text`` that normalizes to :data:`MIN_WORDS` words."""
    from speechprune.data.text_corpora import clean_sentence, split_sentences

    out = []
    for sent in split_sentences(text.translate(_ASCII)):
        norm = normalize_text(sent)
        if len(norm.split()) >= MIN_WORDS:
            out.append((norm, clean_sentence(sent)))
    return out


def build_corpus(out: str | Path, readers: dict[str, Callable[[], list[str]]], fingerprint: dict | None = None,
                 progress: bool = True) -> dict:
    """Read every source, split, normalize, deduplicate and split the lines into ``out`` (atomically); the record
    written to ``out/build.json``."""
    texts = {name: read() for name, read in readers.items()}  # every source is read (and may fail) before any work
    seen: set[str] = set()
    seen_written: set[str] = set()
    lines = {(form, split): [] for form in FORMS for split in SPLITS}
    counts: dict[str, dict] = {}
    total = sum(len(t) for t in texts.values())
    bar = tqdm(total=total, desc=f"text corpus ({', '.join(readers)})", unit="text", disable=not progress)
    for name, source_texts in texts.items():
        c = counts[name] = {"texts": len(source_texts), "raw_words": sum(len(t.split()) for t in source_texts)}
        c.update({f"{form}_{what}": dict.fromkeys(SPLITS, 0) for form in FORMS for what in ("lines", "words")})
        for text in source_texts:
            bar.update()
            for norm, written in sentence_forms(text):
                if norm in seen:
                    continue
                seen.add(norm)
                split = split_of(norm)
                lines["normalized", split].append(norm)
                c["normalized_lines"][split] += 1
                c["normalized_words"][split] += len(norm.split())
                if written is not None and written not in seen_written:
                    seen_written.add(written)
                    lines["written", split].append(written)
                    c["written_lines"][split] += 1
                    c["written_words"][split] += len(written.split())
    bar.close()
    if not seen:
        raise ConfigError(f"the text sources ({', '.join(readers)}) hold no sentence of {MIN_WORDS} words or more")
    record = {**(fingerprint or {}), "sources": counts,
              "words": {f: {s: sum(c[f"{f}_words"][s] for c in counts.values()) for s in SPLITS} for f in FORMS},
              "lines": {form: {s: len(lines[form, s]) for s in SPLITS} for form in FORMS}}
    with staged_dir(out) as tmp:
        for (form, split), rows in lines.items():
            name = f"{split}.txt" if form == "normalized" else f"{split}.written.txt"
            (tmp / name).write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        (tmp / BUILD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return record


def corpus_dir(name: str = CORPUS, progress: bool = True) -> Path:
    """The built corpus folder (built on first use, rebuilt when its packages or the rules changed)."""
    if name not in CORPORA:
        raise ConfigError(f"unknown text corpus {name!r} (bundled: {', '.join(CORPORA)})")
    folder = cache_dir() / "text" / name
    fingerprint = _fingerprint(SOURCES)
    with locked(folder):  # a second process waits for the first's build instead of making its own
        if (folder / BUILD).is_file():
            built = read_json(folder / BUILD)
            if all(built.get(k) == v for k, v in fingerprint.items()):
                return folder
        build_corpus(folder, default_readers(), fingerprint, progress)
    return folder


def corpus_record(name: str = CORPUS) -> dict:
    """``build.json`` of a built corpus: lines and words per source, form and split."""
    return read_json(corpus_dir(name) / BUILD)


# -- reading text specs ---------------------------------------------------------------------------------------

def _read_lines(path: Path) -> list[str]:
    """A text file's lines (``.jsonl``: each record's ``text``)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read text ({type(e).__name__})", path) from None
    try:
        content = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", path) from None
    if path.suffix != ".jsonl":
        return content.splitlines()
    out = []
    for n, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"line {n}: not JSON", path) from None
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ConfigError(f"line {n}: no \"text\" string", path)
        out.append(rec["text"])
    return out


def _form(lines: Iterable[str], form: str) -> list[str]:
    if form == "normalized":
        return [n for n in (normalize_text(s) for s in lines) if n]
    return [w for w in (" ".join(s.split()) for s in lines) if w]


def text_lines(spec: str, split: str | None = None, form: str = "normalized", training: bool = False,
               progress: bool = True) -> list[str]:
    """The lines of a text spec in ``form``: the corpus ``english-text`` (``split`` train, dev or test; default
    test), an audio set's transcripts (``asterisk[:dev]``; with ``training`` only dev, never test) or a text file
    (plain lines or JSONL records with ``text``; all of it, or with ``split`` the lines :func:`split_of` puts
    there). A file that is not UTF-8, or that holds no text, is a one-line ``ConfigError``."""
    if form not in FORMS:
        raise ConfigError(f"unknown text form {form!r}; choose from {', '.join(FORMS)}")
    if split not in (None, "all", *SPLITS):
        raise ConfigError(f"unknown split {split!r} for text; choose from {', '.join(SPLITS)} (or all, files only)")
    if spec in CORPORA:
        if split == "all":
            raise ConfigError(f"{spec} is split into {', '.join(SPLITS)}; choose one")
        if training and split in (None, "test"):
            raise ConfigError(f"{spec}: nothing that trains may read the test split; use train or dev")
        folder = corpus_dir(spec, progress)
        path = folder / (f"{split or 'test'}.txt" if form == "normalized" else f"{split or 'test'}.written.txt")
        out = path.read_text(encoding="utf-8").splitlines()
    else:
        out = _other_lines(spec, split, form, training)
    if not out:
        raise ConfigError(f"no text lines{f' in the {split} split' if split not in (None, 'all') else ''}", spec)
    return out


def _other_lines(spec: str, split: str | None, form: str, training: bool) -> list[str]:
    """An audio set's transcripts or a text file's lines (see ``text_lines``)."""
    from speechprune.data.datasets import BUNDLED_DATASETS, load_dataset, parse_training_spec

    name, _, part = spec.partition(":")
    if name in BUNDLED_DATASETS:
        if training:
            t = parse_training_spec(spec)  # refuses test splits and evaluation-only sets
            name, part = t.name, t.split
        out = _form((u.text for u in load_dataset(name, part or split or None)), form)
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"unknown text {spec!r}: not a corpus ({', '.join(CORPORA)}), an audio set's "
                              f"transcripts (asterisk:dev) nor a text file")
        out = _form(_read_lines(path), form)
        if split not in (None, "all"):
            out = [s for s in out if split_of(normalize_text(s) if form == "written" else s) == split]
    return out
