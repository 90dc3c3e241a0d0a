"""A ``Wav2Vec2CTCTokenizer`` as a CTC vocabulary: its pad token is the blank, its word delimiter (``|``) a space.

The search itself is the CTC family's (``models.ctc.vocab``: greedy and prefix beam search with the blank at id 0):
a tokenizer whose blank sits elsewhere has the blank's column swapped with column 0 before the search and the
ids swapped back after it, which changes nothing else (the swap is a relabelling of the outputs).
"""

from __future__ import annotations

import torch

from ..ctc.vocab import greedy_ctc, prefix_beam_search


class TokenizerVocab:
    """Spelling reference texts in a tokenizer's characters and reading hypotheses back."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.blank = int(tokenizer.pad_token_id)
        self.delimiter = tokenizer.word_delimiter_token
        vocab = tokenizer.get_vocab()
        self.index = {t: int(i) for t, i in vocab.items() if len(t) == 1}
        letters = [t for t in self.index if t.isalpha()]
        # a vocabulary of capitals (wav2vec2-base-960h) spells the normalizer's lower-case text in capitals
        self.upper = bool(tokenizer.do_lower_case) or (bool(letters) and not any(t.islower() for t in letters))

    def _token(self, ch: str) -> str:
        return self.delimiter if ch == " " else (ch.upper() if self.upper else ch)

    def unknown(self, text: str) -> set[str]:
        """The characters of ``text`` (normalized) the vocabulary cannot spell."""
        return {c for c in text if self._token(c) not in self.index}

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` (normalized); ``ValueError`` naming the characters outside the vocabulary."""
        bad = self.unknown(text)
        if bad:
            raise ValueError(f"characters outside the vocabulary: {''.join(sorted(bad))!r}")
        return [self.index[self._token(c)] for c in text]

    def decode(self, ids: list[int]) -> str:
        """The text of already collapsed CTC ids (special tokens dropped, the word delimiter a space)."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True, group_tokens=False,
                                     clean_up_tokenization_spaces=False)
        return " ".join(text.split())

    def search(self, log_probs: torch.Tensor, lengths: torch.Tensor, beam_size: int = 1) -> list[list[int]]:
        return ctc_search(log_probs, lengths, self.blank, beam_size)


def ctc_search(log_probs: torch.Tensor, lengths: torch.Tensor, blank: int, beam_size: int = 1) -> list[list[int]]:
    """Token ids per item of ``log_probs`` ``[N, T, V]`` read to ``lengths``, ``blank`` the CTC blank: greedy
    (``beam_size`` 1) or prefix beam search (``models.ctc.vocab``, with the blank's column swapped to 0)."""
    perm = None
    if blank != 0:
        perm = list(range(log_probs.shape[-1]))
        perm[0], perm[blank] = blank, 0
        log_probs = log_probs[..., perm]
    if beam_size > 1:
        ids = [prefix_beam_search(row, int(n), beam_size) for row, n in zip(log_probs, lengths)]
    else:
        ids = greedy_ctc(log_probs, lengths)
    return ids if perm is None else [[perm[i] for i in seq] for seq in ids]
