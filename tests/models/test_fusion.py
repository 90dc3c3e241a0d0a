"""Shallow fusion (``models.fusion``): weight 0 is the plain search exactly (Whisper beam search, CTC prefix beam
search); a heavily weighted LM that prefers one token pulls the output towards it; the LM is stepped once per
emitted token per beam (Whisper) or once per prefix (CTC), and its cached scores equal an uncached forward on the
prefix; bad weights and an LM of another vocabulary are one-line errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from closeness import assert_reorder_close
from models.lm.tiny_lm import SIZES, recognizer, tiny_lm, toy_lm
from speechprune.errors import ConfigError, ModelError, SpeechpruneError
from speechprune.models.ctc.config import ENGLISH_CHARS
from speechprune.models.ctc.vocab import prefix_beam_search
from speechprune.models.decoding import DecodeOptions
from speechprune.models.fusion import FusionLM, WhisperScorer, load_fusion_lm
from speechprune.models.lm import LMConfig, LMModel, TokenizerId, save_lm
from speechprune.models.whisper.backend import TorchWhisper
from tiny_models import EOT, VOCAB, ToyTokenizer, toy_vocab

DEPTH = 6 * SIZES["n_layers"] + 1  # chained reductions of one LM forward
K = max(SIZES["ffn_dim"], SIZES["context"])
PREFERRED = 7  # the token (Whisper id, or character row) the "strong" LMs prefer


def prefer(model: LMModel, row: int) -> LMModel:
    """Make ``model`` give ``row`` a log-probability near 0 and every other row about -100, whatever it read."""
    with torch.no_grad():
        d = model.config.d_model
        u = torch.zeros(d)
        u[0] = 1.0
        model.embed.weight.normal_(std=0.01)
        model.embed.weight[:, 0] = 0.0
        model.embed.weight[row] = 10 * u
        model.norm.weight.zero_()
        model.norm.bias.copy_(10 * u)
    return model


class Counting:
    """Counts (and records the shapes of) an LM's ``step`` calls; the LM itself runs unchanged."""

    def __init__(self, model):
        self.model, self.shapes = model, []
        self._step = model.step
        model.step = self

    def __call__(self, ids, cache=None):
        self.shapes.append(tuple(ids.shape))
        return self._step(ids, cache)


def features(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 80, 3000)).astype(np.float32)


def whisper_decode(model, feats, **opts):
    be = TorchWhisper(model, ToyTokenizer(), toy_vocab())
    enc = be.encode(feats)
    n = feats.shape[0]
    return be.decode(enc, [None] * n, [None] * n, DecodeOptions(**opts))


# --- Whisper ---------------------------------------------------------------------------------------------------------

def test_whisper_weight_zero_is_the_plain_beam_search_and_never_steps_the_lm(tiny_model):
    feats = features(2)
    plain = whisper_decode(tiny_model, feats, beam_size=3, max_new_tokens=10)
    lm = FusionLM(toy_lm())
    calls = Counting(lm.model)
    fused = whisper_decode(tiny_model, feats, beam_size=3, max_new_tokens=10, lm=lm, lm_weight=0.0)
    assert fused.tokens == plain.tokens and any(plain.tokens)
    assert calls.shapes == [] and lm.steps == 0
    # the scorer itself with weight 0 and no bonus (the search loop's fusion path): the same tokens
    from speechprune.models.whisper.decoding import beam_search, reorder_cache

    be = TorchWhisper(tiny_model, ToyTokenizer(), toy_vocab())
    enc = be.encode(feats)
    prompts = [be.vocab.prompt("en", "transcribe")] * 2
    got, _ = beam_search(be._stepper(enc), lambda: be._new_cache(3), reorder_cache, prompts, be.vocab, 3, 10,
                         fusion=WhisperScorer(lm, 0.0, 0.0, EOT))
    assert got == plain.tokens and calls.shapes == []


def test_whisper_a_heavily_weighted_lm_pulls_the_output_to_its_token(tiny_model):
    feats = features(2)
    plain = whisper_decode(tiny_model, feats, beam_size=3, max_new_tokens=8)
    assert all(t != [PREFERRED] * 8 for t in plain.tokens)  # else the test shows nothing
    lm = FusionLM(prefer(toy_lm(), PREFERRED))
    fused = whisper_decode(tiny_model, feats, beam_size=3, max_new_tokens=8, lm=lm, lm_weight=5.0)
    assert fused.tokens == [[PREFERRED] * 8] * 2  # ending (log p_LM ~ -100) or any other token costs ~ -500
    # a small weight leaves the ASR in charge: not every token is the LM's
    light = whisper_decode(tiny_model, feats, beam_size=3, max_new_tokens=8, lm=lm, lm_weight=1e-3)
    assert light.tokens != fused.tokens


def test_whisper_one_lm_step_per_decoder_step_for_every_beam(tiny_model):
    feats = features(2)
    lm = FusionLM(prefer(toy_lm(), PREFERRED))
    calls = Counting(lm.model)
    out = whisper_decode(tiny_model, feats, beam_size=3, max_new_tokens=8, lm=lm, lm_weight=5.0)
    decoder_steps = out.stats.later_steps + 1
    assert len(calls.shapes) == decoder_steps == 8
    assert calls.shapes == [(2 * 3, 1)] * decoder_steps  # one token per row: the prefix is never read again
    # greedy with an LM: the beam search with one beam
    calls.shapes.clear()
    greedy = whisper_decode(tiny_model, feats, beam_size=1, max_new_tokens=8, lm=lm, lm_weight=5.0)
    assert greedy.tokens == [[PREFERRED] * 8] * 2 and calls.shapes == [(2, 1)] * 8


@pytest.mark.parametrize("context", [SIZES["context"], 6])
def test_whisper_scorer_cached_scores_equal_an_uncached_forward(context):
    """Rows reordered and extended as beam search does; with context 6 the LM restarts on a window."""
    model = toy_lm(context=context)
    scorer = WhisperScorer(FusionLM(model), 0.5, 0.25, EOT)
    gen = torch.Generator().manual_seed(3)
    n = 4
    fused = scorer.fuse(torch.zeros(n, VOCAB))
    bonus = torch.full((VOCAB,), 0.25)
    bonus[EOT] = 0.0
    torch.testing.assert_close(fused, 0.5 * scorer.log_probs + bonus)
    for _ in range(9):
        index = torch.randint(0, n, (n,), generator=gen)
        tokens = torch.randint(0, 60, (n,), generator=gen)
        scorer.advance(index, tokens)
        read = scorer.cache.length - 1  # the tokens after the line start the LM holds (fewer after a restart)
        rows = [[EOT] + h[len(h) - read:] for h in scorer.history]
        want = torch.log_softmax(model(torch.tensor(rows)).logits[:, -1].float(), dim=-1)
        assert_reorder_close(scorer.log_probs, want.detach(), k=K, depth=DEPTH)
    assert len(scorer.history[0]) == 9 and (context > 10 or scorer.cache.length < 10)


# --- CTC -------------------------------------------------------------------------------------------------------------

def ctc_log_probs(frames: int = 30, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(frames, len(ENGLISH_CHARS) + 1, generator=gen) * 2.0
    logits[:, 0] += 1.5  # blanks between characters, as CTC outputs have
    return torch.log_softmax(logits, dim=-1)


def test_ctc_weight_zero_is_the_plain_prefix_beam_search_and_never_steps_the_lm():
    lp = ctc_log_probs()
    plain = prefix_beam_search(lp, 30, 4)
    model, _ = tiny_lm("chars")
    calls = Counting(model)
    fused = prefix_beam_search(lp, 30, 4, fusion=FusionLM(model).char_scorer(0.0, 0.0, ENGLISH_CHARS))
    assert fused == plain and plain
    assert calls.shapes == []


def test_ctc_a_heavily_weighted_char_lm_pulls_the_output_to_its_character():
    lp = ctc_log_probs()
    plain = prefix_beam_search(lp, 30, 4)
    model, _ = tiny_lm("chars")
    scorer = FusionLM(prefer(model, PREFERRED)).char_scorer(3.0, 0.0, ENGLISH_CHARS)
    fused = prefix_beam_search(lp, 30, 4, fusion=scorer)
    share = lambda ids: sum(i == PREFERRED for i in ids) / max(len(ids), 1)  # noqa: E731
    assert share(fused) > share(plain) and share(fused) > 0.5


def test_ctc_each_prefix_is_stepped_once_and_matches_an_uncached_forward():
    lp = ctc_log_probs()
    model, _ = tiny_lm("chars", seed=2)
    calls = Counting(model)
    scorer = FusionLM(model).char_scorer(0.8, 0.5, ENGLISH_CHARS)
    prefix_beam_search(lp, 30, 4, fusion=scorer)
    assert len(scorer.computed) == len(set(scorer.computed)) == len(calls.shapes) > 1
    assert all(shape == (1, 1) for shape in calls.shapes)  # one character after the parent's cache
    for prefix in scorer.computed[-5:]:
        _, got = scorer.states[prefix]
        want = torch.log_softmax(model(torch.tensor([[0, *prefix]])).logits[0, -1].float(), dim=-1)
        assert_reorder_close(torch.tensor(got), want.detach(), k=K, depth=DEPTH)


def test_ctc_a_char_lm_with_a_short_context_restarts_on_a_window():
    lp = ctc_log_probs(frames=40)
    model, _ = tiny_lm("chars", context=6)
    scorer = FusionLM(model).char_scorer(0.5, 0.0, ENGLISH_CHARS)
    out = prefix_beam_search(lp, 40, 3, fusion=scorer)
    assert len(out) > 6  # longer than the LM's context: read through windows
    assert any(len(p) >= 6 for p in scorer.computed)


def test_ctc_backend_decodes_with_the_lm():
    from speechprune.models.ctc.backend import CTCBackend
    from tiny_models import tiny_ctc

    be = CTCBackend(tiny_ctc())
    feats = np.random.default_rng(0).standard_normal((2, 16, 200)).astype(np.float32)
    enc = be.encode(feats)
    plain = be.decode(enc, [None] * 2, [None] * 2, DecodeOptions(beam_size=3))
    model, _ = tiny_lm("chars")
    lm = FusionLM(prefer(model, PREFERRED))
    same = be.decode(enc, [None] * 2, [None] * 2, DecodeOptions(beam_size=3, lm=lm, lm_weight=0.0))
    assert same.tokens == plain.tokens and lm.steps == 0
    fused = be.decode(enc, [None] * 2, [None] * 2, DecodeOptions(beam_size=3, lm=lm, lm_weight=3.0))
    assert lm.steps > 0
    assert sum(t.count(PREFERRED) for t in fused.tokens) >= sum(t.count(PREFERRED) for t in plain.tokens)


# --- bad input -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight,bonus", [(-0.1, 0.0), (math.nan, 0.0), (math.inf, 0.0), (0.3, math.nan)])
def test_bad_weights_are_one_line_errors(weight, bonus):
    lm = FusionLM(toy_lm())
    with pytest.raises(ConfigError) as e:
        DecodeOptions(beam_size=2, lm=lm, lm_weight=weight, lm_bonus=bonus)
    assert "\n" not in str(e.value)


def test_weights_without_an_lm_and_mismatched_vocabularies_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs an LM"):
        DecodeOptions(beam_size=2, lm_weight=0.3)
    chars, _ = tiny_lm("chars")
    with pytest.raises(ConfigError, match="character LM") as e:
        FusionLM(chars).whisper_scorer(0.3, 0.0, EOT)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="characters") as e:
        FusionLM(chars).char_scorer(0.3, 0.0, ENGLISH_CHARS[:-1])
    with pytest.raises(ConfigError, match="Whisper-token LM"):
        FusionLM(toy_lm()).char_scorer(0.3, 0.0, ENGLISH_CHARS)
    # an LM over another tokenizer's ids in the search: refused at the first step
    wide = LMModel(LMConfig(tokens="whisper", tokenizer=TokenizerId(sha256="1" * 64, size=80, n_vocab=80),
                            vocab_size=80, **SIZES))
    with pytest.raises(ConfigError, match="not the recognizer's vocabulary"):
        WhisperScorer(FusionLM(wide), 0.3, 0.0, EOT).fuse(torch.zeros(2, VOCAB))
    # folders: a character LM against a Whisper recognizer
    rec = recognizer(tmp_path)
    folder = save_lm(chars, tmp_path / "chars_lm")
    with pytest.raises(SpeechpruneError) as e:
        load_fusion_lm(folder, rec)
    assert "\n" not in str(e.value) and "CTC" in str(e.value)
    with pytest.raises(ModelError, match="not a language model folder"):
        load_fusion_lm(rec, rec)
    # a matching Whisper-token LM loads
    whisper_lm, tok = tiny_lm("whisper", root=tmp_path)
    loaded = load_fusion_lm(save_lm(whisper_lm, tmp_path / "w_lm", tok), rec)
    assert loaded.kind == "whisper" and loaded.folder.endswith("w_lm")


def test_eval_settings_pin_the_lm_and_its_weights(tmp_path):
    from speechprune.evaluate.runner import claim_run_dir, eval_settings

    lm = FusionLM(toy_lm(), folder="lm_folder")
    plain = eval_settings("m", "d", None, "torch", DecodeOptions(beam_size=2))
    assert "lm" not in plain  # runs without an LM resume as before
    a = eval_settings("m", "d", None, "torch", DecodeOptions(beam_size=2, lm=lm, lm_weight=0.3, lm_bonus=0.5))
    b = eval_settings("m", "d", None, "torch", DecodeOptions(beam_size=2, lm=lm, lm_weight=0.4, lm_bonus=0.5))
    assert a["lm"]["weight"] == 0.3 and a["lm"]["folder"] == "lm_folder"
    claim_run_dir(tmp_path, a)
    claim_run_dir(tmp_path, a)
    with pytest.raises(ConfigError, match="lm"):
        claim_run_dir(tmp_path, b)


# --- tuning ----------------------------------------------------------------------------------------------------------

def test_tune_fusion_scores_every_grid_point_and_weight_zero_is_the_plain_wer(tiny_model, clips):
    from speechprune.data.manifest import read_manifest
    from speechprune.evaluate.fusion_tune import tune_fusion
    from speechprune.evaluate.runner import evaluate

    utts = read_manifest(clips)
    be = TorchWhisper(tiny_model, ToyTokenizer(), toy_vocab())
    lm = FusionLM(prefer(toy_lm(), PREFERRED))
    opts = DecodeOptions(beam_size=2, max_new_tokens=6, lm=lm)
    got = tune_fusion(be, utts, opts, weights=(0.0, 5.0), bonuses=(0.0, 0.5), batch_size=3)
    assert [(r["weight"], r["bonus"]) for r in got["grid"]] == [(0.0, 0.0), (0.0, 0.5), (5.0, 0.0), (5.0, 0.5)]
    plain = evaluate(be, utts, clips.parent / "plain", DecodeOptions(beam_size=2, max_new_tokens=6), progress=False)
    assert got["grid"][0]["wer"] == plain["wer"]
    assert got["best"]["wer"] == min(r["wer"] for r in got["grid"])
    with pytest.raises(ConfigError, match="needs an LM"):
        tune_fusion(be, utts, DecodeOptions(beam_size=2))
    with pytest.raises(ConfigError, match="LM weight"):
        tune_fusion(be, utts, opts, weights=(-1.0,))


# --- the eval command ------------------------------------------------------------------------------------------------

def test_eval_command_fuses_records_the_lm_and_refuses_other_weights_on_resume(tmp_path, clips):
    from cli_helpers import cli
    from models.conftest import EOT as EOT_TINY
    from models.conftest import write_tiny_whisper_folder

    from transformers import WhisperFeatureExtractor

    whisper, hf = write_tiny_whisper_folder(tmp_path / "rec")
    with torch.no_grad():  # end-of-text after the first token, whatever the audio: short decodes
        norm = whisper.model.decoder.layer_norm
        norm.weight.zero_()
        norm.bias.copy_(20 * whisper.proj_out.weight[EOT_TINY])
    whisper.save_pretrained(hf)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(hf)
    model, tok = tiny_lm("whisper", root=tmp_path / "rec")  # the same tiny tokenizer as the recognizer
    lm = save_lm(model, tmp_path / "lm", tok)
    out = tmp_path / "out"
    common = ["eval", str(hf), str(clips), "--beam", "2", "--out", str(out), "--no-ood", "--lm", str(lm)]
    r = cli(*common, "--lm-weight", "0.5", "--lm-bonus", "0.25")
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    assert run["lm"]["weight"] == 0.5 and run["lm"]["bonus"] == 0.25 and run["lm"]["folder"] == str(lm)
    r = cli(*common, "--lm-weight", "0.6")
    assert r.returncode != 0 and "lm" in r.stderr and "Traceback" not in r.stderr
    r = cli(*common[:-1], str(tmp_path / "nowhere"), "--lm-weight", "-1")
    assert r.returncode != 0 and "LM weight" in r.stderr and "Traceback" not in r.stderr
    chars = save_lm(tiny_lm("chars")[0], tmp_path / "chars")
    r = cli("eval", str(hf), str(clips), "--beam", "2", "--out", str(tmp_path / "o2"), "--no-ood", "--lm", str(chars))
    assert r.returncode != 0 and "CTC" in r.stderr and "Traceback" not in r.stderr
