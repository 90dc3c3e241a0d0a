"""``--format hf``: a pruned folder as a stock Hugging Face folder, for structures the stock config expresses.

A stock ``WhisperConfig`` has one head count and one FFN width per stack and no notion of a removed block, so a
pruned model fits it when every layer of a stack keeps every head, every block, and one FFN width (layers may be
removed, FFN widths cut uniformly). Anything else is refused with the reason: a plain ``from_pretrained`` would
otherwise refuse mismatched widths or, worse, silently re-initialise a removed block. The written folder carries no
``speechprune_structure`` and is checked by loading it back with ``from_pretrained`` and comparing logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speechprune.errors import ConfigError
from speechprune.evaluate.backends import EXPORT_RECORD

RECORD_FILE = EXPORT_RECORD


def stock_incompatibilities(structure: dict) -> list[str]:
    """Why a family-neutral structure (``adapter.structure``) does not fit a stock config; empty when it does."""
    reasons = []
    for stack in ("encoder", "decoder"):
        if stack not in structure:
            continue
        heads = structure[stack]["original"]["heads"]
        widths = set()
        for i, layer in enumerate(structure[stack]["layers"]):
            for kind, units in layer.items():
                if units is None:
                    reasons.append(f"{stack} layer {i} has no {kind} block")
                elif kind == "ffn":
                    widths.add(units)
                elif units != heads:
                    reasons.append(f"{stack} layer {i} {kind} keeps {units} of {heads} heads")
        if len(widths) > 1:
            reasons.append(f"{stack} FFN widths differ across layers ({', '.join(map(str, sorted(widths)))})")
    return reasons


def export_hf(model_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write ``model_dir`` (dense or pruned) as a stock Hugging Face folder ``out_dir``, atomically; returns a record."""
    import torch

    from speechprune.io import atomic_write_json, check_output_dir, staged_dir
    from speechprune.models.adapters import adapter_for, family_for_model
    from speechprune.models.units import STRUCTURE_KEY
    from speechprune.models.whisper.load import load_whisper

    folder, out = Path(model_dir), Path(out_dir)
    check_output_dir(out, overwrite, source=folder)
    model, processor = load_whisper(folder)
    structure = adapter_for(model).structure(model)
    reasons = stock_incompatibilities(structure)
    from speechprune.models.lowrank import lowrank_ranks

    if lowrank_ranks(model):
        reasons.append(f"{len(lowrank_ranks(model))} linear layers are low-rank factorized")
    if reasons:
        raise ConfigError(f"a stock Hugging Face config cannot express this model: {'; '.join(reasons)} "
                          "(use --format onnx or ct2, or load the folder with speechprune)", folder)
    if hasattr(model.config, STRUCTURE_KEY):
        delattr(model.config, STRUCTURE_KEY)
    with staged_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        processor.save_pretrained(tmp)
        cls = family_for_model(model).load_model_class()
        stock = cls.from_pretrained(tmp, local_files_only=True, trust_remote_code=False).eval()
        x = torch.randn(1, model.config.num_mel_bins, 2 * model.config.max_source_positions)
        ids = torch.tensor([[model.config.decoder_start_token_id]])
        with torch.no_grad():
            diff = float((stock(input_features=x, decoder_input_ids=ids).logits
                          - model(input_features=x, decoder_input_ids=ids).logits).abs().max())
        record = {"format": "hf", "source": str(folder), "out": str(out), "structure": structure,
                  "max_abs_logit_diff": diff}
        atomic_write_json(tmp / RECORD_FILE, record)
    return record
