"""Saving and loading pruned models: safetensors weights + ``config.json`` carrying the per-layer structure.

A pruned folder is a Hugging Face folder (``model.safetensors``, ``config.json``, ``generation_config.json``,
processor files) whose ``config.json`` also holds ``speechprune_structure`` (see the family adapter's
``structure``). ``load_pruned`` builds the stock model from the config on the meta device, reshapes it with the
adapter's ``apply_structure``, then loads the weights strictly: nothing from the folder is executed (no pickles,
no remote code).

Stock compatibility: when the adapter's ``stock_compatible`` holds (per stack one FFN width for every layer,
layers removed at most, no head pruning, no removed blocks), the stock config fields (``encoder_layers``,
``decoder_ffn_dim``...) describe the model exactly, and the very same folder loads with
``WhisperForConditionalGeneration.from_pretrained`` and ``transformers.pipeline``, which ignore the extra key.
Other folders need ``load_pruned`` (or ``load_whisper``, which detects the key): a plain ``from_pretrained``
refuses mismatched widths, but would silently re-initialise a removed block.

A length-adaptive Whisper (``models.whisper.lengths``) keeps its buckets under ``speechprune_length_buckets``: saved
with the config (checked first), read back by ``load_pruned`` as a config attribute, absent from stock folders.

Low-rank factorized linears (``models.lowrank.LowRankLinear``) are recorded family-neutrally as ``{site key: rank}``
under ``speechprune_lowrank``; ``load_pruned`` rebuilds them after ``apply_structure``. Such a folder is never stock
compatible.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from speechprune.errors import ConfigError, ModelError
from speechprune.io import check_output_dir, staged_dir
from speechprune.models.units import STRUCTURE_KEY

# Processor / tokenizer files copied from a source folder (weights and model configs never are).
PROCESSOR_FILES = (
    "preprocessor_config.json",
    "processor_config.json",
    "feature_extractor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "normalizer.json",
    "chat_template.json",
)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def save_pruned(model, processor_or_tokenizer_folder: Any, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model`` (dense or pruned) to ``out_dir`` atomically: a temporary sibling folder renamed into place.

    ``processor_or_tokenizer_folder`` is a folder whose processor/tokenizer files (``PROCESSOR_FILES``) are
    copied, an object with ``save_pretrained`` (a processor or tokenizer), or ``None``. An existing non-empty
    ``out_dir`` is refused unless ``overwrite``. Returns ``out_dir``.
    """
    from speechprune.models.adapters import adapter_for

    out = Path(out_dir)
    check_output_dir(out, overwrite)
    source = processor_or_tokenizer_folder
    if isinstance(source, (str, Path)) and not Path(source).is_dir():
        raise ConfigError("processor folder does not exist", source)

    from speechprune.models.lowrank import LOWRANK_KEY, lowrank_ranks

    adapter = adapter_for(model)
    setattr(model.config, STRUCTURE_KEY, adapter.structure(model))
    ranks = lowrank_ranks(model)  # read off the modules, so a stale config value never survives a save
    if ranks:
        setattr(model.config, LOWRANK_KEY, ranks)
    elif hasattr(model.config, LOWRANK_KEY):
        delattr(model.config, LOWRANK_KEY)
    from speechprune.models.whisper.lengths import LENGTH_KEY, length_buckets, set_length_buckets

    if getattr(model.config, LENGTH_KEY, None) is not None:  # a length-adaptive Whisper: checked, then saved
        set_length_buckets(model, length_buckets(model.config))
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if isinstance(source, (str, Path)):
            copied = [name for name in PROCESSOR_FILES if (Path(source) / name).is_file()]
            if not copied:
                raise ConfigError("folder has no processor or tokenizer files", source)
            for name in copied:
                shutil.copy2(Path(source) / name, tmp / name)
        elif source is not None:
            source.save_pretrained(tmp)
    return out


def save_pretrained_config(model, processor_or_tokenizer_folder: Any, folder: str | Path) -> None:
    """Everything of a Hugging Face model folder but its weights, into the existing ``folder``: ``config.json``
    with the adapter's structure, the generation config of a model that generates, and the processor/tokenizer
    files of ``processor_or_tokenizer_folder`` (a folder's ``PROCESSOR_FILES`` that exist, an object's
    ``save_pretrained``, or nothing for ``None``). Beside weights in another format (``models.sparse``)."""
    from speechprune.models.adapters import adapter_for

    folder = Path(folder)
    setattr(model.config, STRUCTURE_KEY, adapter_for(model).structure(model))
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None and model.can_generate():
        model.generation_config.save_pretrained(folder)
    source = processor_or_tokenizer_folder
    if isinstance(source, (str, Path)):
        for name in PROCESSOR_FILES:
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, folder / name)
    elif source is not None:
        source.save_pretrained(folder)


def fresh_pretrained(model, seed: int):
    """A freshly initialized Hugging Face model of ``model``'s class, config and (pruned) structure, on its device
    and in its dtype, built by ``_from_config`` under ``torch.manual_seed(seed)``: the family's W(0)."""
    import copy

    import torch

    from speechprune.models.adapters import adapter_for

    config = copy.deepcopy(model.config)
    structure = getattr(config, STRUCTURE_KEY, None)
    p = next(model.parameters())
    torch.manual_seed(seed)
    with torch.device(p.device):
        fresh = type(model)._from_config(config, attn_implementation="sdpa", dtype=p.dtype)
    if structure is not None:
        adapter_for(model).apply_structure(fresh, structure)
    return fresh.eval()


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise ModelError(f"cannot read safetensors index: {_one_line(e)}", index) from None
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelError("no safetensors weights in the folder (pickled .bin weights are not loaded)", folder)
    return files


def _has_processor(folder: Path) -> bool:
    return any((folder / name).is_file() for name in PROCESSOR_FILES)


def load_pruned(folder: str | Path, device: str = "cpu", dtype=None):
    """``(model, processor)`` from a folder written by ``save_pruned`` (or a stock folder of a supported family, a CTC
    model folder of ``models.ctc``, or a compressed sparse folder of :func:`speechprune.models.sparse.save_sparse`: dense tensors rebuilt exactly).

    The model is in eval mode with sdpa attention, its weights' dtype as stored unless ``dtype`` is given; the
    processor is ``None`` when the folder has no processor files. Missing or unexpected weights, or a structure
    that does not fit the config, raise a one-line ``ModelError``.
    """
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoProcessor, GenerationConfig

    from speechprune.models.adapters import family_for_model_type

    from .ctc import is_ctc_folder, load_ctc

    folder = Path(folder)
    if is_ctc_folder(folder):  # the CTC family's own format (speechprune_ctc.json): no processor
        model = load_ctc(folder, device=device)
        return (model if dtype is None else model.to(dtype)), None
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelError("not a model folder (no config.json)", folder)
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read JSON: {_one_line(e)}", config_file) from None
    family = family_for_model_type(raw.get("model_type") if isinstance(raw, dict) else None)
    adapter = family.load_adapter()
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        with torch.device("meta"):
            model = family.load_model_class()._from_config(config, attn_implementation="sdpa")
    except Exception as e:
        raise ModelError(f"cannot build the model from config.json: {_one_line(e)}", folder) from e
    structure = raw.get(STRUCTURE_KEY)
    if structure is not None:
        adapter.apply_structure(model, structure)
    from speechprune.models.lowrank import LOWRANK_KEY, apply_lowrank

    if raw.get(LOWRANK_KEY) is not None:
        try:
            apply_lowrank(model, raw[LOWRANK_KEY])
        except ModelError as e:
            raise ModelError(str(e), config_file) from None

    state: dict[str, torch.Tensor] = {}
    from .sparse import SPARSE_FILE, read_sparse_state

    if (folder / SPARSE_FILE).is_file():  # the compressed format of speechprune.models.sparse
        state = read_sparse_state(folder / SPARSE_FILE)
    for f in [] if state else _weight_files(folder):
        try:
            state.update(load_file(str(f), device="cpu"))
        except Exception as e:
            raise ModelError(f"cannot read weights: {_one_line(e)}", f) from e
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unexpected = sorted(set(state) - set(shapes))
    if unexpected:
        raise ModelError(f"weights do not fit the structure: unexpected {unexpected[:4]}", folder)
    for name, tensor in state.items():
        if tuple(tensor.shape) != shapes[name]:
            raise ModelError(f"weights do not fit the structure: size mismatch for {name}: "
                             f"{tuple(tensor.shape)} in the file, {shapes[name]} in the structure", folder)
    try:
        model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # shape mismatches
        raise ModelError(f"weights do not fit the structure: {_one_line(e)}", folder) from e
    model.tie_weights()
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ModelError(f"weights do not fit the structure: missing {missing[:4]}", folder)

    if (folder / "generation_config.json").is_file() and model.can_generate():
        try:
            model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
        except Exception as e:
            raise ModelError(f"cannot read generation config: {_one_line(e)}", folder) from e
    try:
        model.to(device)
        if dtype is not None:
            model.to(dtype)
    except Exception as e:
        raise ModelError(f"cannot move model to {device!r}: {_one_line(e)}", folder) from e
    model.eval()

    processor = None
    if _has_processor(folder):
        try:
            processor = AutoProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
        except Exception as e:
            raise ModelError(f"cannot load processor: {_one_line(e)}", folder) from e
    return model, processor
