"""Where a training loop starts: its checkpoint resumed or a fresh start (shared by every trainer here)."""

from __future__ import annotations

from pathlib import Path

from ..recovery.distill import load_recovery_state

CHECKPOINT = "checkpoint.safetensors"  # weights, optimizer, step, losses (``recovery.distill.save_recovery_state``)
LOG = "log.jsonl"


def resume(out: Path, model, opt, fingerprint: str) -> tuple[Path, int, list[float]]:
    """``(checkpoint path, first step, losses so far)``: a checkpoint in ``out`` whose fingerprint matches is loaded
    into ``model`` and ``opt``; a fresh start clears ``out``'s log, so it holds this run's lines only."""
    ckpt = Path(out) / CHECKPOINT
    meta = load_recovery_state(ckpt, model, opt, fingerprint)
    start = int(meta["step"]) if meta else 0
    if start == 0:
        (Path(out) / LOG).unlink(missing_ok=True)
    return ckpt, start, list(meta["losses"]) if meta else []
