"""``speechprune sparsify`` on the real bundled tiny.en: the dense-with-zeros folder and the compressed folder load
to the same weights and transcribe real speech identically; the compressed one is smaller at 50 %."""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import SOUNDS, cli

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not SOUNDS.is_dir(), reason="needs the asterisk prompts")
def test_sparsify_command_writes_both_folders_and_they_agree(tmp_path):
    from speechprune.data import load_audio, load_dataset
    from speechprune.data.features import FeatureFrontend
    from speechprune.models.decoding import DecodeOptions
    from speechprune.models.whisper.backend import TorchWhisper

    out = tmp_path / "s"
    proc = cli("sparsify", "whisper-tiny.en", "--recipe", "whisper-tiny.en-magnitude50", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    rec = json.loads((out / "sparsify.json").read_text())
    assert abs(rec["sparsity"] - 0.5) < 0.001 and rec["nonzero_params"] < rec["params"]
    # the (tied, unpruned) token embedding is over half of tiny.en: 50 % of the layers saves ~20 % on disk
    assert rec["disk"]["sparse_bytes"] < 0.85 * rec["disk"]["dense_bytes"]
    a = TorchWhisper.from_folder(out / "model")
    b = TorchWhisper.from_folder(out / "sparse")
    for (n, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), n
    feats = FeatureFrontend(80)([load_audio(u.audio) for u in load_dataset("asterisk", "dev")[:4]])
    da = a.decode(a.encode(feats), [None] * 4, [None] * 4, DecodeOptions())
    db = b.decode(b.encode(feats), [None] * 4, [None] * 4, DecodeOptions())
    assert da.tokens == db.tokens and sum(map(len, da.tokens)) > 10


def test_bad_sparsify_input_is_one_line(tmp_path):
    (tmp_path / "r.yaml").write_text("sparsity: 1.2\n")
    proc = cli("sparsify", "whisper-tiny.en", "--recipe", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "r.yaml: bad recipe: sparsity" in lines[0]
