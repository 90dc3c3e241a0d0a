"""The latency bench feeds every backend its own front end: a wav2vec2 model is timed on its normalized waveform and
counted at each clip's samples; backends that read different front ends are not timed side by side."""

from __future__ import annotations

import pytest

from speechprune.bench.latency import BenchOptions, benchmark
from speechprune.data.datasets import load_dataset
from speechprune.errors import ConfigError
from speechprune.evaluate.backends import load_backend
from speechprune.models.whisper.backend import TorchWhisper
from tiny_models import ToyTokenizer, tiny_wav2vec2_folder, tiny_whisper, toy_vocab

QUICK = BenchOptions(warmup=1, repeats=1, max_utterances=3)


def test_a_wav2vec2_model_is_timed_on_its_waveform_and_counted_per_clip(clips, tmp_path):
    be = load_backend(str(tiny_wav2vec2_folder(tmp_path / "m")))
    rec = benchmark([be], load_dataset(str(clips)), bench=QUICK, progress=False)
    rows = rec["backends"]["wav2vec2"]["utterances"]
    assert [r["samples"] for r in rows] == [8000, 11200, 14400]
    assert rec["flops_encoder"] == be.clip_flops(11200) and rec["flops_decoder_per_token"] == 0
    assert rec["params"] == be.params and rec["numerics"]["all"]["dtype"] == "float32"
    assert rec["latency_ms_median"] > 0


def test_backends_that_read_different_front_ends_are_refused(clips, tmp_path):
    wav2vec2 = load_backend(str(tiny_wav2vec2_folder(tmp_path / "m")))
    whisper = TorchWhisper(tiny_whisper(), ToyTokenizer(), toy_vocab())
    with pytest.raises(ConfigError, match="different front ends") as info:
        benchmark([whisper, wav2vec2], load_dataset(str(clips)), bench=QUICK, progress=False)
    assert "\n" not in str(info.value) and "FeatureFrontend(80,)" in str(info.value)
    # asked to, each is timed on its own front end (a peer computing its own features from the waveform)
    from speechprune.models.decoding import DecodeOptions

    rec = benchmark([whisper, wav2vec2], load_dataset(str(clips)), DecodeOptions(max_new_tokens=6), bench=QUICK,
                    progress=False, own_frontends=True)
    assert all(b["n_utterances"] == 3 and b["features_ms_median"] > 0 for b in rec["backends"].values())


def test_one_recognizer_timed_with_and_without_an_lm_side_by_side_splits_the_lms_time(clips):
    from models.lm.tiny_lm import toy_lm
    from speechprune.models.decoding import DecodeOptions
    from speechprune.models.fusion import FusionLM

    model = tiny_whisper()
    plain, fused = (TorchWhisper(model, ToyTokenizer(), toy_vocab(), name=n) for n in ("beam2", "beam2-lm"))
    lm = FusionLM(toy_lm(), "toy")
    options = {"beam2": DecodeOptions(beam_size=2, max_new_tokens=6),
               "beam2-lm": DecodeOptions(beam_size=2, max_new_tokens=6, lm=lm, lm_weight=0.5)}
    rec = benchmark([plain, fused], load_dataset(str(clips)), options, bench=QUICK, progress=False)
    rows = {name: b["utterances"] for name, b in rec["backends"].items()}
    assert all(r["lm_ms"] == 0 for r in rows["beam2"])
    assert all(0 < r["lm_ms"] <= r["decoder_ms"] for r in rows["beam2-lm"])  # the LM's steps are decoder time
    assert rec["backends"]["beam2-lm"]["decode"] == {"beam_size": 2, "lm": "toy", "lm_weight": 0.5, "lm_bonus": 0.0}
    with pytest.raises(ConfigError, match="no decoding options for beam2-lm"):
        benchmark([plain, fused], load_dataset(str(clips)), {"beam2": options["beam2"]}, bench=QUICK, progress=False)
