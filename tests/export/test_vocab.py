"""The restricted English output vocabulary: built from word lists and text corpora, never from transcripts."""

from __future__ import annotations

import pytest

from speechprune.errors import ConfigError
from speechprune.export.vocab import WORD_LIST, english_output_vocab, token_ids_used, word_forms


def test_word_forms_are_written_as_the_decoder_writes_words():
    assert word_forms(["pin", " PIN ", ""]) == [" pin", " Pin", " pin", " pin", " Pin", " PIN"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import WhisperTokenizerFast

    from speechprune.models.registry import resolve_model

    return WhisperTokenizerFast.from_pretrained(resolve_model("whisper-tiny.en"), local_files_only=True)


@pytest.mark.skipif(not WORD_LIST.is_file(), reason="apt-get install wamerican")
def test_english_vocabulary_keeps_english_words_bytes_and_specials_and_drops_the_rest(tokenizer, tmp_path):
    words = tmp_path / "words"
    words.write_text("password\nvoicemail\nextension\n")
    vocab = english_output_vocab(tokenizer, n_sentences=200, word_list=words)
    assert vocab == sorted(set(vocab))
    kept = set(vocab)
    for text in (" Password", " voicemail", " Extension"):
        assert set(tokenizer.encode(text, add_special_tokens=False)) <= kept
    assert set(range(256)) <= kept  # any string stays spellable
    for special in ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|0.00|>"):
        assert tokenizer.convert_tokens_to_ids(special) in kept
    assert token_ids_used(tokenizer, [" Kubernetes"]) - kept  # a word in no source is spelled from pieces
    assert len(vocab) < len(tokenizer) // 2  # a tiny word list and 200 sentences keep little


def test_a_missing_word_list_is_named(tokenizer, tmp_path):
    with pytest.raises(ConfigError, match="apt-get install wamerican"):
        english_output_vocab(tokenizer, word_list=tmp_path / "nope")
