"""Sensitivity sweep on a tiny random Whisper saved as a folder: points, resume, workers, locking, plots."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest
import torch

from speechprune.analysis import sensitivity as S
from speechprune.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from models.conftest import write_tiny_whisper_folder
    from transformers import WhisperFeatureExtractor

    _, folder = write_tiny_whisper_folder(tmp_path_factory.mktemp("tinyw"))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def _keys(out):
    return [json.loads(line)["key"] for line in (out / S.POINTS).read_text().splitlines()]


def test_point_list_is_deterministic_and_skips_invalid_pairs():
    pts = S.sweep_points(["encoder.ffn", "encoder.conv"], [0.1, 0.5], ["unstructured", "structured"])
    keys = [p.key for p in pts]
    assert keys[0] == S.DENSE_KEY
    assert "encoder.conv|unstructured|0.5" in keys and "encoder.conv|structured|0.5" not in keys
    assert len(keys) == 1 + 2 * 2 + 2 and len(set(keys)) == len(keys)
    shards = [S.shard(pts, i, 3) for i in range(3)]
    assert sorted(p.key for s in shards for p in s) == sorted(keys)
    with pytest.raises(ConfigError, match="worker"):
        S.shard(pts, 3, 3)


def test_request_is_checked_against_the_model(tiny_model):
    avail = S.model_components(tiny_model)
    assert {"encoder.self_attn", "decoder.cross_attn", "encoder.ffn", "encoder.conv", "encoder.norm"} <= set(avail)
    assert "encoder.norm" not in S.check_request(avail, None, [0.5], ["unstructured"])
    with pytest.raises(ConfigError, match="norms are not swept"):
        S.check_request(avail, ["encoder.norm"], [0.5], ["unstructured"])
    with pytest.raises(ConfigError, match="unknown component"):
        S.check_request(avail, ["encoder.mlp"], [0.5], ["unstructured"])
    with pytest.raises(ConfigError, match="outside"):
        S.check_request(avail, None, [1.0], ["unstructured"])
    with pytest.raises(ConfigError, match="no requested method"):
        S.check_request(avail, ["encoder.conv"], [0.5], ["structured"])


def test_prune_point_touches_only_its_component(tiny_model):
    import copy

    from speechprune.models.adapters import adapter_for

    m = copy.deepcopy(tiny_model)
    S.prune_point(m, S.Point("decoder.ffn", "unstructured", 0.5))
    before = {s.key: s.weight for s in adapter_for(tiny_model).weight_sites(tiny_model)}
    for site in adapter_for(m).weight_sites(m):
        if site.stack == "decoder" and site.component == "ffn":
            assert float((site.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.02)
        else:
            assert torch.equal(site.weight, before[site.key])
    dense = S.cost_record(tiny_model)
    m = copy.deepcopy(tiny_model)
    S.prune_point(m, S.Point("encoder.ffn", "structured", 0.5))
    c = S.cost_record(m)
    assert c["params"] < dense["params"] and c["flops_encoder"] < dense["flops_encoder"]
    assert c["flops_decoder_per_token"] == dense["flops_decoder_per_token"]


def _append_many(path, worker, n):
    for i in range(n):
        S.append_locked(path, {"key": f"w{worker}-{i}", "pad": "x" * 5000})


def test_locked_appends_from_parallel_processes_never_interleave(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"key": "half')  # a killed writer's truncated line
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(path, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    lines = path.read_bytes().split(b"\n")
    assert lines[0] == b'{"key": "half' and lines[-1] == b""
    recs = [json.loads(x) for x in lines[1:-1]]
    assert sorted(r["key"] for r in recs) == sorted(f"w{w}-{i}" for w in range(4) for i in range(40))
    assert set(S.read_points(tmp_path.joinpath("x")).keys()) == set()


def test_sweep_resumes_and_workers_split_the_points(tiny_folder, clips, tmp_path):
    kw = dict(split="all", components=["encoder.ffn", "decoder.cross_attn"], levels=[0.5],
              methods=["structured", "unstructured"], limit=None, max_new_tokens=4, progress=False)
    out = tmp_path / "sweep"
    S.run_sweep(str(tiny_folder), str(clips), out, worker=1, workers=2, **kw)
    first = _keys(out)
    all_keys = [p.key for p in S.sweep_points(kw["components"], kw["levels"], kw["methods"])]
    assert first == all_keys[1::2]
    summary = S.run_sweep(str(tiny_folder), str(clips), out, worker=0, workers=2, **kw)
    assert sorted(_keys(out)) == sorted(all_keys)
    # a rerun finds everything done; a lost point (killed before its line) is redone alone
    lines = (out / S.POINTS).read_text().splitlines()
    (out / S.POINTS).write_text("\n".join(lines[:-1]) + "\n")
    S.run_sweep(str(tiny_folder), str(clips), out, **kw)
    assert sorted(_keys(out)) == sorted(all_keys)
    assert _keys(out)[-1] == json.loads(lines[-1])["key"]
    recs = S.read_points(out)
    dense = recs[S.DENSE_KEY]
    assert dense["n_utterances"] == 5 and 0 <= dense["wer"]
    st = recs["encoder.ffn|structured|0.5"]
    assert st["flops_encoder"] < dense["flops_encoder"] and st["params"] < dense["params"]
    un = recs["encoder.ffn|unstructured|0.5"]
    assert un["params"] == dense["params"] and un["nonzero_params"] < dense["nonzero_params"]
    assert set(summary["curves"]) == {"structured", "unstructured"}
    assert (out / "plots" / "sensitivity-structured.png").stat().st_size > 1000
    with pytest.raises(ConfigError, match="other settings"):
        S.run_sweep(str(tiny_folder), str(clips), out, **{**kw, "max_new_tokens": 5})
    with pytest.raises(ConfigError, match="never test"):
        S.run_sweep(str(tiny_folder), str(clips), tmp_path / "t", **{**kw, "split": "test"})


def test_decoder_points_reuse_the_dense_encoder_exactly(tiny_folder, clips, tmp_path):
    """A decoder-only point scored through the cached dense encoder output equals a full decode of the same model."""
    import copy

    from speechprune.data.datasets import load_dataset
    from speechprune.data.features import FeatureFrontend
    from speechprune.evaluate.runner import decode_prepared, prepare_batch
    from speechprune.models.decoding import DecodeOptions
    from speechprune.models.whisper.backend import TorchWhisper

    dense = TorchWhisper.from_folder(tiny_folder)
    batch = prepare_batch(FeatureFrontend(80), load_dataset(str(clips)))
    m = copy.deepcopy(dense.model)
    S.prune_point(m, S.Point("decoder.self_attn", "structured", 0.5))
    be = TorchWhisper(m, dense.tokenizer, dense.vocab)
    opts = DecodeOptions(max_new_tokens=6)
    full = decode_prepared(be, batch, opts)
    cached = decode_prepared(be, batch, opts, encoded=dense.encode(batch.features))
    assert full == cached
    assert be.shape.decoder[0].self_attn.n_heads < dense.shape.decoder[0].self_attn.n_heads  # it was pruned


def test_plan_check_measures_the_recipes_on_the_sweep_inputs(tiny_folder, clips, tmp_path):
    """A plan that lands exactly on a swept point (one component, half its neurons) checks to that point's WER."""
    from speechprune.analysis.plan import write_plan

    out = tmp_path / "sweep"
    S.run_sweep(str(tiny_folder), str(clips), out, split="all", components=["encoder.ffn"], levels=[0.25, 0.5],
                methods=["structured"], limit=None, max_new_tokens=6, progress=False)
    recs = S.read_points(out)
    half, dense = recs["encoder.ffn|structured|0.5"], recs[S.DENSE_KEY]
    assert half["cer"] != dense["cer"]  # the random tiny model's CER tells the pruned model from the dense one
    removed = dense["flops_encoder"] - half["flops_encoder"]
    rec = write_plan(out, f"encoder-flops:{removed}", tmp_path / "p.yaml", check=True)
    for name in ("plan", "uniform"):
        assert rec[name]["realized"]["flops_encoder"] == half["flops_encoder"]  # the same units as the swept point
        assert rec[name]["check"]["wer"] == half["wer"] and rec[name]["check"]["cer"] == half["cer"]
        assert rec[name]["check"]["wer_increase"] == pytest.approx(half["wer"] - dense["wer"])
        assert rec[name]["check"]["n_utterances"] == 5
    assert json.loads((tmp_path / "p.json").read_text())["plan"]["check"]["wer"] == half["wer"]
