"""A restricted output vocabulary for English decoding: the tokens English text actually uses.

Each decoded token pays for the full output projection (51864 rows for tiny.en), timestamp, language and rare
byte-sequence tokens included. The list is built from text, never from evaluation transcripts: every word of Debian's
``wamerican`` word list as Whisper writes words (after a space; lower-case, Capitalized and as listed), the
sentences of the Debian text corpora (punctuation, digits, contractions), every byte token (so any string stays
spellable, in more pieces) and every special token. For tiny.en that keeps about 41k of 51864 rows: English uses
most of an English BPE vocabulary, so the saving is modest. Opt-in (``speechprune export --vocab english``): a
word outside the list is spelled from smaller pieces, which can change a transcript; measure the WER effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from speechprune.errors import ConfigError

WORD_LIST = Path("/usr/share/dict/american-english")  # Debian wamerican
N_BYTE_TOKENS = 256  # byte-level BPE: ids 0..255 are the single bytes


def word_forms(words: Iterable[str]) -> list[str]:
    """Each word as Whisper's decoder writes it inside a sentence: after a space; lower-case, Capitalized, as listed."""
    out = []
    for w in words:
        w = w.strip()
        if w:
            out += [f" {w.lower()}", f" {w.capitalize()}", f" {w}"]
    return out


def token_ids_used(tokenizer, texts: list[str], batch: int = 4096) -> set[int]:
    """Every token id the tokenizer produces for ``texts`` (no special tokens)."""
    used: set[int] = set()
    for i in range(0, len(texts), batch):
        for ids in tokenizer(texts[i : i + batch], add_special_tokens=False)["input_ids"]:
            used.update(ids)
    return used


def english_output_vocab(tokenizer, n_sentences: int = 100_000, word_list: Path = WORD_LIST) -> list[int]:
    """Sorted token ids for English decoding (see the module docstring)."""
    from speechprune.data.text_corpora import sentences

    if not word_list.is_file():
        raise ConfigError("the English word list is missing (apt-get install wamerican)", word_list)
    words = word_list.read_text(encoding="utf-8", errors="replace").splitlines()
    texts = word_forms(words)
    corpus = sentences(None)[:n_sentences]
    texts += [f" {s}" for s in corpus] + corpus
    ids = token_ids_used(tokenizer, texts)
    ids.update(range(N_BYTE_TOKENS))
    ids.update(tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens)
    ids.update(tokenizer.added_tokens_decoder)  # Whisper's specials: <|endoftext|>, languages, tasks, timestamps
    return sorted(i for i in ids if i is not None and 0 <= i < len(tokenizer))
