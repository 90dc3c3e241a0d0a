import json

import numpy as np
import pytest
import soundfile as sf

from speechprune.data.audio import load_audio
from speechprune.data.manifest import read_manifest
from speechprune.data.pack import pack_utterances


@pytest.fixture
def manifest(tmp_path):
    """Clips of 0.8, 1.2, 0.6, 1.0 (German), 0.9 s, one of 5 s and one missing file."""
    lines = []
    for i, (sec, lang) in enumerate([(0.8, "en"), (1.2, "en"), (0.6, "en"), (1.0, "de"), (0.9, "en"), (5.0, "en")]):
        sf.write(tmp_path / f"c{i}.wav", np.full(int(16000 * sec), 0.01 * (i + 1), np.float32), 16000,
                 subtype="FLOAT")
        lines.append({"audio": f"c{i}.wav", "text": f"clip {i}", "id": f"c{i}", "language": lang})
    lines.insert(2, {"audio": "gone.wav", "text": "missing", "id": "gone"})
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return read_manifest(tmp_path / "m.jsonl")


def test_clips_are_packed_in_order_with_silence_between(manifest, tmp_path):
    wins = pack_utterances(manifest, 3.0, tmp_path / "packed", gap_seconds=0.25)
    # c0 + c1 (2.5 s with gaps), then c2 alone (c3 is German), c3, c4; c5 (5 s) and the missing file left out
    assert [w.text for w in wins] == ["clip 0 clip 1", "clip 2", "clip 3", "clip 4"]
    assert [w.language for w in wins] == ["en", "en", "de", "en"]
    first = load_audio(wins[0].audio)
    expected = np.concatenate([np.full(12800, 0.01), np.zeros(4000), np.full(19200, 0.02), np.zeros(4000)])
    np.testing.assert_allclose(first, expected, atol=1e-6)
    assert all(w.duration <= 3.0 and w.audio.parent == tmp_path / "packed" for w in wins)


def test_a_window_never_exceeds_its_length(manifest, tmp_path):
    for seconds, clips_that_fit in ((1.0, 4), (2.0, 5), (6.0, 6)):
        wins = pack_utterances(manifest, seconds, tmp_path / str(seconds))
        assert all(len(load_audio(w.audio)) <= seconds * 16000 for w in wins)
        assert sum(w.text.count("clip") for w in wins) == clips_that_fit


def test_bad_window_lengths_are_refused(manifest, tmp_path):
    with pytest.raises(ValueError, match="window"):
        pack_utterances(manifest, 0, tmp_path)
