"""English sentences for synthetic training speech, from Debian text packages (no internet, no test audio).

Sources (``sources=`` names, in the order they are pooled):

- ``"fortunes"``: the ``%``-separated fortune files in ``/usr/share/games/fortunes`` (Debian ``fortunes``;
  ``$SPEECHPRUNE_FORTUNES_DIR`` overrides the folder). ``-- Author`` attribution lines are dropped.
- ``"bible"``: the King James text, dumped verse per line by the ``bible`` program (Debian ``bible-kjv``,
  which pulls in the compressed text ``bible-kjv-text``; ``$SPEECHPRUNE_BIBLE`` overrides the program).
  "LORD"/"GOD" (small capitals in print) become "Lord"/"God".
- ``"gcide"``: definitions and quoted examples of the 1913 Webster in ``gcide.dict.dz`` (Debian
  ``dict-gcide``; ``$SPEECHPRUNE_GCIDE`` overrides the file). Larger and drier; not used by default.
- ``"lee"``: ``lee_background.cor`` from gensim's test data, only when gensim is installed
  (``$SPEECHPRUNE_LEE_COR`` overrides the file).

Every text is split into sentences and each goes through :func:`clean_sentence`: plain ASCII English of
3-25 words made of letters, digits and basic punctuation; anything with other symbols is dropped, not
repaired. The pool is deduplicated (case- and space-insensitively), then shuffled with ``random.Random(seed)``:
:func:`sentences` with a larger ``n`` and the same seed extends the list it returned for a smaller one.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import random
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

from speechprune.errors import ConfigError

MIN_WORDS = 3
MAX_WORDS = 25
DEFAULT_SOURCES = ("fortunes", "bible")

FORTUNES_ENV = "SPEECHPRUNE_FORTUNES_DIR"
BIBLE_ENV = "SPEECHPRUNE_BIBLE"
GCIDE_ENV = "SPEECHPRUNE_GCIDE"
LEE_ENV = "SPEECHPRUNE_LEE_COR"
DEFAULT_FORTUNES = Path("/usr/share/games/fortunes")
DEFAULT_GCIDE = Path("/usr/share/dictd/gcide.dict.dz")
# Fortune files that are pictures or meant to be translated, not English prose.
_SKIP_FORTUNE_FILES = frozenset({"art", "ascii-art", "translate-me"})

# Typographic characters mapped to ASCII before the symbol check.
_ASCII_MAP = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                            "\u2014": " - ", "`": "'", "\t": " "})
_ALLOWED = re.compile(r"[A-Za-z0-9 .,;:!?'\"-]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"']?\s+(?=[\"']?[A-Z0-9])")
_ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "prof", "rev", "gen", "col", "lt",
                            "capt", "sgt", "mt", "no", "vol", "etc", "e.g", "i.e", "cf", "ca", "viz"})
_WORD = re.compile(r"[A-Za-z0-9]")
_UPPER_WORD = re.compile(r"^[A-Z]{2,}$")


# -- cleaning (pure) -------------------------------------------------------------------------------

def clean_sentence(text: str) -> str | None:
    """``text`` as one plain English sentence, or None when it is not one.

    Whitespace is collapsed, typographic quotes and dashes become ASCII, double quotes are removed, runs of
    ``!``/``?`` shrink to one and `` -- `` becomes a comma. Rejected: characters other than letters,
    digits and ``.,;:!?'-`` (also brackets, ``&``, ``$``, ``/``, ``*``, ``_``, non-ASCII), ellipses, fewer
    than 3 or more than 25 words, no capital/digit at the start or no ``.!?`` at the end, a word of more
    than 20 letters, and shouting (over a third of the words in capitals).
    """
    s = " ".join(text.translate(_ASCII_MAP).split())
    s = s.replace('"', "").replace(" -- ", ", ").replace("--", ", ")
    s = re.sub(r"([!?])[!?]+", r"\1", s)
    s = re.sub(r"\s+([,.;:!?])", r"\1", s).strip(" '-")
    if not s or not _ALLOWED.fullmatch(s) or ".." in s or ",," in s:
        return None
    if not (s[0].isupper() or s[0].isdigit()) or s[-1] not in ".!?":
        return None
    words = [w for w in s.split() if _WORD.search(w)]
    if not MIN_WORDS <= len(words) <= MAX_WORDS or len(words) != len(s.split()):
        return None
    bare = [w.strip(".,;:!?'-") for w in words]
    if any(len(w) > 20 for w in bare):
        return None
    shouting = sum(1 for w in bare if _UPPER_WORD.match(w))
    if shouting * 3 > len(words):
        return None
    return s


def split_sentences(text: str) -> list[str]:
    """Split running text at ``.``/``!``/``?`` followed by a capital or digit, not after "Mr." and the like."""
    text = " ".join(text.split())
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        before = text[start:m.start()].rstrip("\"'")
        last = before.rsplit(" ", 1)[-1].rstrip(".").lower()
        if before.endswith(".") and (last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())):
            continue
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def clean_sentences(texts: Iterable[str]) -> list[str]:
    """Every clean sentence of ``texts`` (each split first), first occurrence kept, in input order."""
    seen: set[str] = set()
    out: list[str] = []
    for text in texts:
        for sent in split_sentences(text):
            s = clean_sentence(sent)
            if s is None:
                continue
            key = _dedupe_key(s)
            if key not in seen:
                seen.add(key)
                out.append(s)
    return out


def _dedupe_key(sentence: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", sentence.lower()).split())


# -- parsing one source's raw text (pure) ------------------------------------------------------------

def parse_fortunes(content: str) -> list[str]:
    """The fortunes of one ``%``-separated file, attribution lines (``-- Mark Twain``) removed."""
    texts = []
    for block in re.split(r"^%\s*$", content, flags=re.MULTILINE):
        lines = [ln for ln in block.splitlines() if not ln.strip().startswith("--")]
        text = " ".join(" ".join(lines).split())
        if text:
            texts.append(text)
    return texts


def parse_bible(content: str) -> list[str]:
    """Verse texts from ``bible -f`` output (``Ge1:1 In the beginning ...``), LORD/GOD as Lord/God."""
    texts = []
    for line in content.splitlines():
        ref, _, verse = line.partition(" ")
        if not verse or ":" not in ref:
            continue
        verse = re.sub(r"\bLORD\b", "Lord", verse)
        texts.append(re.sub(r"\bGOD\b", "God", verse))
    return texts


_GCIDE_HEAD = re.compile(r"^\S.*\\.*\\")  # "Abjure \Ab*jure"\, v. t. [...]"
_GCIDE_CITE = re.compile(r"--\s*[A-Z][\w.&' ]*?(?=$|\s[A-Z\"]|\.\s)")


def parse_gcide(content: str) -> list[str]:
    """Definition paragraphs of GCIDE entries: headword lines, ``[...]`` notes, ``{}`` marks and ``--Author`` cut."""
    texts, para = [], []
    for line in content.splitlines():
        if not line.strip() or _GCIDE_HEAD.match(line):
            if para:
                texts.append(" ".join(para))
            para = []
            continue
        if line.startswith(" "):
            para.append(line.strip())
    if para:
        texts.append(" ".join(para))
    cleaned = []
    for t in texts:
        t = re.sub(r"\[[^\]]*\]", " ", t)
        t = re.sub(r"^\d+\.\s*(\([^)]*\)\s*)?", "", t).replace("{", "").replace("}", "")
        t = _GCIDE_CITE.sub(" ", t)
        if t.strip() and not t.startswith(("Syn:", "Note:")):
            cleaned.append(t[0].upper() + t[1:] if t[0].islower() else t)
    return cleaned


# -- reading the installed sources ------------------------------------------------------------------

def _missing(source: str, what: str, install: str, path: str | Path | None = None) -> ConfigError:
    return ConfigError(f"text source {source!r} needs {what}; install it with: {install}", path)


def _fortunes_dir() -> Path:
    value = os.environ.get(FORTUNES_ENV)
    folder = Path(value).expanduser() if value else DEFAULT_FORTUNES
    if not folder.is_dir() or not _fortune_files(folder):
        raise _missing("fortunes", "the fortune files (Debian package fortunes)", "sudo apt-get install fortunes", folder)
    return folder


def _fortune_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink() and p.suffix not in (".dat", ".u8")
                  and p.name not in _SKIP_FORTUNE_FILES)


def _read_fortunes() -> list[str]:
    texts = []
    for path in _fortune_files(_fortunes_dir()):
        texts += parse_fortunes(path.read_bytes().decode("utf-8", errors="replace"))
    return texts


def _read_bible() -> list[str]:
    program = os.environ.get(BIBLE_ENV) or shutil.which("bible")
    if not program or not Path(program).is_file():
        raise _missing("bible", "the bible program and text (Debian packages bible-kjv, bible-kjv-text)",
                       "sudo apt-get install bible-kjv bible-kjv-text", program)
    proc = subprocess.run([program, "-f", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=120, check=False)
    texts = parse_bible(proc.stdout.decode("utf-8", errors="replace"))
    if proc.returncode != 0 or not texts:
        err = " ".join(proc.stderr.decode("utf-8", errors="replace").split())[:200]
        raise _missing("bible", f"a working bible program (exit {proc.returncode}: {err or 'no verses printed'})",
                       "sudo apt-get install --reinstall bible-kjv bible-kjv-text", program)
    return texts


def _read_gcide() -> list[str]:
    value = os.environ.get(GCIDE_ENV)
    path = Path(value).expanduser() if value else DEFAULT_GCIDE
    if not path.is_file():
        raise _missing("gcide", "the GCIDE dictionary (Debian package dict-gcide)", "sudo apt-get install dict-gcide", path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # dictzip is gzip with random-access extras
        data = gzip.decompress(data)
    return parse_gcide(data.decode("utf-8", errors="replace"))


def _read_lee() -> list[str]:
    value = os.environ.get(LEE_ENV)
    if value:
        path = Path(value).expanduser()
    else:
        spec = importlib.util.find_spec("gensim")
        if spec is None or not spec.submodule_search_locations:
            raise _missing("lee", "gensim's test data (PyPI package gensim)", "pip install gensim")
        path = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data" / "lee_background.cor"
    if not path.is_file():
        raise _missing("lee", "lee_background.cor from gensim's test data", "pip install gensim", path)
    return path.read_text(encoding="utf-8", errors="replace").splitlines()


_READERS: dict[str, Callable[[], list[str]]] = {
    "fortunes": _read_fortunes, "bible": _read_bible, "gcide": _read_gcide, "lee": _read_lee,
}
SOURCES = tuple(_READERS)


@lru_cache(maxsize=None)
def _source_sentences(source: str, env_key: tuple[str | None, ...]) -> tuple[str, ...]:
    del env_key  # part of the cache key only: another override reads again
    return tuple(clean_sentences(_READERS[source]()))


def source_sentences(source: str) -> list[str]:
    """All clean, deduplicated sentences of one source, in file order."""
    if source not in _READERS:
        raise ConfigError(f"unknown text source {source!r} (choose from {', '.join(SOURCES)})")
    env_key = tuple(os.environ.get(k) for k in (FORTUNES_ENV, BIBLE_ENV, GCIDE_ENV, LEE_ENV))
    return list(_source_sentences(source, env_key))


def sentences(n: int | None, seed: int = 0, sources: Sequence[str] = DEFAULT_SOURCES) -> list[str]:
    """``n`` distinct clean sentences (all of them when ``n`` is None), pooled from ``sources`` and shuffled by ``seed``.

    Sources mix in proportion to their size (the Bible gives about twice as many as the fortunes). A larger
    ``n`` with the same seed and sources extends the smaller list. Raises :class:`ConfigError` naming the
    Debian package to install when a source is absent, and when fewer than ``n`` sentences exist.
    """
    if isinstance(sources, str):
        sources = (sources,)
    if not sources:
        raise ConfigError("no text sources given")
    if n is not None and n < 0:
        raise ConfigError(f"number of sentences must be >= 0, got {n}")
    pool: list[str] = []
    seen: set[str] = set()
    for source in dict.fromkeys(sources):
        for s in source_sentences(source):
            key = _dedupe_key(s)
            if key not in seen:
                seen.add(key)
                pool.append(s)
    random.Random(seed).shuffle(pool)
    if n is None:
        return pool
    if n > len(pool):
        raise ConfigError(f"asked for {n} sentences but {', '.join(sources)} hold only {len(pool)} clean ones")
    return pool[:n]
