"""A briefly fine-tuned copy of a Whisper model, for weight-change signatures "before and after fine-tuning".

Cross-entropy on the reference texts of dev prompts (no teacher term: ``kl_weight`` 0) for a few optimizer steps,
through the recovery trainer (``speechprune.recovery.distill``); the copy is written with ``save_pruned``. Uses dev
utterances after the first 32 (the ones ablation scores on) so the two analyses see different prompts.

    .venv/bin/python bench/finetune_for_signatures.py --out runs/analysis/tiny.en-ft [--steps 30]
    speechprune analyze signatures whisper-tiny.en runs/analysis/tiny.en-ft --out runs/analysis/sig-ft
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from speechprune.data.datasets import load_dataset
from speechprune.io import atomic_write_json
from speechprune.models.checkpoint import save_pruned
from speechprune.models.registry import resolve_model
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.recovery.config import Recovery
from speechprune.recovery.distill import distill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--utterances", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    folder = resolve_model(args.model)
    teacher = TorchWhisper.from_folder(folder)
    utts = load_dataset("asterisk", "dev")[32 : 32 + args.utterances]
    batches = teacher.labelled_batches(utts, 8, pseudo_labels=False, teacher_logits=True, progress=True)
    student = copy.deepcopy(teacher.model)
    cfg = Recovery(steps=args.steps, batch_size=8, lr=args.lr, kl_weight=0.0, ce_weight=1.0)
    stats = distill(student, batches, cfg)
    save_pruned(student, folder, args.out, overwrite=True)
    atomic_write_json(f"{args.out}/finetune.json", {"model": args.model, "utterances": len(utts),
                                                    "recovery": cfg.model_dump(), "stats": stats})
    print(json.dumps(stats))


if __name__ == "__main__":
    main()
