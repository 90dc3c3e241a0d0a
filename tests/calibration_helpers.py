"""Calibration batches for tiny random models (labelled, as the model's loss needs)."""

from __future__ import annotations

import torch


def calibration_batches(family: str, n: int = 2, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        if family == "whisper":
            ids = torch.randint(0, 60, (2, 6), generator=g)
            out.append({"input_features": torch.randn(2, 80, 3000, generator=g), "decoder_input_ids": ids,
                        "labels": torch.randint(0, 60, (2, 6), generator=g)})
        elif family == "ctc":  # models.ctc: a training batch is the forward's arguments
            out.append({"features": torch.randn(2, 16, 60, generator=g), "lengths": torch.tensor([60, 44]),
                        "targets": torch.randint(1, 30, (7,), generator=g), "target_lengths": torch.tensor([4, 3])})
        else:
            out.append({"input_values": torch.randn(2, 4000, generator=g),
                        "labels": torch.randint(1, 12, (2, 5), generator=g)})
    return out


def teacher_batches(teacher, n: int = 2, seed: int = 0) -> list[dict]:
    """Whisper distillation batches: the teacher's logits at every label position."""
    batches = calibration_batches("whisper", n, seed)
    with torch.no_grad():
        for b in batches:
            out = teacher(input_features=b["input_features"], decoder_input_ids=b["decoder_input_ids"])
            b["teacher_logits"] = out.logits[b["labels"] != -100].half()
    return batches
