"""A ``Wav2Vec2CTCTokenizer`` as a CTC vocabulary: spelling references, reading hypotheses back, and CTC search
with the blank wherever the tokenizer's pad token sits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import Wav2Vec2CTCTokenizer

from speechprune.models.wav2vec2.vocab import TokenizerVocab, ctc_search


def _tokenizer(tmp_path, tokens):
    (tmp_path / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    return Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))


def test_references_are_spelled_and_hypotheses_read_back(tmp_path):
    vocab = TokenizerVocab(_tokenizer(tmp_path, ["<pad>", "<s>", "</s>", "<unk>", "|", "t", "o", "n", "e", "'"]))
    assert vocab.blank == 0
    ids = vocab.encode("tone to ton'")
    assert ids == [5, 6, 7, 8, 4, 5, 6, 4, 5, 6, 7, 9]
    assert vocab.decode(ids) == "tone to ton'"
    assert vocab.decode([4, 5, 4, 4, 6, 3, 1, 4]) == "t o"  # delimiters become single spaces, specials go
    assert vocab.unknown("tone 4x") == {"4", "x"}
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.encode("tonx")


def test_a_vocabulary_of_capitals_spells_normalized_text_in_capitals(tmp_path):
    vocab = TokenizerVocab(_tokenizer(tmp_path, ["<pad>", "<s>", "</s>", "<unk>", "|", "T", "O", "N", "E", "'"]))
    assert vocab.upper and vocab.encode("to ne") == [5, 6, 4, 7, 8]
    assert vocab.decode([5, 6, 4, 7, 8]) == "TO NE"


def _greedy(log_probs, lengths, blank):
    out = []
    for row, n in zip(log_probs.argmax(-1).tolist(), lengths.tolist()):
        ids = [t for j, t in enumerate(row[:n]) if t != blank and (j == 0 or row[j - 1] != t)]
        out.append(ids)
    return out


@pytest.mark.parametrize("blank", [0, 3, 7])
def test_ctc_search_reads_the_blank_where_the_tokenizer_puts_it(blank):
    g = torch.Generator().manual_seed(blank)
    log_probs = torch.log_softmax(3 * torch.randn(3, 40, 8, generator=g), dim=-1)
    lengths = torch.tensor([40, 25, 0])
    assert ctc_search(log_probs, lengths, blank) == _greedy(log_probs, lengths, blank)
    # prefix beam search sums the paths of one text: its best text is at least as likely as the best path's
    beam = ctc_search(log_probs, lengths, blank, beam_size=8)
    assert beam[2] == [] and all(blank not in seq for seq in beam)
    sharp = torch.full((1, 6, 8), -30.0)  # one path holds all the mass: beam and greedy agree
    for t, c in enumerate([1, 1, blank, 1, 2, blank]):
        sharp[0, t, c] = 0.0
    assert ctc_search(sharp, torch.tensor([6]), blank, beam_size=4) == [[1, 1, 2]] == ctc_search(
        sharp, torch.tensor([6]), blank)
