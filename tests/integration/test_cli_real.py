"""The real bundled tiny.en on real asterisk prompts, through the command line, and bad input through it too."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import soundfile as sf

from cli_helpers import SOUNDS, cli

pytestmark = pytest.mark.integration

needs_sounds = pytest.mark.skipif(not SOUNDS.is_dir(), reason="apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en")


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for w in words:
        assert w in lines[0]


@needs_sounds
def test_torch_and_ctranslate2_give_identical_greedy_tokens_on_shared_features():
    from speechprune.data import load_audio, load_dataset
    from speechprune.evaluate.backends import load_backend
    from speechprune.models.decoding import DecodeOptions
    from speechprune.data.features import FeatureFrontend

    utts = load_dataset("asterisk", "dev")[:8]
    feats = FeatureFrontend(80)([load_audio(u.audio) for u in utts])
    n = len(utts)
    ours = load_backend("whisper-tiny.en", "torch")
    ct2 = load_backend("whisper-tiny.en", "faster-whisper", compute_type="float32", threads=2)
    a = ours.decode(ours.encode(feats), [None] * n, [None] * n, DecodeOptions())
    b = ct2.decode(ct2.encode(feats), [None] * n, [None] * n, DecodeOptions())
    assert a.tokens == b.tokens
    assert sum(len(t) for t in a.tokens) > 40


@needs_sounds
def test_eval_command_on_real_speech(tmp_path):
    out = tmp_path / "e"
    proc = cli("eval", "whisper-tiny.en", "asterisk", "--split", "test", "--limit", "12", "--out", str(out),
               "--ood-per-source", "2")
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_utterances"] == 12 and m["n_failed"] == 0 and m["n_words"] > 50
    assert m["wer"] < 0.15 and m["cer"] < m["wer"] + 0.05
    hyps = [json.loads(l) for l in (out / "hypotheses.jsonl").read_text().splitlines()]
    assert len(hyps) == 12 and all(h["hypothesis"] for h in hyps)
    from speechprune.data.sources import SOURCES

    ood = json.loads((out / "ood" / "metrics.json").read_text())  # the out-of-domain suite beside it, per source
    assert set(ood["by_source"]) == set(SOURCES) and ood["n_utterances"] == 2 * len(SOURCES)
    assert ood["settings"]["data"] == "english-ood" and 0 < ood["wer"] < 1
    assert ood["macro_wer"] == sum(v["wer"] for v in ood["by_source"].values()) / len(SOURCES)
    assert "out of domain" in proc.stdout


@needs_sounds
def test_bench_command_writes_the_record(tmp_path):
    proc = cli("bench", "whisper-tiny.en", "asterisk", "--utterances", "2", "--repeats", "1", "--warmup", "0",
               "--threads", "2", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    r = json.loads((tmp_path / "bench.json").read_text())
    for key in ("latency_ms_median", "encoder_ms_median", "decoder_ms_per_token", "flops_encoder", "params", "disk_bytes",
                "peak_rss_bytes", "other_cpu_load", "environment"):
        assert r[key] is not None, key
    assert set(r["backends"]) == {"torch", "faster-whisper-int8"}
    assert abs(r["flops_encoder"] / 1e9 - 36.94) < 0.01 and abs(r["params"] / 1e6 - 37.76) < 0.01
    assert r["encoder_ms_median"] < r["latency_ms_median"]
    assert r["environment"]["threads"] == 2 and r["environment"]["versions"]["torch"].startswith("2.13")


@needs_sounds
def test_bad_clips_are_skipped_or_handled_and_listed(tmp_path):
    rng = np.random.default_rng(0)
    real, sr = sf.read(SOUNDS / "agent-pass.wav")  # 8 kHz mono
    sf.write(tmp_path / "stereo.wav", np.stack([real, real], axis=1), sr)
    sf.write(tmp_path / "long.wav", np.concatenate([real, np.zeros(35 * sr), real]), sr)
    sf.write(tmp_path / "empty.wav", np.zeros(0), 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + rng.bytes(200))
    good = (SOUNDS / "agent-pass.wav").read_bytes()
    (tmp_path / "truncated.wav").write_bytes(good[: len(good) // 2])
    rows = [("eight_khz", str(SOUNDS / "agent-pass.wav")), ("stereo", "stereo.wav"), ("long", "long.wav"),
            ("empty", "empty.wav"), ("corrupt", "corrupt.wav"), ("truncated", "truncated.wav"), ("missing", "nope.wav")]
    text = "Please enter your password followed by the pound key."
    (tmp_path / "m.jsonl").write_text("".join(json.dumps({"id": i, "audio": a, "text": text}) + "\n" for i, a in rows))
    proc = cli("eval", "whisper-tiny.en", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "o"), "--no-ood")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "o" / "ood").exists()
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert {f["id"] for f in m["failed"]} == {"empty", "corrupt", "truncated", "missing"}
    assert m["n_scored"] == 3
    hyps = {h["id"]: h for h in map(json.loads, (tmp_path / "o" / "hypotheses.jsonl").read_text().splitlines())}
    assert hyps["long"]["n_windows"] == 2 and hyps["long"]["hypothesis"].lower().count("password") == 2
    assert "password" in hyps["stereo"]["hypothesis"].lower()


def test_bad_arguments_get_one_line_errors(tmp_path):
    (tmp_path / "notjson.jsonl").write_text('{"audio": "a.wav", "text": "x"}\n{oops\n')
    (tmp_path / "latin1.jsonl").write_bytes('{"audio": "a.wav", "text": "caf\xe9"}\n'.encode("latin-1"))
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text('{"model_type": "bert"}')
    assert_one_line_error(cli("eval", "whisper-huge-v9", "asterisk"), "whisper-huge-v9", "whisper-tiny.en")
    assert_one_line_error(cli("eval", str(tmp_path / "folder"), "asterisk"), "not a model folder of a supported family")
    assert_one_line_error(cli("eval", "whisper-tiny.en", str(tmp_path / "missing.jsonl")), "missing.jsonl")
    assert_one_line_error(cli("eval", "whisper-tiny.en", str(tmp_path / "notjson.jsonl")), "notjson.jsonl", "line 2")
    assert_one_line_error(cli("eval", "whisper-tiny.en", str(tmp_path / "latin1.jsonl")), "latin1.jsonl", "UTF-8")
    assert_one_line_error(cli("eval", "whisper-tiny.en", "asterisk", "--split", "train"), "train")
