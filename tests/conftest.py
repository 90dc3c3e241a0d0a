"""Shared fixtures: a tiny random Whisper (no downloads) and a few generated clips."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from tiny_models import tiny_whisper


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
