"""Exports of a low-rank factorized Whisper: ONNX traces the two smaller matmuls and decodes like torch; CTranslate2,
which has one Dense per projection, refuses in one line."""

from __future__ import annotations

import numpy as np
import pytest

from speechprune.errors import ConfigError
from speechprune.evaluate.onnx_backend import OnnxWhisper
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.prune.lowrank import factorize, lowrank_sites

from closeness import parity_bound
from export.test_onnx import save_tiny_folder
from tiny_models import build_tiny

FEATS = np.random.default_rng(0).standard_normal((2, 80, 3000)).astype(np.float32)


@pytest.fixture(scope="module")
def lowrank_folder(tmp_path_factory):
    model = build_tiny("whisper", seed=4)
    sites = lowrank_sites(model)
    factorize(sites, {s.key: 6 for s in sites if s.role in ("q", "v", "in", "out")})
    return save_tiny_folder(model, tmp_path_factory.mktemp("lr") / "src")


def test_onnx_export_of_a_lowrank_model_decodes_like_torch_and_counts_its_flops(lowrank_folder, tmp_path):
    import onnx

    from speechprune.export.onnx import export_onnx

    manifest = export_onnx(lowrank_folder, tmp_path / "onnx")  # its own parity check raises on disagreement
    assert manifest["check"]["encoder_max_abs_diff"] < parity_bound(manifest["check"])
    graph = onnx.load(str(tmp_path / "onnx" / "encoder.onnx")).graph
    assert sum(n.op_type in ("MatMul", "Gemm") for n in graph.node) > 2 * 6  # each factorized projection: two
    torch_be = TorchWhisper.from_folder(lowrank_folder)
    onnx_be = OnnxWhisper.from_folder(tmp_path / "onnx", threads=1)
    opts = DecodeOptions(max_new_tokens=8)
    assert onnx_be.decode(onnx_be.encode(FEATS), [None] * 2, [None] * 2, opts).tokens == \
        torch_be.decode(torch_be.encode(FEATS), [None] * 2, [None] * 2, opts).tokens
    assert onnx_be.params == torch_be.params and onnx_be.shape == torch_be.shape
    assert onnx_be.shape.encoder[0].rank("self_attn.q") == 6


def test_ct2_export_refuses_a_lowrank_model_in_one_line(lowrank_folder, tmp_path):
    from speechprune.export.ct2 import export_ct2

    with pytest.raises(ConfigError, match="CTranslate2 cannot express low-rank factorized layers") as e:
        export_ct2(lowrank_folder, tmp_path / "ct2")
    assert "\n" not in str(e.value) and not (tmp_path / "ct2").exists()


def test_hf_export_refuses_a_lowrank_model(lowrank_folder, tmp_path):
    from speechprune.export.hf import export_hf

    with pytest.raises(ConfigError, match="low-rank factorized"):
        export_hf(lowrank_folder, tmp_path / "hf")
