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

from ..models.adapters import adapter_for
from .recipe import Recipe
from .runner import Job, Steps
from .structured import StepReport, prune


def run_prune(model_name: str, recipe: Recipe, out: str | Path, device: str = "cpu", progress: bool = True) -> dict:
    """Prune ``model_name`` (a bundled name or a folder of any family) by ``recipe`` into ``out`` (see the
    module); returns the record written to ``prune.json``."""
    job = Job.open(model_name, device=device)
    model = job.model
    adapter = adapter_for(model)
    torch.manual_seed(recipe.seed)
    batches = job.calibration_batches(recipe.calibration if recipe.needs_calibration else None, progress)
    steps = Steps(job, out, "prune.json", job.record(recipe), recipe.schedule.steps, recipe.recovery,
                  job.recovery_batches(recipe.recovery, progress), recipe.schedule.save_every_step, progress)

    def on_step(step: int, m, report: StepReport) -> None:
        steps.finish(step, m, {"removed_modules": report.removed_modules, "removed_layers": report.removed_layers,
                               "kept_units": report.kept_units, "reconstruction": report.reconstruction})

    reference = copy.deepcopy(model) if recipe.reconstruct else None
    prune(model, adapter, recipe, batches, on_step=on_step, reference=reference)
    return steps.close()
