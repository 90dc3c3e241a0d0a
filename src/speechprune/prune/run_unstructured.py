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

from ..io import atomic_write_json
from ..scale.distributed import is_main
from ..models.sparse import crossover_sparsity, save_sparse
from .imp import imp
from .runner import Job
from .sparse_recipe import SparsifyRecipe
from .unstructured import recipe_sites, sparsify


def run_sparsify(model_name: str, recipe: SparsifyRecipe, out: str | Path, device: str = "cpu",
                 values: str = "float32", overwrite: bool = False, progress: bool = True) -> dict:
    """Prune bundled model or a folder of any family ``model_name`` by ``recipe`` and write ``out`` (see the
    module); returns the record written to ``sparsify.json``."""
    out = Path(out)
    job = Job.open(model_name, device=device)
    model = job.model
    recipe_sites(model, recipe)  # refuse a recipe that does not fit before any calibration
    torch.manual_seed(recipe.seed)
    dense_params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    if recipe.imp is not None:
        result = imp(model, recipe, job.recovery_batches(recipe.imp.recovery, progress), progress=progress)
    else:
        batches = job.calibration_batches(recipe.calibration if recipe.needs_calibration else None, progress)
        result = sparsify(model, recipe, batches, progress=progress)
    seconds = time.perf_counter() - t0
    if not is_main():  # under torchrun the other processes hold the same model; rank 0 writes
        return {}
    dense_dir = job.family.save(model, job.source, out / "model", overwrite=overwrite)
    sparse = save_sparse(model, job.source, out / "sparse", values=values, overwrite=overwrite)
    dense_bytes = (dense_dir / "model.safetensors").stat().st_size
    record = {
        "model": model_name, "source": str(job.source), "family": job.family.name, "recipe": recipe.model_dump(),
        "seconds": seconds, "dense_params": dense_params, **result,
        "disk": {"dense_bytes": dense_bytes, "sparse_bytes": sparse["file_bytes"], "values": values,
                 "ratio": sparse["file_bytes"] / dense_bytes, "layouts": sparse["layouts"],
                 "crossover_bitmask": crossover_sparsity("bitmask", 2 if values == "float16" else 4, 4),
                 "crossover_csr": crossover_sparsity("csr", 2 if values == "float16" else 4, 4)},
        "folders": {"model": str(out / "model"), "sparse": str(out / "sparse")},
    }
    atomic_write_json(out / "sparsify.json", record)
    return record
