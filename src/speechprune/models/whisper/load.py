"""Loading a Hugging Face Whisper folder, dense or pruned (``speechprune_structure`` or ``speechprune_lowrank`` in its
config.json sends it through ``models.checkpoint.load_pruned``), length-adaptive or not (``speechprune_length_buckets``,
:mod:`.lengths`: kept on the config, checked here)."""

from __future__ import annotations

import json
from pathlib import Path

from speechprune.errors import ConfigError, ModelError
from speechprune.io import read_json
from speechprune.models.units import LOWRANK_KEY, STRUCTURE_KEY


def is_whisper_folder(folder: Path | str) -> bool:
    """True when ``folder/config.json`` exists and says ``model_type == "whisper"``."""
    config = Path(folder) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "whisper"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def _check_length_buckets(raw_config: dict, config_file: Path) -> None:
    """A one-line ``ModelError`` naming ``config.json`` when its length buckets are malformed."""
    from .lengths import LENGTH_KEY, check_buckets

    if raw_config.get(LENGTH_KEY) is None:
        return
    try:
        check_buckets(raw_config[LENGTH_KEY], int(raw_config.get("max_source_positions", 1500)))
    except ConfigError as e:
        raise ModelError(str(e), config_file) from None


def load_whisper(folder: Path | str, device: str = "cpu", dtype=None):
    """Load ``(WhisperForConditionalGeneration, WhisperProcessor)`` from a local folder, in eval mode, sdpa attention.

    Never runs code from the folder (no ``trust_remote_code``) and never reaches a hub. ``dtype`` defaults to
    ``torch.float32``. Failures become a one-line ``ModelError`` naming the folder.
    """
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError("model folder does not exist", folder)
    if not is_whisper_folder(folder):
        raise ModelError("not a Whisper model folder (no config.json with model_type 'whisper')", folder)
    dtype = torch.float32 if dtype is None else dtype
    raw_config = read_json(folder / "config.json")
    _check_length_buckets(raw_config, folder / "config.json")
    if STRUCTURE_KEY in raw_config or LOWRANK_KEY in raw_config:  # pruned: per-layer widths, removed blocks, low rank
        from speechprune.models.checkpoint import load_pruned

        model, processor = load_pruned(folder, device=device, dtype=dtype)
        if processor is None:
            raise ModelError("pruned Whisper folder has no processor files (tokenizer.json, ...)", folder)
        return model, processor
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            folder,
            dtype=dtype,
            attn_implementation="sdpa",
            local_files_only=True,
            trust_remote_code=False,
        )
        processor = WhisperProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises OSError, ValueError, safetensors errors...
        raise ModelError(f"cannot load Whisper model: {_one_line(e)}", folder) from e
    try:
        model.to(device)
    except Exception as e:
        raise ModelError(f"cannot move Whisper model to {device!r}: {_one_line(e)}", folder) from e
    model.eval()
    return model, processor

