"""One step runner for every pruning method (structured, unstructured, low-rank) and every model family.

A run opens the model through its family (``Job.open``: a bundled name or any folder the family seam owns),
labels calibration and recovery audio with the dense model before anything is pruned, then for each step: the
method changes the model, ``Steps.finish`` recovers it by distillation (checkpointed every few minutes, so a
rerun resumes an interrupted recovery), saves it where asked and appends the step to the run's JSON record,
atomically. ``Steps.resumed`` lets a method whose steps can restart from a saved model (low-rank) skip the
steps an earlier run of the same settings finished.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text
from ..models.family import ModelFamily, family_for_folder
from ..models.registry import resolve_model
from ..recovery.config import Recovery
from ..recovery.distill import distill, recovery_batches
from ..scale.distributed import is_main


@dataclass
class Job:
    """The model a run compresses: the name the user gave, its folder, its family and the dense model (the
    teacher; a method prunes a copy or, when it has labelled its data first, the model itself)."""

    name: str
    source: Path
    family: ModelFamily
    model: torch.nn.Module
    device: str = "cpu"

    @classmethod
    def open(cls, model_name: str, device: str = "cpu") -> "Job":
        source = resolve_model(model_name)
        family = family_for_folder(source)
        return cls(model_name, source, family, family.load(source, device=device), device)

    def load(self, folder: str | Path) -> torch.nn.Module:
        """A model of this run's family (an earlier step's folder)."""
        return self.family.load(folder, device=self.device)

    def calibration_batches(self, calibration, progress: bool = True) -> list[dict] | None:
        """The dense model's labelled batches over the calibration data (``prune.recipe.Calibration``, read by the
        family: clips, or an LM's lines; ``None``: no calibration), on the run's device."""
        if calibration is None:
            return None
        batches = self.family.labeller(self.model, self.source).labelled_batches(
            self.family.training_data(self.model, calibration.specs, calibration.utterances, interleave=True),
            calibration.batch_size, progress=progress)
        return [{k: v.to(self.device) for k, v in b.items()} for b in batches]

    def recovery_batches(self, recovery: Recovery | None, progress: bool = True) -> list[dict] | None:
        """The dense teacher's distillation batches for ``recovery`` (``None`` when it has no steps)."""
        if recovery is None or recovery.steps == 0:
            return None
        data = self.family.training_data(self.model, recovery.data, recovery.max_utterances, recovery.interleave)
        return recovery_batches(self.family.labeller(self.model, self.source), recovery, data, progress=progress)

    def record(self, recipe) -> dict:
        return {"model": self.name, "source": str(self.source), "family": self.family.name,
                "recipe": recipe.model_dump(mode="json"), "dense": self.family.shape_record(self.model), "steps": []}


class Steps:
    """Recover, save and record the steps of one run into ``out`` (``out/<record_file>``, ``out/step-N/``,
    ``out/model.txt`` naming the last step's folder)."""

    def __init__(self, job: Job, out: str | Path, record_file: str, record: dict, total: int,
                 recovery: Recovery | None = None, recovery_batches: list[dict] | None = None,
                 save_every_step: bool = True, progress: bool = True):
        self.job, self.out, self.path, self.record, self.total = job, Path(out), Path(out) / record_file, record, total
        self.recovery, self.batches = recovery, recovery_batches
        self.save_every_step, self.progress = save_every_step, progress

    def resumed(self) -> int:
        """Keep the steps of an earlier run with the same model and recipe in ``out`` whose folders load, and return
        the first step left to do; a record of another run is refused (one-line ``ConfigError``)."""
        if not self.path.is_file():
            return 1
        try:
            old = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError("unreadable record; remove it or choose another --out", self.path) from None
        if old.get("recipe") != self.record["recipe"] or old.get("model") != self.record["model"]:
            raise ConfigError("holds a run with another model or recipe; choose another --out", self.path)
        for s in old.get("steps", []):
            if not ("folder" in s and Path(s["folder"]).is_dir() and self.job.family.owns(s["folder"])):
                break
            self.record["steps"].append(s)
        return len(self.record["steps"]) + 1

    def finish(self, step: int, model: torch.nn.Module, entry: dict, after_step=None) -> dict:
        """Recover ``model`` after ``step`` (``after_step`` runs after every optimizer step), save it if asked, and
        append ``entry`` with the model's size and FLOPs to the record."""
        entry = {"step": step, **entry}
        checkpoint = self.out / f"step-{step}.recovery.safetensors"  # a rerun resumes an interrupted recovery
        if self.batches is not None:
            self.out.mkdir(parents=True, exist_ok=True)
            entry["recovery"] = distill(model, self.batches, self.recovery, progress=self.progress,
                                        after_step=after_step, checkpoint=checkpoint)
        entry.update(self.job.family.shape_record(model))  # after recovery: a length-adaptive one adds its buckets
        if self.save_every_step or step == self.total:
            entry["folder"] = str(self.out / f"step-{step}")
        self.record["steps"].append(entry)
        if is_main():  # under torchrun the other processes hold the same model; one writes
            if "folder" in entry:
                self.job.family.save(model, self.job.source, self.out / f"step-{step}", overwrite=True)
            checkpoint.unlink(missing_ok=True)
            atomic_write_json(self.path, self.record)
        return entry

    def close(self) -> dict:
        if is_main():
            atomic_write_text(self.out / "model.txt", f"step-{self.total}\n")
        return self.record


def final_model_dir(out: str | Path) -> Path:
    """The last step's folder of a run in ``out``."""
    out = Path(out)
    return out / (out / "model.txt").read_text().strip()
