"""Shared fixtures: a tiny random Whisper (no downloads) and a few generated clips."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from tiny_models import tiny_whisper


def pytest_configure(config):
    """Under pytest-xdist (``-n``, the default in pyproject.toml) each worker gets its share of the cores, so two
    workers on two cores do not each start two compute threads; subprocesses inherit the setting."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.fixture
def tiny_model():
    return tiny_whisper()


@pytest.fixture
def clips(tmp_path):
    """Five short 16 kHz clips of distinct tones plus noise, and a manifest over them."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(5):
        t = np.arange(int(16000 * (0.5 + 0.2 * i))) / 16000
        x = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(tmp_path / f"c{i}.wav", x.astype(np.float32), 16000)
        lines.append(f'{{"audio": "c{i}.wav", "text": "tone {i}", "id": "c{i}"}}')
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.jsonl"
