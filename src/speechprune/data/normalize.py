"""Text normalization for WER: Whisper's normalizers, and the rules that turn Asterisk prompt texts into references.

:func:`normalize_text` applies Whisper's ``EnglishTextNormalizer`` (with the vendored ``english.json``
spelling map) for English, ``BasicTextNormalizer`` otherwise, to reference and hypothesis alike. One
addition: tokens with no letter or digit are dropped (Whisper's normalizer turns "exactly..." into
"exactly ." and the lone "." would count as a word).

:func:`asterisk_reference` rewrites a prompt text from ``core-sounds-en.txt`` into what a listener
would write, before normalization:

1. annotations in ``[...]``, ``(...)``, ``<...>`` are removed (``at [@]`` -> ``at``,
   ``(simple tone sound plays)``, ``<beep ascending>``); a text that is all annotation becomes "";
2. ellipses (``...``, ``…``) are removed;
3. the keypad symbols ``#`` and ``*`` become "pound" and "star", the words the recordings say;
4. misspellings in the text file are corrected (:data:`ASTERISK_SPELLING_FIXES`, e.g.
   "exclaimation", "fourtieth", "witheld", "De-activated").

Everything else is left to the Whisper normalizer, applied identically to hypotheses: digits and
number words meet ("Press 1." and "press one" both become "press one"; "two" and "2" become "2"),
hyphens split words ("Call-Forward" -> "call forward"), "H.323" stays "h.323" (a hypothesis written
"H.323" matches, "H 323" does not) and "1-800" becomes "one 800" on both sides.

:func:`subtitle_reference` does the same for game subtitles and labels (the out-of-domain sources in
:mod:`speechprune.data.sources`): annotations, ellipses and double quotes are removed, characters outside
printable ASCII are dropped, and a source's own word fixes (``fixes``: lower-case word -> replacement) are
applied; case is kept.

Other languages (the multilingual sets of :mod:`speechprune.data.asterisk` and :mod:`speechprune.data.fillets`):
:func:`plain_reference` only removes annotations, ellipses and double quotes (no keypad words, no English spelling
fixes, every script kept). :func:`scoring_text` is what WER/CER compare: :func:`normalize_text`, and for the
languages in :data:`UNACCENTED_LANGUAGES` (Spanish: the Asterisk texts are mostly written without accents,
"contrasena", "numero") the diacritics removed on both sides, so "contraseña" and "contrasena" meet.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers is imported on first use: it takes most of a second
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

SPELLING_RESOURCE = "whisper_english.json"

# Misspellings in core-sounds-en.txt 1.6.1 -> the dictionary spelling a listener would write.
ASTERISK_SPELLING_FIXES: dict[str, str] = {
    "de-activated": "deactivated",
    "decending": "descending",
    "exclaimation": "exclamation",
    "fourtieth": "fortieth",
    "indentified": "identified",
    "represenatives": "representatives",
    "thru": "through",
    "umute": "unmute",
    "un-indentified": "unidentified",
    "witheld": "withheld",
}

# languages whose references are scored without diacritics on both sides (see scoring_text)
UNACCENTED_LANGUAGES = ("es",)

_ANNOTATION = re.compile(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>")
_ELLIPSIS = re.compile(r"\.{3,}|…")
_QUOTES = re.compile(r"[\"“”]")
_NON_ASCII = re.compile(r"[^\x20-\x7e]")
_KEYPAD = {"#": "pound", "*": "star"}
_KEYPAD_RE = re.compile(r"[#*]")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_FIXES_RE = re.compile(
    r"\b(" + "|".join(re.escape(k) for k in sorted(ASTERISK_SPELLING_FIXES, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)


def english_spelling_map() -> dict[str, str]:
    """Whisper's British -> American spelling map (``english.json`` from openai-whisper, MIT)."""
    text = resources.files("speechprune.data").joinpath("resources", SPELLING_RESOURCE).read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _english_normalizer() -> EnglishTextNormalizer:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    return EnglishTextNormalizer(english_spelling_map())


@lru_cache(maxsize=1)
def _basic_normalizer() -> BasicTextNormalizer:
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer

    return BasicTextNormalizer()


def is_english(language: str | None) -> bool:
    """True for None, "en", "english" and regional tags such as "en-US"."""
    if language is None:
        return True
    base = re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]
    return base in ("en", "english")


def normalize_text(text: str, language: str | None = "en") -> str:
    """Whisper-normalize ``text`` (English rules for None/"en", basic rules otherwise); words joined by single spaces."""
    normalizer = _english_normalizer() if is_english(language) else _basic_normalizer()
    words = normalizer(text).split()
    return " ".join(w for w in words if any(ch.isalnum() for ch in w))


def _language_base(language: str | None) -> str:
    return re.split(r"[-_]", (language or "en").strip().lower(), maxsplit=1)[0]


def strip_diacritics(text: str) -> str:
    """``text`` with combining marks removed after NFKD ("contraseña" -> "contrasena", "qué" -> "que")."""
    return "".join(ch for ch in unicodedata.normalize("NFKD", text) if not unicodedata.combining(ch))


def scoring_text(text: str, language: str | None = "en") -> str:
    """What WER and CER compare: :func:`normalize_text`, then, for a language in :data:`UNACCENTED_LANGUAGES`
    (Spanish), diacritics removed, applied to reference and hypothesis alike (the Spanish Asterisk texts are mostly
    unaccented). The same as :func:`normalize_text` for every other language."""
    out = normalize_text(text, language)
    return strip_diacritics(out) if _language_base(language) in UNACCENTED_LANGUAGES else out


def _fix_spelling(match: re.Match[str]) -> str:
    word = match.group(0)
    fixed = ASTERISK_SPELLING_FIXES[word.lower()]
    return fixed[:1].upper() + fixed[1:] if word[:1].isupper() else fixed


def plain_reference(raw: str) -> str:
    """A prompt or dialog line in any language as a listener would write it: annotations (``[tono simple]``,
    ``(emphase)``, ``<beep>``), ellipses and double quotes removed, spaces collapsed; every script and accent kept.
    "" when nothing is left."""
    text = _ANNOTATION.sub(" ", raw)
    text = _ELLIPSIS.sub(" ", text)
    text = _QUOTES.sub(" ", text)
    text = " ".join(text.split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip(" ,;:")


def asterisk_reference(raw: str, language: str | None = "en") -> str:
    """An Asterisk prompt text as a listener would write it (rules in the module docstring); "" if all annotation.
    The keypad words and spelling fixes are English: another language gets :func:`plain_reference`."""
    if not is_english(language):
        return plain_reference(raw)
    text = _ANNOTATION.sub(" ", raw)
    text = _ELLIPSIS.sub(" ", text)
    text = _KEYPAD_RE.sub(lambda m: f" {_KEYPAD[m.group(0)]} ", text)
    text = _FIXES_RE.sub(_fix_spelling, text)
    text = " ".join(text.split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def subtitle_reference(raw: str, fixes: dict[str, str] | None = None) -> str:
    """A subtitle or label as a listener would write it: annotations (``(WHISTLE)``), ellipses, double quotes and
    characters outside printable ASCII removed; words in ``fixes`` (lower-case keys, whole words, any case in
    ``raw``) replaced; spaces collapsed. "" when nothing is left."""
    text = _NON_ASCII.sub(" ", raw)
    text = _ANNOTATION.sub(" ", text)
    text = _ELLIPSIS.sub(" ", text)
    text = _QUOTES.sub(" ", text)
    if fixes:
        pattern = r"\b(" + "|".join(re.escape(k) for k in sorted(fixes, key=len, reverse=True)) + r")\b"
        text = re.sub(pattern, lambda m: fixes[m.group(0).lower()], text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip(" ,;:")
