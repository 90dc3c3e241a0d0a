"""ONNX export of a length-adaptive Whisper (issue 18): a dynamic frames axis on the encoder, the buckets in the
manifest, parity with PyTorch at a bucket other than the traced (full) window, and ``OnnxWhisper`` cutting features
to each batch's bucket exactly as ``TorchWhisper`` does."""

from __future__ import annotations

import numpy as np
import pytest

from speechprune.evaluate.onnx_backend import OnnxWhisper
from speechprune.export.onnx import export_onnx
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.models.whisper.lengths import set_length_buckets

from closeness import FRAMES, assert_reorder_close, parity_bound, whisper_depth
from export.test_onnx import save_tiny_folder
from tiny_models import build_tiny

BUCKETS = [50, 100, 1500]
FEATS = np.random.default_rng(3).standard_normal((2, 80, 3000)).astype(np.float32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lengths")
    model = build_tiny("whisper", seed=1)
    stock_onnx = root / "stock-onnx"
    stock = save_tiny_folder(model, root / "stock")
    export_onnx(stock, stock_onnx)
    set_length_buckets(model, BUCKETS)
    adaptive = save_tiny_folder(model, root / "adaptive")
    return {"stock_onnx": stock_onnx, "adaptive": adaptive, "adaptive_onnx": root / "adaptive-onnx",
            "manifest": export_onnx(adaptive, root / "adaptive-onnx")}


def _encoder_frames_dim(folder):
    import onnx

    dim = onnx.load(str(folder / "encoder.onnx"), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[2]
    return dim.dim_param or dim.dim_value


def test_the_manifest_records_the_buckets_and_parity_at_every_bucket_besides_the_traced_window(folders):
    manifest = folders["manifest"]
    assert manifest["length_buckets"] == BUCKETS
    assert set(manifest["check_buckets"]) == {str(b) for b in BUCKETS[:-1]}
    for check in (manifest["check"], *manifest["check_buckets"].values()):
        for key in ("encoder_max_abs_diff", "prefill_logits_max_abs_diff", "step_logits_max_abs_diff"):
            assert check[key] < parity_bound(check, whisper_depth(2, 2)), key
    assert _encoder_frames_dim(folders["adaptive_onnx"]) == "frames"
    assert _encoder_frames_dim(folders["stock_onnx"]) == 3000  # a stock export is as before
    assert "length_buckets" not in OnnxWhisper.from_folder(folders["stock_onnx"], threads=1).manifest


@pytest.mark.parametrize("frames, positions", [([150, 30], 100), ([40, 99], 50), (None, 1500)])
def test_onnx_reads_each_batch_at_its_bucket_like_torch(folders, frames, positions):
    ort = OnnxWhisper.from_folder(folders["adaptive_onnx"], threads=1)
    pt = TorchWhisper.from_folder(folders["adaptive"])
    assert ort.length_buckets == tuple(BUCKETS)
    enc, want = ort.encode(FEATS, frames), pt.encode(FEATS, frames)
    assert ort.last_positions == pt.last_positions == positions and enc.shape == (2, positions, 32)
    assert_reorder_close(enc, want.numpy(), k=FRAMES, depth=whisper_depth(2, 0))
    options = DecodeOptions(max_new_tokens=20)
    tokens = ort.decode(enc, [None, None], [None, None], options).tokens
    assert tokens == pt.decode(want, [None, None], [None, None], options).tokens
    assert sum(map(len, tokens)) > 4
    garbage = FEATS.copy()
    garbage[..., 2 * positions:] = 1e3  # beyond the bucket: never read
    assert np.array_equal(ort.encode(garbage, frames), enc)

