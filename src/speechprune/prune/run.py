"""``speechprune prune``: load, calibrate, prune step by step, recover, save a model at every step.

Output folder::

    OUT/step-1/ ... OUT/step-N/   a loadable pruned model after each step (safetensors + JSON)
    OUT/model -> the last step's folder (a copy-free pointer file ``OUT/model.txt`` names it)
    OUT/prune.json                recipe, per-step parameters, FLOPs, removed modules/layers, recovery losses
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..bench import flops as F
from ..evaluate.backends import TorchWhisper
from ..io import atomic_write_json, atomic_write_text
from ..models.adapters import adapter_for
from ..models.checkpoint import save_pruned
from ..models.registry import resolve_model
from ..models.whisper import whisper_shape
from .recipe import Recipe
from .structured import StepReport, prune


def shape_record(model) -> dict:
    shape = whisper_shape(model)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "flops_encoder": F.encoder_flops(shape).total,
        "flops_decoder_per_token": F.decoder_token_flops(shape, 3),
        "flops_decoder_first_step": F.decoder_first_step_flops(shape, 2),
    }


def run_prune(model_name: str, recipe: Recipe, out: str | Path, device: str = "cpu", progress: bool = True) -> dict:
    from ..recovery.distill import distill, recovery_batches

    out = Path(out)
    src = resolve_model(model_name)
    student = TorchWhisper.from_folder(src, device=device)
    model = student.model
    adapter = adapter_for(model)
    torch.manual_seed(recipe.seed)

    batches = None
    if recipe.needs_calibration:
        cal = recipe.calibration
        utts = cal.clips()
        batches = student.labelled_batches(utts, cal.batch_size, progress=progress)
        batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    rec_batches = None
    if recipe.recovery is not None and recipe.recovery.steps > 0:
        rec_batches = recovery_batches(student, recipe.recovery, progress=progress)

    record = {"model": model_name, "source": str(src), "recipe": recipe.model_dump(), "dense": shape_record(model),
              "steps": []}

    def on_step(step: int, m, report: StepReport) -> None:
        entry = {"step": step, "removed_modules": report.removed_modules, "removed_layers": report.removed_layers,
                 "kept_units": report.kept_units, "reconstruction": report.reconstruction, **shape_record(m)}
        checkpoint = out / f"step-{step}.recovery.safetensors"  # a rerun resumes an interrupted recovery from it
        if rec_batches is not None:
            out.mkdir(parents=True, exist_ok=True)
            entry["recovery"] = distill(m, rec_batches, recipe.recovery, progress=progress, checkpoint=checkpoint)
        if recipe.schedule.save_every_step or step == recipe.schedule.steps:
            save_pruned(m, src, out / f"step-{step}", overwrite=True)
            entry["folder"] = str(out / f"step-{step}")
        checkpoint.unlink(missing_ok=True)
        record["steps"].append(entry)
        atomic_write_json(out / "prune.json", record)

    reference = copy.deepcopy(model) if recipe.reconstruct else None
    prune(model, adapter, recipe, batches, on_step=on_step, reference=reference)
    atomic_write_text(out / "model.txt", f"step-{recipe.schedule.steps}\n")
    return record


def final_model_dir(out: str | Path) -> Path:
    out = Path(out)
    return out / (out / "model.txt").read_text().strip()

