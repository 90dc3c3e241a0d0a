"""The LM family: a decoder-only Transformer with a KV cache (``network``) over Whisper's BPE or the CTC family's
characters (``tokens``), its config (``config``), checkpoints (``checkpoint``), FLOPs (``flops``) and pruning
adapter (``adapter``). Fusion into a recognizer's search reads ``LMModel.step`` (``whisper_rows`` and
``whisper_log_probs`` translate Whisper ids)."""

from .checkpoint import folder_tokenizer, folder_tokens, is_lm_folder, load_lm, read_config, save_lm
from .config import CONFIG_FILE, LMConfig, TokenizerId
from .network import IGNORE, LMCache, LMModel, LMOutput
from .tokens import (CHAR_BOUNDARY, CharTokens, WhisperTokens, check_vocabulary, load_tokenizer, recognizer_identity,
                     tokenizer_identity, tokens_for, whisper_log_probs, whisper_rows)

__all__ = ["CHAR_BOUNDARY", "CONFIG_FILE", "IGNORE", "CharTokens", "LMCache", "LMConfig", "LMModel", "LMOutput",
           "TokenizerId", "WhisperTokens", "check_vocabulary", "folder_tokenizer", "folder_tokens", "is_lm_folder",
           "load_lm", "load_tokenizer", "read_config", "recognizer_identity", "save_lm", "tokenizer_identity",
           "tokens_for", "whisper_log_probs", "whisper_rows"]
