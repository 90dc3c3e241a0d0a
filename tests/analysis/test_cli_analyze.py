import json

import torch

from cli_helpers import cli
from speechprune.models.adapters import adapter_for
from speechprune.models.checkpoint import save_pruned
from tiny_models import build_tiny


def _one_line_error(r, *needles):
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for n in needles:
        assert n in lines[0]


def test_signatures_missing_folder_is_a_one_line_error(tmp_path):
    r = cli("analyze", "signatures", str(tmp_path / "nope-before"), str(tmp_path / "nope-after"),
            "--out", str(tmp_path / "out"))
    _one_line_error(r, "nope-after")


def test_ablation_refuses_the_test_split_and_a_missing_model(tmp_path):
    r = cli("analyze", "ablation", "whisper-tiny.en", "asterisk", "--split", "test", "--out", str(tmp_path / "o"))
    _one_line_error(r, "test split")
    r = cli("analyze", "ablation", str(tmp_path / "missing"), "asterisk", "--out", str(tmp_path / "o"))
    _one_line_error(r, "missing")


def test_signatures_command_writes_json_and_heatmaps(tmp_path):
    before = build_tiny("wav2vec2")
    after = build_tiny("wav2vec2")
    site = next(s for s in adapter_for(after).weight_sites(after) if s.key == "encoder.1.ffn.out")
    with torch.no_grad():
        site.weight.add_(1.0)
    save_pruned(before, None, tmp_path / "before")
    save_pruned(after, None, tmp_path / "after")
    r = cli("analyze", "signatures", str(tmp_path / "before"), str(tmp_path / "after"), "--out", str(tmp_path / "sig"))
    assert r.returncode == 0, r.stderr
    rec = json.loads((tmp_path / "sig" / "signatures.json").read_text())
    moved = {row["key"]: row["normalized"] for row in rec["rows"] if row["distance"] > 0}
    assert moved == {"encoder.1.ffn.out": 1.0}
    assert rec["layers"] == {"encoder.0": 0.0, "encoder.1": 1.0}
    assert (tmp_path / "sig" / "signatures_encoder.png").stat().st_size > 1000
    r = cli("analyze", "signatures", "init:x", str(tmp_path / "after"), "--out", str(tmp_path / "sig2"))
    _one_line_error(r, "init:SEED")
    r = cli("analyze", "signatures", "init:0", str(tmp_path / "after"), "--out", str(tmp_path / "sig3"),
            "--ablation", str(tmp_path / "nothing.json"))
    _one_line_error(r, "nothing.json")
