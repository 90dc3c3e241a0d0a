"""Text to the LM's rows and back to the recognizer's ids.

Whisper tokens: a line is read as Whisper writes it after its prompt, ``" " + text`` in Whisper's BPE, between two
``<|endoftext|>`` (the first starts the line, as GPT-2's does; the last is the end Whisper predicts). An LM that
keeps only the ids seen in training (``LMConfig.kept``) reads any other id as its last row and scores it at
``LMConfig.unseen_log_prob`` (``whisper_log_probs``), a stated floor rather than -inf, so fusion never vetoes a
word. Characters: row 0 starts and ends a line; a character outside the vocabulary is dropped and counted.

The tokenizer's identity (``tokenizer_identity``: a digest of its vocabulary, merges and added tokens, its size and
the recognizer's output width) is kept in the config, and ``check_vocabulary`` refuses a recognizer whose ids mean
something else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Protocol

import torch

from ...errors import ModelError
from .config import CONFIG_FILE, LMConfig, TokenizerId

CHAR_BOUNDARY = 0  # a character LM's row that starts and ends a line (the CTC blank's index, never a character)


def load_tokenizer(folder: str | Path):
    """The ``WhisperTokenizerFast`` saved in ``folder`` (local files only; no code runs)."""
    from transformers import WhisperTokenizerFast

    try:
        return WhisperTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # OSError, ValueError, tokenizers' exceptions...
        raise ModelError(f"cannot load the Whisper tokenizer: {type(e).__name__}", folder) from None


def tokenizer_identity(tokenizer, n_vocab: int) -> TokenizerId:
    """What makes two Whisper tokenizers give the same ids: vocabulary, merges, added tokens; with the recognizer's
    output width ``n_vocab``."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    vocab = sorted(spec["model"]["vocab"].items(), key=lambda kv: kv[1])
    added = sorted((a["id"], a["content"]) for a in spec.get("added_tokens", []))
    digest = hashlib.sha256(json.dumps({"vocab": vocab, "merges": merges, "added": added}).encode()).hexdigest()
    return TokenizerId(sha256=digest, size=len(tokenizer), n_vocab=n_vocab)


def recognizer_identity(folder: str | Path, vocab_size: int | None = None) -> TokenizerId:
    """The tokenizer identity of a Whisper model folder (its tokenizer and ``config.json`` ``vocab_size``, or the
    given ``vocab_size``: an exported folder's, from its manifest)."""
    from ...io import read_json

    if vocab_size is None:
        raw = read_json(Path(folder) / "config.json", "not a Whisper model folder (no config.json)", folder)
        if not isinstance(raw, dict) or not isinstance(raw.get("vocab_size"), int):
            raise ModelError("config.json has no vocab_size", Path(folder) / "config.json")
        vocab_size = raw["vocab_size"]
    return tokenizer_identity(load_tokenizer(folder), vocab_size)


def check_vocabulary(config: LMConfig, recognizer: TokenizerId, where: str | Path | None = None) -> None:
    """A one-line ``ModelError`` (naming ``where``, the LM folder) unless the LM's ids are the recognizer's."""
    where = Path(where) / CONFIG_FILE if where is not None else None
    if config.tokens != "whisper" or config.tokenizer is None:
        raise ModelError("a character LM does not share Whisper's token ids; it fuses with CTC models", where)
    mine = config.tokenizer
    if mine.size != recognizer.size or mine.n_vocab != recognizer.n_vocab:
        raise ModelError(f"the LM's vocabulary ({mine.size} tokens, {mine.n_vocab} outputs) is not the recognizer's "
                         f"({recognizer.size} tokens, {recognizer.n_vocab} outputs)", where)
    if mine.sha256 != recognizer.sha256:
        raise ModelError(f"the LM's tokenizer (sha256 {mine.sha256[:12]}) is not the recognizer's "
                         f"({recognizer.sha256[:12]}): same size, other tokens", where)


class Tokens(Protocol):
    bos: int
    eos: int

    def encode(self, lines: list[str]) -> list[tuple[list[int], int]]:
        """Per line: its rows (``bos``, the text, ``eos``) and how many of its tokens or characters the LM has no
        row for."""
        ...


class WhisperTokens:
    """Whisper BPE ids as the model's rows: the identity, or (``kept``) the seen ids' rows and one for the rest."""

    def __init__(self, tokenizer, whisper_ids: list[int] | None = None):
        self.tokenizer = tokenizer
        self.eot = tokenizer.eos_token_id  # <|endoftext|>
        self.row_of = None if whisper_ids is None else {w: i for i, w in enumerate(whisper_ids)}
        self.unseen = None if whisper_ids is None else len(whisper_ids)
        self.bos = self.eos = self.row(self.eot)

    def row(self, whisper_id: int) -> int:
        return whisper_id if self.row_of is None else self.row_of.get(whisper_id, self.unseen)

    def whisper_ids(self, lines: list[str]) -> list[list[int]]:
        return self.tokenizer([" " + s for s in lines], add_special_tokens=False).input_ids

    def encode(self, lines: list[str]) -> list[tuple[list[int], int]]:
        out = []
        for ids in self.whisper_ids(lines):
            rows = [self.row(i) for i in ids]
            out.append(([self.bos, *rows, self.eos], sum(r == self.unseen for r in rows)))
        return out


class CharTokens:
    """Characters as the CTC family's classes (``chars[i]`` is row ``i + 1``); row 0 starts and ends a line."""

    def __init__(self, chars: tuple[str, ...]):
        self.index = {c: i + 1 for i, c in enumerate(chars)}
        self.bos = self.eos = CHAR_BOUNDARY

    def encode(self, lines: list[str]) -> list[tuple[list[int], int]]:
        out = []
        for s in lines:
            rows = [self.index[c] for c in s if c in self.index]
            out.append(([self.bos, *rows, self.eos], len(s) - len(rows)))
        return out


def tokens_for(model, tokenizer=None) -> Tokens:
    """How ``model`` reads text (``tokenizer``: the Whisper tokenizer its config names, for Whisper tokens)."""
    cfg: LMConfig = model.config
    if cfg.tokens == "chars":
        return CharTokens(cfg.chars)
    if tokenizer is None:
        raise ModelError("a Whisper-token LM needs its tokenizer")
    return WhisperTokens(tokenizer, model.whisper_ids.tolist() if cfg.kept else None)


def whisper_rows(model, whisper_ids: torch.Tensor) -> torch.Tensor:
    """The model's rows for Whisper ids (any shape): what ``step`` reads when fused with Whisper's search."""
    if not model.config.kept:
        return whisper_ids
    table = torch.full((model.config.tokenizer.n_vocab,), model.config.vocab_size - 1, dtype=torch.long,
                       device=whisper_ids.device)
    table[model.whisper_ids] = torch.arange(len(model.whisper_ids), device=whisper_ids.device)
    return table[whisper_ids]


def whisper_log_probs(model, log_probs: torch.Tensor) -> torch.Tensor:
    """``step``'s ``[B, V]`` log-probabilities as ``[B, n_vocab]`` over every Whisper id (the recognizer's logits'
    width): a kept model's unseen ids at ``unseen_log_prob``."""
    cfg: LMConfig = model.config
    if cfg.tokens != "whisper":
        raise ModelError("whisper_log_probs needs a Whisper-token LM, not a character one")
    if not cfg.kept:
        return log_probs
    full = torch.full((log_probs.shape[0], cfg.tokenizer.n_vocab), cfg.unseen_log_prob, dtype=log_probs.dtype,
                      device=log_probs.device)
    full[:, model.whisper_ids] = log_probs[:, :-1]
    return full
