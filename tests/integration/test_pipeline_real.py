"""`speechprune run` end to end on the real tiny.en and a handful of real prompts: prune (with a short
recovery), export to ONNX int8, evaluate, benchmark against faster-whisper, report; and the pruned folder reloads
identically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cli_helpers import SOUNDS, cli

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not SOUNDS.is_dir(), reason="apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en")]

RECIPE = """
name: smoke
criterion: taylor
calibration: {data: asterisk, split: dev, utterances: 4, batch_size: 4}
schedule: {steps: 2}
targets:
  - {stack: encoder, kind: ffn, sparsity: 0.25}
  - {stack: decoder, remove_layers: [3]}
recovery: {data: ["asterisk:dev"], max_utterances: 4, steps: 2, batch_size: 4}
"""


def test_run_prunes_evaluates_benchmarks_and_reports(tmp_path):
    from speechprune.data import load_dataset
    from speechprune.data.manifest import write_manifest

    write_manifest(tmp_path / "m.jsonl", load_dataset("asterisk", "test")[:4])
    (tmp_path / "r.yaml").write_text(RECIPE)
    out = tmp_path / "run"
    proc = cli("run", "--data", str(tmp_path / "m.jsonl"), "--split", "all", "--bench-utterances", "2",
               "--recipe", str(tmp_path / "r.yaml"), "--out", str(out), "--ood-per-source", "1")
    assert proc.returncode == 0, proc.stderr
    prune = json.loads((out / "prune" / "prune.json").read_text())
    assert [s["step"] for s in prune["steps"]] == [1, 2]
    assert prune["steps"][-1]["flops_encoder"] < prune["dense"]["flops_encoder"]
    assert prune["steps"][0]["removed_layers"] == ["decoder.3"] and prune["steps"][0]["recovery"]["steps"] == 2
    assert not list((out / "prune").glob("*.recovery.safetensors"))  # recovery checkpoints go once the step is saved
    report = json.loads((out / "report.json").read_text())
    rows = {r["backend"]: r for r in report["rows"]}
    assert set(rows) == {"torch", "torch-pruned", "onnx-int8-pruned", "faster-whisper-int8"}
    assert all(rows[n]["wer"] is not None for n in ("torch", "torch-pruned", "onnx-int8-pruned"))
    from speechprune.data.sources import SOURCES  # out of domain beside in domain, for every evaluated model

    assert all(rows[n]["n_utterances_ood"] == len(SOURCES) and rows[n]["wer_ood"] is not None for n in rows)
    assert rows["faster-whisper-int8"]["wer"] is not None  # the peer is scored on the same clips
    assert rows["onnx-int8-pruned"]["gflops_encoder"] == rows["torch-pruned"]["gflops_encoder"]
    parts = json.loads((out / "onnx-int8" / "speechprune_onnx.json").read_text())["quantization"]["parts"]
    assert set(parts) == {"encoder", "decoder", "vocabulary"}  # each part's int8 choice measured on this CPU
    assert rows["torch-pruned"]["params_m"] < rows["torch"]["params_m"]
    assert "torch-pruned" in (out / "report.md").read_text()

    # the pruned folder reloads, without the original, to identical outputs
    from speechprune.models.checkpoint import load_pruned
    from speechprune.models.whisper.backend import TorchWhisper

    folder = Path(prune["steps"][-1]["folder"])
    a = TorchWhisper.from_folder(folder).model
    b, _ = load_pruned(folder)
    x = torch.randn(1, 80, 3000)
    ids = torch.tensor([[50257, 50362, 1000]])
    with torch.no_grad():
        assert torch.equal(a(input_features=x, decoder_input_ids=ids).logits, b(input_features=x, decoder_input_ids=ids).logits)
    assert len(b.model.decoder.layers) == 3

    # a rerun resumes: nothing recomputed, same report
    again = cli("run", "--data", str(tmp_path / "m.jsonl"), "--split", "all", "--bench-utterances", "2",
                "--recipe", str(tmp_path / "r.yaml"), "--out", str(out), "--ood-per-source", "1")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "report.json").read_text())["rows"] == report["rows"]
