"""Tiny random LMs and a tiny Whisper "recognizer" folder (byte-level tokenizer, no merges) for the LM tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.conftest import TINY_VOCAB, write_tiny_tokenizer
from speechprune.models.ctc.config import ENGLISH_CHARS
from speechprune.models.lm import LMConfig, LMModel, load_tokenizer, recognizer_identity

SIZES = dict(d_model=32, n_layers=3, n_heads=4, ffn_dim=48, context=40, dropout=0.0)


def recognizer(root: Path) -> Path:
    """A folder with the tiny tokenizer and a Whisper ``config.json`` (output width ``TINY_VOCAB``): what an LM
    takes its tokenizer from."""
    from transformers import WhisperTokenizerFast

    folder = root / "recognizer"
    if not (folder / "config.json").is_file():
        tok = write_tiny_tokenizer(root / "tok" / "tokenizer.json")
        WhisperTokenizerFast(tokenizer_file=str(tok), pad_token="<|endoftext|>").save_pretrained(folder)
        (folder / "config.json").write_text(json.dumps({"model_type": "whisper", "vocab_size": TINY_VOCAB}))
    return folder


def tiny_lm(tokens: str = "chars", root: Path | None = None, kept: list[int] | None = None, seed: int = 0, **kw):
    """A random LM (eval mode) over characters, or over the tiny tokenizer of ``recognizer(root)`` (``kept``: only
    these Whisper ids have rows). ``(model, tokenizer or None)``."""
    sizes = {**SIZES, **kw}
    tokenizer = None
    if tokens == "chars":
        cfg = LMConfig(tokens="chars", chars=ENGLISH_CHARS, vocab_size=len(ENGLISH_CHARS) + 1, **sizes)
    else:
        folder = recognizer(root)
        tokenizer = load_tokenizer(folder)
        identity = recognizer_identity(folder)
        if kept is None:
            cfg = LMConfig(tokens="whisper", tokenizer=identity, vocab_size=identity.n_vocab, **sizes)
        else:
            cfg = LMConfig(tokens="whisper", tokenizer=identity, vocab_size=len(kept) + 1, kept=True,
                           unseen_log_prob=-15.0, **sizes)
    torch.manual_seed(seed)
    model = LMModel(cfg)
    with torch.no_grad():  # sharper than GPT-2's initialization, so outputs differ clearly between tokens
        model.embed.weight.mul_(10)
        if kept is not None:
            model.whisper_ids.copy_(torch.tensor(sorted(kept)))
    return model.eval(), tokenizer


def toy_lm(context: int = SIZES["context"], seed: int = 0):
    """A random Whisper-token LM over the toy Whisper ids of ``tiny_models`` (64 outputs)."""
    from speechprune.models.lm import TokenizerId
    from tiny_models import VOCAB

    cfg = LMConfig(tokens="whisper", tokenizer=TokenizerId(sha256="0" * 64, size=VOCAB, n_vocab=VOCAB),
                   vocab_size=VOCAB, **{**SIZES, "context": context})
    torch.manual_seed(seed)
    model = LMModel(cfg)
    with torch.no_grad():
        model.embed.weight.mul_(10)
    return model.eval()
