"""Length-adaptive Whisper (issue 18): the bucket arithmetic (pure), the encoder graph at a bucket against a Hugging
Face encoder whose position table holds only that many rows, the config key through save and load, and
``TorchWhisper`` reading a length-adaptive folder at each batch's bucket (a stock folder exactly as before)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from speechprune.errors import ConfigError, ModelError
from speechprune.models.checkpoint import save_pruned
from speechprune.models.decoding import DecodeOptions, state_digest
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.models.whisper.graph import WhisperEncoderGraph
from speechprune.models.whisper.lengths import (LENGTH_KEY, batch_bucket, bucket_for, check_buckets, cut_features,
                                                length_buckets, positions_for, set_length_buckets)
from speechprune.models.whisper.load import load_whisper

from closeness import FRAMES, WHISPER_ENCODER_DEPTH, assert_reorder_close
from tiny_models import build_tiny, pruned_tiny_whisper

BUCKETS = (50, 100, 1500)  # 1 s, 2 s, 30 s


def test_frames_round_up_to_positions_and_to_the_smallest_bucket_that_holds_them():
    assert [positions_for(f) for f in (0, 1, 2, 3, 199, 200, 3000)] == [1, 1, 1, 2, 100, 100, 1500]
    assert [bucket_for(f, BUCKETS) for f in (1, 100, 101, 200, 201, 3000, 5000)] == [50, 50, 100, 100, 1500, 1500, 1500]
    assert batch_bucket([30, 180, 90], BUCKETS) == 100  # the longest item's
    assert batch_bucket(None, BUCKETS) == batch_bucket([], BUCKETS) == 1500  # unknown: the full window


def test_features_are_cut_to_the_batch_bucket_for_numpy_and_torch():
    feats = np.arange(2 * 3 * 3000, dtype=np.float32).reshape(2, 3, 3000)
    cut = cut_features(feats, [150, 20], BUCKETS)
    assert cut.shape == (2, 3, 200) and np.array_equal(cut, feats[..., :200])
    assert cut_features(torch.from_numpy(feats), [3000], BUCKETS).shape == (2, 3, 3000)
    assert cut_features(feats, None, BUCKETS).shape == (2, 3, 3000)


@pytest.mark.parametrize("buckets, problem", [
    ([], "positive integers"), ([0, 1500], "positive integers"), ([100, 100, 1500], "ascend"),
    ([500, 100, 1500], "ascend"), ([100, 1000], "full window"), ([100, 2000], "full window"), ("1500", "a list"),
    ([True, 1500], "positive integers"),
])
def test_bad_buckets_are_refused_with_the_rule_they_break(buckets, problem):
    with pytest.raises(ConfigError, match=problem):
        check_buckets(buckets, 1500)


def _short_table_twin(model, positions: int):
    """A Hugging Face Whisper whose encoder has ``positions`` rows of ``model``'s position table (and its other
    weights): transformers' encoder reads exactly ``2 * positions`` frames, with positions ``0..positions-1``."""
    twin = build_tiny("whisper", max_source_positions=positions)
    state = dict(model.state_dict())
    state["model.encoder.embed_positions.weight"] = state["model.encoder.embed_positions.weight"][:positions]
    twin.load_state_dict(state, strict=True)
    return twin.eval()


@pytest.mark.parametrize("positions", [50, 100])
@torch.no_grad()
def test_the_graph_at_a_bucket_equals_transformers_encoder_with_that_many_positions(positions):
    model = build_tiny("whisper")
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(0))
    out = WhisperEncoderGraph(model)(feats[..., : 2 * positions])
    assert out.shape == (2, positions, 32)
    want = _short_table_twin(model, positions).model.encoder(feats[..., : 2 * positions]).last_hidden_state
    assert_reorder_close(out, want, k=FRAMES, depth=WHISPER_ENCODER_DEPTH)
    # the table's rows beyond the bucket are never read; its first rows are
    model.model.encoder.embed_positions.weight[positions:] = 1e3
    assert torch.equal(WhisperEncoderGraph(model)(feats[..., : 2 * positions]), out)
    model.model.encoder.embed_positions.weight[0] += 1.0
    assert not torch.allclose(WhisperEncoderGraph(model)(feats[..., : 2 * positions]), out)


@pytest.mark.parametrize("kind", ["dense", "pruned"])
@torch.no_grad()
def test_the_graphs_inner_states_are_transformers_hidden_states_at_the_full_window(kind):
    model = build_tiny("whisper") if kind == "dense" else pruned_tiny_whisper()
    feats = torch.randn(2, 80, 3000, generator=torch.Generator().manual_seed(1))
    out, inner = WhisperEncoderGraph(model).encoder_states(feats, inner=True)
    ref = model.model.encoder(feats, output_hidden_states=True).hidden_states
    assert len(inner) == len(ref) - 2 == len(model.model.encoder.layers) - 1
    for mine, theirs in zip([*inner, out], ref[1:]):
        assert_reorder_close(mine, theirs, k=FRAMES, depth=WHISPER_ENCODER_DEPTH)


def test_the_graph_trains_through_autograd_with_the_exportable_paths_values():
    model = build_tiny("whisper")
    feats = torch.randn(1, 80, 200, generator=torch.Generator().manual_seed(2))
    graph = WhisperEncoderGraph(model)
    with torch.no_grad():
        fused = graph(feats)
    out = graph(feats)  # grad enabled: the differentiable path
    assert out.requires_grad
    assert_reorder_close(out.detach(), fused, k=FRAMES, depth=WHISPER_ENCODER_DEPTH)
    out.square().mean().backward()
    q = model.model.encoder.layers[0].self_attn.q_proj.weight.grad
    assert q is not None and torch.isfinite(q).all() and q.abs().sum() > 0


def _length_folder(tmp_path, model, processor, buckets=BUCKETS):
    set_length_buckets(model, buckets)
    return save_pruned(model, processor, tmp_path / "adaptive")


def test_save_and_load_keep_the_buckets_and_a_stock_folder_has_none(tmp_path, tiny_whisper_d64, tiny_processor):
    stock = save_pruned(tiny_whisper_d64, tiny_processor, tmp_path / "stock")
    assert LENGTH_KEY not in json.loads((stock / "config.json").read_text())
    assert length_buckets(load_whisper(stock)[0].config) is None
    folder = _length_folder(tmp_path, tiny_whisper_d64, tiny_processor)
    assert json.loads((folder / "config.json").read_text())[LENGTH_KEY] == list(BUCKETS)
    again, _ = load_whisper(folder)
    assert length_buckets(again.config) == BUCKETS
    set_length_buckets(again, None)  # back to the full window
    assert length_buckets(again.config) is None


def test_a_folder_with_bad_buckets_names_its_config(tmp_path, tiny_whisper_d64, tiny_processor):
    folder = _length_folder(tmp_path, tiny_whisper_d64, tiny_processor)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[LENGTH_KEY] = [100, 50, 1500]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match=r"config\.json: length buckets must ascend"):
        load_whisper(folder)
    with pytest.raises(ConfigError, match="full window"):
        set_length_buckets(tiny_whisper_d64, [100, 1000])


def test_torch_whisper_reads_a_length_adaptive_folder_at_each_batch_bucket(tmp_path, tiny_whisper_d64,
                                                                          tiny_processor):
    stock_folder = save_pruned(tiny_whisper_d64, tiny_processor, tmp_path / "stock")
    stock = TorchWhisper.from_folder(stock_folder)
    adaptive = TorchWhisper.from_folder(_length_folder(tmp_path, tiny_whisper_d64, tiny_processor))
    assert adaptive.length_buckets == BUCKETS and stock.length_buckets is None
    assert adaptive.fingerprint() != stock.fingerprint()  # same weights, read otherwise: another evaluation
    feats = np.random.default_rng(0).standard_normal((2, 80, 3000)).astype(np.float32)

    enc = adaptive.encode(feats, [150, 60])
    assert adaptive.last_positions == 100 and enc.shape == (2, 100, 64)
    garbage = feats.copy()
    garbage[..., 200:] = 1e3  # what lies beyond the bucket's frames is never read
    assert torch.equal(adaptive.encode(garbage, [150, 60]), enc)
    with torch.no_grad():
        assert torch.equal(enc, WhisperEncoderGraph(stock.model)(torch.from_numpy(feats[..., :200])))
    adaptive.encode(feats, [60, 20])
    assert adaptive.last_positions == 50
    adaptive.encode(feats, None)
    assert adaptive.last_positions == 1500

    # the decoder is unchanged: it cross-attends to the bucket's positions exactly as the stock model would
    options = DecodeOptions(max_new_tokens=8)
    tokens = adaptive.decode(enc, [None, None], [None, None], options).tokens
    assert tokens == stock.decode(enc, [None, None], [None, None], options).tokens
    assert sum(map(len, tokens)) > 0


def test_a_stock_model_encodes_exactly_as_before_whatever_the_frames(tmp_path, tiny_whisper_d64, tiny_processor):
    stock = TorchWhisper.from_folder(save_pruned(tiny_whisper_d64, tiny_processor, tmp_path / "stock"))
    feats = np.random.default_rng(1).standard_normal((2, 80, 3000)).astype(np.float32)
    with torch.no_grad():
        want = stock.model.get_encoder()(input_features=torch.from_numpy(feats)).last_hidden_state
    assert torch.equal(stock.encode(feats, [120, 40]), want)
    assert stock.last_positions == 1500
    assert stock.fingerprint() == state_digest(stock.model)


def test_the_evaluation_runner_hands_its_windows_frames_to_a_length_adaptive_model(tmp_path, clips,
                                                                                  tiny_whisper_d64, tiny_processor):
    from speechprune.data.manifest import read_manifest
    from speechprune.evaluate.runner import evaluate

    adaptive = TorchWhisper.from_folder(_length_folder(tmp_path, tiny_whisper_d64, tiny_processor))
    utts = read_manifest(clips)  # 0.5 .. 1.3 s: 51 .. 131 frames
    seen = []
    encode = adaptive.encode

    def spy(features, frames=None):
        out = encode(features, frames)
        seen.append((list(frames), adaptive.last_positions))
        return out

    adaptive.encode = spy
    metrics = evaluate(adaptive, utts, tmp_path / "eval", DecodeOptions(max_new_tokens=8), batch_size=2,
                       progress=False)
    assert metrics["n_scored"] == len(utts) and metrics["n_failed"] == 0
    assert [p for _, p in seen] == [batch_bucket(f, BUCKETS) for f, _ in seen]
    assert {p for _, p in seen} <= {50, 100} and max(max(f) for f, _ in seen) == 131
