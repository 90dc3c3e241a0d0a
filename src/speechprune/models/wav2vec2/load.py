"""Loading a Hugging Face ``Wav2Vec2ForCTC`` folder: the model (stock, or pruned / factorized / sparse through
``models.checkpoint.load_pruned``), its ``Wav2Vec2CTCTokenizer`` and its front end (``preprocessor_config.json``).

Nothing from the folder is executed: safetensors weights only (pickled ``.bin`` weights are refused), no remote
code, no hub. A broken folder is a one-line ``ModelError`` naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

from speechprune.data.audio import SAMPLE_RATE
from speechprune.data.features import WaveformFrontend
from speechprune.errors import ModelError
from speechprune.io import read_json
from speechprune.models.units import LOWRANK_KEY, STRUCTURE_KEY

ARCHITECTURE = "Wav2Vec2ForCTC"
PREPROCESSOR = "preprocessor_config.json"
WHAT = "a wav2vec2 CTC folder (config.json with model_type 'wav2vec2' and architectures ['Wav2Vec2ForCTC'])"


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def is_wav2vec2_folder(folder: str | Path) -> bool:
    """True when ``folder/config.json`` says ``model_type`` wav2vec2 and lists ``Wav2Vec2ForCTC`` among its
    ``architectures`` (a pretrained ``Wav2Vec2Model`` without a CTC head is not one)."""
    try:
        raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        return raw.get("model_type") == "wav2vec2" and ARCHITECTURE in (raw.get("architectures") or [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
        return False


def _check_folder(folder: Path) -> dict:
    if not folder.is_dir():
        raise ModelError("model folder does not exist", folder)
    raw = read_json(folder / "config.json", missing=f"not {WHAT}: no config.json", where=folder)
    if not is_wav2vec2_folder(folder):
        raise ModelError(f"not {WHAT}", folder)
    return raw


def load_wav2vec2(folder: str | Path, device: str = "cpu"):
    """The ``Wav2Vec2ForCTC`` in ``folder``, float32, sdpa attention, in eval mode. A folder written by speechprune
    (``speechprune_structure`` / ``speechprune_lowrank`` in its config, or a compressed sparse one) is rebuilt by
    ``load_pruned``; a stock one by ``from_pretrained`` (safetensors only)."""
    import torch

    from ..sparse import SPARSE_FILE

    folder = Path(folder)
    raw = _check_folder(folder)
    if STRUCTURE_KEY in raw or LOWRANK_KEY in raw or (folder / SPARSE_FILE).is_file():
        from ..checkpoint import load_pruned

        model, _ = load_pruned(folder, device=device, dtype=torch.float32)
        return model
    if not (any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file()):
        raise ModelError("no safetensors weights in the folder (pickled .bin weights are not loaded)", folder)
    from transformers import Wav2Vec2ForCTC

    try:
        model = Wav2Vec2ForCTC.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                               trust_remote_code=False, dtype=torch.float32,
                                               attn_implementation="sdpa")
    except Exception as e:  # transformers raises OSError, ValueError, safetensors errors...
        raise ModelError(f"cannot load the wav2vec2 model: {_one_line(e)}", folder) from None
    try:
        model.to(device)
    except Exception as e:
        raise ModelError(f"cannot move the wav2vec2 model to {device!r}: {_one_line(e)}", folder) from None
    return model.eval()


def load_tokenizer(folder: str | Path, vocab_size: int, pad_token_id: int | None = None):
    """The folder's ``Wav2Vec2CTCTokenizer`` (``vocab.json`` and its configs), checked against the model: its pad
    token (the CTC blank) is an output of the head (``vocab_size`` outputs) and, where the config names one, the
    same as the config's ``pad_token_id``."""
    from transformers import Wav2Vec2CTCTokenizer

    folder = Path(folder)
    if not (folder / "vocab.json").is_file():
        raise ModelError("no Wav2Vec2CTCTokenizer vocabulary (vocab.json) in the folder", folder)
    try:
        tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as e:
        raise ModelError(f"cannot load the Wav2Vec2CTCTokenizer: {_one_line(e)}", folder) from None
    blank = tokenizer.pad_token_id
    if blank is None or not 0 <= blank < vocab_size:
        raise ModelError(f"the tokenizer's pad token (the CTC blank) has id {blank}, outside the model's "
                         f"{vocab_size} outputs", folder)
    if pad_token_id is not None and pad_token_id != blank:
        raise ModelError(f"the tokenizer's pad token id {blank} is not the config's pad_token_id {pad_token_id} "
                         "(the CTC blank the model was trained with)", folder)
    return tokenizer


def read_frontend(folder: str | Path) -> WaveformFrontend:
    """The waveform front end ``preprocessor_config.json`` describes (``do_normalize``, default true, and
    ``padding_value``); a sampling rate other than 16 kHz or more than one feature per sample is refused. No file:
    the ``Wav2Vec2FeatureExtractor`` defaults."""
    path = Path(folder) / PREPROCESSOR
    if not path.is_file():
        return WaveformFrontend()
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise ModelError("not a JSON object", path)
    if int(raw.get("sampling_rate", SAMPLE_RATE)) != SAMPLE_RATE or int(raw.get("feature_size", 1)) != 1:
        raise ModelError(f"the model reads {raw.get('feature_size')} feature(s) at {raw.get('sampling_rate')} Hz; "
                         f"speechprune feeds 16 kHz waveforms (feature_size 1, sampling_rate {SAMPLE_RATE})", path)
    return WaveformFrontend(normalize=bool(raw.get("do_normalize", True)),
                            padding_value=float(raw.get("padding_value", 0.0)))
