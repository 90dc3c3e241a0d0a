"""The long-window helpers of bench/length_adaptive.py (issue 18, clips of 10-30 s): grouping by source, the
minimum-duration filter and the summary, on tiny synthetic WAVs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import soundfile as sf

from speechprune.data.manifest import Utterance
from speechprune.data.pack import pack_utterances

BENCH = Path(__file__).resolve().parents[2] / "bench" / "length_adaptive.py"


def _bench():
    spec = importlib.util.spec_from_file_location("length_adaptive_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _clip(folder: Path, uid: str, seconds: float) -> Utterance:
    path = folder / f"{uid.replace('/', '_')}.wav"
    sf.write(path, np.full(int(seconds * 16000), 0.1, np.float32), 16000)
    return Utterance(id=uid, audio=path.resolve(), text=uid, language="en", task="transcribe")


def test_source_groups_keep_order_within_each_source(tmp_path):
    la = _bench()
    utts = [_clip(tmp_path, i, 0.1) for i in ("drascula/a", "saytime/b", "drascula/c")]
    assert [(s, [u.id for u in g]) for s, g in la.source_groups(utts, True)] == [
        ("drascula", ["drascula/a", "drascula/c"]), ("saytime", ["saytime/b"])]
    assert [(s, len(g)) for s, g in la.source_groups(utts, False)] == [(None, 3)]


def test_long_windows_drop_the_short_tail(tmp_path):
    la = _bench()
    utts = [_clip(tmp_path, f"u{i}", s) for i, s in enumerate((1.0, 1.0, 1.5, 0.5))]
    # windows of <= 3 s, 0.5 s of silence after each clip: [1.0+0.5+1.0+0.5] = 3.0 s, [1.5+0.5+0.5+0.5] = 3.0 s
    windows = pack_utterances(utts, 3.0, tmp_path / "packed", gap_seconds=0.5)
    kept, dropped = la.long_windows(windows, 2.5)
    assert [w.duration for w in kept] == [3.0, 3.0] and dropped == []
    kept, dropped = la.long_windows(pack_utterances(utts[:3], 3.0, tmp_path / "p2", gap_seconds=0.5), 2.5)
    assert [w.duration for w in kept] == [3.0] and [w.duration for w in dropped] == [2.0]
    summary = la.long_summary(kept, 3)
    assert summary["n_windows"] == 1 and summary["minutes"] == 3.0 / 60
    assert summary["seconds_min"] == summary["seconds_max"] == 3.0 and "windows_by_source" not in summary
