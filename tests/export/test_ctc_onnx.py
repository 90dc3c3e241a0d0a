"""CTC models export to one ONNX graph with dynamic batch and time axes, checked against PyTorch; the ONNX backend
decodes the same characters."""

import json

import numpy as np
import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.evaluate.backends import load_backend
from speechprune.export.ctc_onnx import export_ctc_onnx
from speechprune.models.adapters import adapter_for
from speechprune.models.ctc import save_ctc
from speechprune.models.decoding import DecodeOptions
from tiny_models import tiny_ctc


@pytest.mark.parametrize("encoder, norm", [("whisper", "batch"), ("conformer", "batch"), ("conformer", "group")])
def test_export_runs_any_length_and_decodes_like_pytorch(encoder, norm, tmp_path):
    model = tiny_ctc(encoder, norm)
    adapter = adapter_for(model)
    g = next(g for g in adapter.unit_groups(model) if g.kind == "ffn")
    adapter.prune_units(model, g, list(range(0, g.n_units, 3)))  # a pruned model exports too
    with torch.no_grad():
        model.head.weight.mul_(20)  # peaky posteriors: clear characters to compare
    save_ctc(model, tmp_path / "m")
    manifest = export_ctc_onnx(tmp_path / "m", tmp_path / "onnx")
    assert manifest["family"] == "ctc" and manifest["check"]["posterior_max_abs_diff"] <= manifest["check"]["bound"]
    torch_be = load_backend(str(tmp_path / "m"))
    onnx_be = load_backend(str(tmp_path / "onnx"), "onnx")
    feats = np.random.default_rng(0).standard_normal((4, 16, 300)).astype(np.float32)
    frames = [300, 211, 57, 180]
    a = torch_be.decode(torch_be.encode(feats, frames), [None] * 4, [None] * 4, DecodeOptions())
    b = onnx_be.decode(onnx_be.encode(feats, frames), [None] * 4, [None] * 4, DecodeOptions())
    assert a.tokens == b.tokens and any(a.tokens)


def test_quantized_export_and_bad_requests(tmp_path):
    from cli_helpers import cli

    save_ctc(tiny_ctc("conformer"), tmp_path / "m")
    manifest = export_ctc_onnx(tmp_path / "m", tmp_path / "q", quantize=True)
    assert manifest["quantized"] and json.loads((tmp_path / "q" / "speechprune_onnx.json").read_text())["quantized"]
    with pytest.raises(ConfigError, match="not empty"):
        export_ctc_onnx(tmp_path / "m", tmp_path / "q")
    r = cli("export", str(tmp_path / "m"), "--format", "ct2", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "a CTC model exports to --format onnx" in r.stderr
