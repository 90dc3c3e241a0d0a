"""A tiny Whisper's distillation recovery, run by ``tests/scale/test_distributed.py`` alone or under torchrun.

    python dp_worker.py OUT [--crash-at K] [--checkpoint FILE]
    torchrun --nproc_per_node 2 dp_worker.py OUT ...

Every process builds the same teacher, student and labelled batches (8 generated clips, 4 batches of 2), then runs
20 recovery steps over global batches of 2 sub-batches (``accumulate: 2``). Rank 0 writes ``OUT/result.json`` (the
loss per step, where it resumed, how many processes) and ``OUT/student.safetensors``. ``--crash-at K`` stops every
process inside step K, after the checkpoint of step K - 1 (saved every step).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402


def main() -> None:
    from safetensors.torch import save_file

    from speechprune.data.manifest import read_manifest
    from speechprune.models.adapters import adapter_for
    from speechprune.models.decoding import DecodeOptions
    from speechprune.models.whisper.backend import TorchWhisper
    from speechprune.recovery.config import Recovery
    from speechprune.recovery.distill import distill
    from tiny_models import ToyTokenizer, tiny_whisper, toy_vocab

    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--crash-at", type=int, default=0)
    ap.add_argument("--checkpoint", type=Path)
    ap.add_argument("--accumulate", type=int, default=2)
    args = ap.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)

    clips = args.out / f"clips-{rank}"  # each process writes its own copy of the same clips
    clips.mkdir(parents=True, exist_ok=True)
    rng, lines = np.random.default_rng(0), []
    for i in range(8):
        t = np.arange(int(16000 * (0.4 + 0.1 * i))) / 16000
        x = 0.3 * np.sin(2 * np.pi * (200 + 90 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(clips / f"c{i}.wav", x.astype(np.float32), 16000)
        lines.append(json.dumps({"audio": f"c{i}.wav", "text": f"tone {i}", "id": f"c{i}"}))
    (clips / "m.jsonl").write_text("\n".join(lines) + "\n")

    model = tiny_whisper()
    teacher = TorchWhisper(model, ToyTokenizer(), toy_vocab())
    batches = teacher.labelled_batches(read_manifest(clips / "m.jsonl"), 2, DecodeOptions(max_new_tokens=5),
                                       teacher_logits=True)
    student = teacher.model.__class__(teacher.model.config)
    student.load_state_dict(teacher.model.state_dict())
    a = adapter_for(student)
    a.prune_units(student, next(g for g in a.unit_groups(student) if g.key == "encoder.0.ffn"), list(range(8)))
    steps = []

    def crash() -> None:
        steps.append(1)
        if len(steps) == args.crash_at:
            raise SystemExit(3)

    cfg = Recovery(steps=20, lr=1e-3, batch_size=2, accumulate=args.accumulate, checkpoint_seconds=0)
    stats = distill(student, batches, cfg, progress=False, after_step=crash if args.crash_at else None,
                    checkpoint=args.checkpoint)
    if rank == 0:
        (args.out / "result.json").write_text(json.dumps(stats))
        save_file({k: v.contiguous() for k, v in student.state_dict().items()
                   if k != "proj_out.weight"}, str(args.out / "student.safetensors"))


if __name__ == "__main__":
    main()
