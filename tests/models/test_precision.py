"""Numerics chosen by the machine: the decision from measured rates, the accuracy check's fallback, and a Whisper
backend running parts in bfloat16 where the rates say so."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.models import precision
from speechprune.models.precision import PartChoice, check_error, choose, choose_part
from speechprune.numerics import reorder_rtol, rounding_rtol


def test_the_fastest_dtype_wins_only_by_the_margin():
    assert choose({"float32": 277.0, "bfloat16": 2436.0})[0] == "bfloat16"  # AMX, issue 18's measurement
    dtype, why = choose({"float32": 55.7, "bfloat16": 1.0})  # AVX2 only, measured here
    assert dtype == "float32" and "55.7x slower" in why
    assert choose({"float32": 100.0, "bfloat16": 110.0})[0] == "float32"  # within the margin: the reference
    with pytest.raises(ValueError):
        choose({"bfloat16": 1.0})


def test_a_forced_dtype_the_cpu_runs_slowly_is_a_one_line_error():
    with pytest.raises(ConfigError, match="runs 56x slower than float32 on this CPU"):
        choose_part(1500, 384, 1536, "bfloat16", rates={"float32": 55.7, "bfloat16": 1.0})
    kept = choose_part(1500, 384, 1536, "bfloat16", rates={"float32": 100.0, "bfloat16": 50.0})
    assert kept.dtype == "bfloat16" and kept.why.startswith("forced")
    with pytest.raises(ConfigError, match="unknown numerics 'int4'"):
        choose_part(1, 2, 3, "int4")


def test_an_automatic_choice_that_moves_the_output_too_far_falls_back_to_float32():
    auto = PartChoice("bfloat16", {"float32": 1.0, "bfloat16": 9.0}, "bfloat16 9.0x float32's rate on this CPU")
    assert check_error(auto, 0.016).dtype == "bfloat16"
    back = check_error(auto, 0.2)
    assert back.dtype == "float32" and "rejected" in back.why
    forced = PartChoice("bfloat16", auto.gflops, "forced; 9x float32's rate on this CPU")
    assert check_error(forced, 0.2).dtype == "bfloat16"


def test_the_probe_measures_every_candidate_on_this_machine():
    rates = precision.probe_rates(64, 32, 48, seconds=0.001)
    assert set(rates) == set(precision.CANDIDATES) and all(r > 0 for r in rates.values())


def test_a_whisper_backend_runs_the_parts_the_rates_choose_in_bfloat16(monkeypatch):
    from speechprune.models.whisper.backend import TorchWhisper
    from speechprune.models.decoding import DecodeOptions
    from tiny_models import ToyTokenizer, tiny_whisper, toy_vocab

    model = tiny_whisper()
    ref = TorchWhisper(model, ToyTokenizer(), toy_vocab())
    assert {c["dtype"] for c in ref.numerics.values()} == {"float32"} and ref._low is None
    monkeypatch.setattr(precision, "probe_rates", lambda *a, **k: {"float32": 1.0, "bfloat16": 9.0})  # an AMX CPU
    low = TorchWhisper(model, ToyTokenizer(), toy_vocab(), numerics="auto")
    assert low.numerics["encoder"]["dtype"] == low.numerics["decoder"]["dtype"] == "bfloat16"
    assert "from float32" in low.numerics["encoder"]["why"]  # the accuracy check ran and is recorded
    assert low.fingerprint() != ref.fingerprint()  # an evaluation in other numerics is not resumed as this one
    feats = (np.random.default_rng(0).standard_normal((2, 80, 3000)) * 0.4).astype(np.float32)
    want, got = ref.encode(feats), low.encode(feats)
    assert got.dtype == torch.float32  # the decoder and the caller see float32 whatever the encoder ran in
    # bfloat16 rounds each layer's inputs and weights: a few unit roundoffs per layer, plus its reductions' reorder
    depth = 2 * 4
    rtol = depth * (4 * rounding_rtol(torch.bfloat16) + reorder_rtol(torch.bfloat16, k=64))
    assert precision.relative_error(got, want) < rtol
    out = low.decode(got, ["en", "en"], [None, None], DecodeOptions(max_new_tokens=4))
    assert len(out.tokens) == 2 and all(len(t) <= 4 for t in out.tokens)
