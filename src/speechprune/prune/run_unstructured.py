"""``speechprune sparsify``: load, calibrate (or label recovery data), prune unstructured / N:M / IMP, save.

Output folder::

    OUT/model/        the pruned model as a plain loadable folder (dense tensors with zeros; masks folded)
    OUT/sparse/       the same weights in the compressed format (speechprune.models.sparse), loadable too
    OUT/sparsify.json recipe, sparsity reached per site, parameters and nonzeros, disk bytes dense vs sparse, rounds
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..evaluate.backends import TorchWhisper
from ..models.sparse import crossover_sparsity, save_sparse
from ..io import atomic_write_json
from ..models.checkpoint import save_pruned
from ..models.registry import resolve_model
from ..recovery.distill import recovery_batches
from .imp import imp
from .sparse_recipe import SparsifyRecipe
from .unstructured import recipe_sites, sparsify


def run_sparsify(model_name: str, recipe: SparsifyRecipe, out: str | Path, device: str = "cpu",
                 values: str = "float32", overwrite: bool = False, progress: bool = True) -> dict:
    """Prune bundled model or Whisper folder ``model_name`` by ``recipe`` and write ``out`` (see the module);
    returns the record written to ``sparsify.json``."""
    out = Path(out)
    src = resolve_model(model_name)
    student = TorchWhisper.from_folder(src, device=device)
    model = student.model
    recipe_sites(model, recipe)  # refuse a recipe that does not fit before any calibration
    torch.manual_seed(recipe.seed)
    dense_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    if recipe.imp is not None:
        rc = recipe.imp.recovery
        batches = recovery_batches(student, rc, progress=progress) if rc.steps > 0 else None
        result = imp(model, recipe, batches, progress=progress)
    else:
        batches = None
        if recipe.needs_calibration:
            cal = recipe.calibration
            utts = cal.clips()
            batches = student.labelled_batches(utts, cal.batch_size, progress=progress)
        result = sparsify(model, recipe, batches, progress=progress)
    seconds = time.perf_counter() - t0
    dense_dir = save_pruned(model, src, out / "model", overwrite=overwrite)
    sparse = save_sparse(model, src, out / "sparse", values=values, overwrite=overwrite)
    dense_bytes = (dense_dir / "model.safetensors").stat().st_size
    record = {
        "model": model_name, "source": str(src), "recipe": recipe.model_dump(), "seconds": seconds,
        "dense_params": dense_params, **result,
        "disk": {"dense_bytes": dense_bytes, "sparse_bytes": sparse["file_bytes"], "values": values,
                 "ratio": sparse["file_bytes"] / dense_bytes, "layouts": sparse["layouts"],
                 "crossover_bitmask": crossover_sparsity("bitmask", 2 if values == "float16" else 4, 4),
                 "crossover_csr": crossover_sparsity("csr", 2 if values == "float16" else 4, 4)},
        "folders": {"model": str(out / "model"), "sparse": str(out / "sparse")},
    }
    atomic_write_json(out / "sparsify.json", record)
    return record
