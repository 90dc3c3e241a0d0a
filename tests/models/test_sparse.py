"""The compressed sparse checkpoint: exact round trips, honest sizes, the crossover against dense."""

from __future__ import annotations

import pytest
import torch
from calibration_helpers import calibration_batches
from tiny_models import build_tiny, pruned_tiny_whisper

from speechprune.errors import ModelError
from speechprune.models import sparse as S
from speechprune.models.checkpoint import load_pruned, save_pruned
from speechprune.prune.unstructured import magnitude_prune, prunable_sites

FAMILIES = ("whisper", "wav2vec2")


def _inputs(family):
    return {k: v for k, v in calibration_batches(family, 1)[0].items()}


def _logits(model, family):
    with torch.no_grad():
        return model(**_inputs(family)).logits


@pytest.mark.parametrize("layout", S.LAYOUTS)
def test_every_layout_round_trips_a_state_exactly(layout):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 40, generator=g)
    w[w.abs() < 0.8] = 0
    state = {"w": w, "conv": torch.randn(4, 3, 5, generator=g) * (torch.rand(4, 3, 5, generator=g) > 0.5),
             "bias": torch.randn(6, generator=g), "ids": torch.arange(5), "empty": torch.zeros(0, 3)}
    tensors, meta = S.encode_state(state, layout)
    back = S.decode_state(tensors, meta)
    assert set(back) == set(state)
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k]), k
    assert meta["tensors"]["bias"]["layout"] == "dense"  # vectors stay dense
    if layout != "dense":
        assert meta["tensors"]["w"]["layout"] == layout


def test_auto_picks_the_smallest_layout_per_tensor():
    g = torch.Generator().manual_seed(0)
    dense = torch.randn(16, 1024, generator=g)
    # CSR costs 6 bytes per nonzero, the bitmask 1/8 per entry + 4 per nonzero: CSR wins above 15/16 zeros
    very = dense * (torch.rand(16, 1024, generator=g) > 0.98)
    mid = dense * (torch.rand(16, 1024, generator=g) > 0.5)
    _, meta = S.encode_state({"dense": dense, "very": very, "mid": mid})
    layouts = {k: v["layout"] for k, v in meta["tensors"].items()}
    assert layouts == {"dense": "dense", "very": "csr", "mid": "bitmask"}


@pytest.mark.parametrize("family", FAMILIES)
def test_sparse_folder_loads_to_identical_outputs(family, tmp_path):
    model = build_tiny(family)
    magnitude_prune(model, 0.7)
    ref = _logits(model, family)
    rec = S.save_sparse(model, None, tmp_path / "sparse")
    assert (tmp_path / "sparse" / S.SPARSE_FILE).is_file() and not (tmp_path / "sparse" / "model.safetensors").exists()
    assert rec["layouts"]["bitmask"] > 0
    loaded, _ = load_pruned(tmp_path / "sparse")
    assert torch.equal(_logits(loaded, family), ref)
    for (n, a), (m, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert n == m and torch.equal(a, b), n


def test_a_structurally_pruned_whisper_also_round_trips(tmp_path):
    model = pruned_tiny_whisper()
    magnitude_prune(model, 0.5)
    S.save_sparse(model, None, tmp_path / "sparse", layout="csr")
    loaded, _ = load_pruned(tmp_path / "sparse")
    assert torch.equal(_logits(loaded, "whisper"), _logits(model, "whisper"))


def test_fp16_values_match_the_fp16_rounded_model(tmp_path):
    model = build_tiny("whisper")
    magnitude_prune(model, 0.5)
    S.save_sparse(model, None, tmp_path / "sparse", values="float16")
    loaded, _ = load_pruned(tmp_path / "sparse")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    assert torch.equal(_logits(loaded, "whisper"), _logits(model, "whisper"))


@pytest.mark.parametrize("family", FAMILIES)
def test_smaller_than_dense_at_90_percent_larger_at_0(family, tmp_path):
    model = build_tiny(family)
    dense = save_pruned(model, None, tmp_path / "dense")
    dense_bytes = (dense / "model.safetensors").stat().st_size
    assert S.dense_bytes(model) == pytest.approx(dense_bytes, rel=0.02)  # the in-memory measure is the file's
    forced = S.save_sparse(model, None, tmp_path / "s0", layout="bitmask")["file_bytes"]
    auto0 = S.save_sparse(model, None, tmp_path / "a0")["file_bytes"]
    assert forced > dense_bytes  # a mask costs a bit per weight and saves nothing at 0 %
    assert auto0 >= dense_bytes * 0.99  # auto falls back to dense: no gain, a little header
    # 90 % of every matrix (so the embeddings count too)
    sites = [s for s in prunable_sites(model, ("self_attn", "cross_attn", "ffn", "conv", "embed")) if s.weight.dim() >= 2]
    from speechprune.prune import masks as M
    from speechprune.prune.unstructured import fold_masks, magnitude_scores

    fold_masks(sites, M.layer_masks(magnitude_scores(sites), 0.9))
    sparse90 = S.save_sparse(model, None, tmp_path / "s90")["file_bytes"]
    pruned_bytes = sum(4 * s.weight.numel() for s in sites)
    # bitmask at 90 %: 1/8 + 0.1 * 4 bytes per entry, not 4, so 87 % of those bytes go; the JSON header
    # (a few hundred bytes per tensor) weighs on a model this tiny; unpruned tensors (positions) stay dense
    assert sparse90 < dense_bytes - 0.7 * pruned_bytes
    assert S.serialized_bytes(model) == sparse90


def test_crossover_is_where_the_real_file_sizes_cross():
    assert S.crossover_sparsity("bitmask", 4, 4) == pytest.approx(1 / 32)
    assert S.crossover_sparsity("csr", 4, 4, 2) == pytest.approx(1 / 3)
    assert S.crossover_sparsity("bitmask", 2, 4) == 0.0  # fp16 values beat fp32 dense at any sparsity
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 1024, generator=g)
    order = w.abs().reshape(-1).argsort()

    def sizes(s):
        x = w.clone().reshape(-1)
        x[order[: int(s * x.numel())]] = 0
        t, meta = S.encode_state({"w": x.view(w.shape)}, "bitmask")
        return sum(v.numel() * v.element_size() for v in t.values()), w.numel() * 4

    below, above = sizes(1 / 32 - 0.005), sizes(1 / 32 + 0.005)
    assert below[0] > below[1] and above[0] < above[1]


def test_a_corrupt_sparse_file_is_a_one_line_error(tmp_path):
    model = build_tiny("whisper")
    S.save_sparse(model, None, tmp_path / "s")
    (tmp_path / "s" / S.SPARSE_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match="cannot read sparse weights"):
        load_pruned(tmp_path / "s")
