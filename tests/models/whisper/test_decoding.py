import numpy as np
import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.models.whisper.decoding import WhisperVocab

from speechprune.numerics import reorder_rtol

from closeness import FRAMES, WHISPER_DEPTH
from tiny_models import EOT, NO_TS, SOT, ToyTokenizer, tiny_whisper, toy_vocab


def features(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 80, 3000)).astype(np.float32)


def reference_greedy(model, feats, vocab, max_new):
    """Greedy decoding the slow way: the whole sequence through the model at every step, no cache."""
    out = []
    with torch.no_grad():
        for f in feats:
            ids = [vocab.sot, vocab.no_timestamps]
            gen = []
            for i in range(max_new):
                logits = model(input_features=torch.from_numpy(f[None]), decoder_input_ids=torch.tensor([ids])).logits[0, -1]
                logits[list(vocab.suppress)] = -float("inf")
                if i == 0:
                    logits[list(vocab.begin_suppress)] = -float("inf")
                tok = int(logits.argmax())
                if tok == vocab.eot:
                    break
                gen.append(tok)
                ids.append(tok)
            out.append(gen)
    return out


def backend(model, **kw):
    return TorchWhisper(model, ToyTokenizer(), toy_vocab(**kw))


def decode(be, feats, **opts):
    enc = be.encode(feats)
    n = feats.shape[0]
    return be.decode(enc, [None] * n, [None] * n, DecodeOptions(**opts))


def test_greedy_matches_uncached_reference_in_a_batch(tiny_model):
    be = backend(tiny_model, suppress=(3, 5))
    feats = features(3)
    got = decode(be, feats, max_new_tokens=12)
    want = reference_greedy(tiny_model, feats, be.vocab, 12)
    assert got.tokens == want
    assert any(len(t) > 0 for t in want)
    assert all(3 not in t and 5 not in t for t in got.tokens)
    assert got.stats.later_steps > 0 and got.stats.first_step_s > 0


def test_begin_suppress_changes_the_first_token(tiny_model):
    feats = features(1)
    first = decode(backend(tiny_model), feats, max_new_tokens=4).tokens[0][0]
    again = decode(backend(tiny_model, begin_suppress=(EOT, first)), feats, max_new_tokens=4).tokens[0]
    assert again[0] != first


def test_beam_of_one_is_greedy(tiny_model):
    be = backend(tiny_model)
    feats = features(2, seed=3)
    want = reference_greedy(tiny_model, feats, be.vocab, 10)  # uncached, one clip at a time
    assert decode(be, feats, beam_size=1, max_new_tokens=10).tokens == want and all(len(t) > 2 for t in want)
    # beam_search with k=1 goes through a different loop (cache reordering), and must agree with greedy
    from speechprune.models.whisper.decoding import beam_search, greedy_search, reorder_cache

    enc = be.encode(feats)
    prompts = [[SOT, NO_TS]] * 2
    g, _ = greedy_search(be._stepper(enc), be._new_cache, prompts, be.vocab, 10)
    b, _ = beam_search(be._stepper(enc), be._new_cache, reorder_cache, prompts, be.vocab, 1, 10)
    assert b == g


def _sequence_score(model, feats_row, tokens, vocab):
    """Mean log-probability of ``tokens`` + end-of-text under the model, with the same suppression, and the largest
    logit magnitude (the scale of its rounding errors)."""
    ids = [vocab.sot, vocab.no_timestamps] + tokens
    with torch.no_grad():
        logits = model(input_features=torch.from_numpy(feats_row[None]), decoder_input_ids=torch.tensor([ids])).logits[0]
    total = 0.0
    for i, tok in enumerate(tokens + [vocab.eot]):
        row = logits[len(ids) - len(tokens) - 1 + i].clone()
        row[list(vocab.suppress)] = -float("inf")
        if i == 0:
            row[list(vocab.begin_suppress)] = -float("inf")
        total += float(torch.log_softmax(row, -1)[tok])
    return total / (len(tokens) + 1), float(logits.abs().max())


def test_beam_search_finds_a_better_scored_hypothesis_than_greedy_and_batches_independently():
    model = tiny_whisper(seed=4)
    be = backend(model)
    feats = features(3, seed=5)
    greedy = decode(be, feats, max_new_tokens=8).tokens
    beam = decode(be, feats, beam_size=4, max_new_tokens=8).tokens
    for i in range(3):
        (b, scale), (g, _) = _sequence_score(model, feats[i], beam[i], be.vocab), _sequence_score(model, feats[i], greedy[i], be.vocab)
        # beam search scored its hypotheses with the cached decoder; rescored uncached, a tie may come out either way
        # by the rounding of two summation orders (a log-softmax moves by at most twice its logits' error)
        assert b >= g - 2 * 2 * reorder_rtol(torch.float32, FRAMES, WHISPER_DEPTH) * scale
        alone = decode(be, feats[i : i + 1], beam_size=4, max_new_tokens=8).tokens[0]
        assert alone == beam[i]


def test_options_and_prompts_are_validated():
    with pytest.raises(ConfigError):
        DecodeOptions(beam_size=0)
    with pytest.raises(ConfigError):
        DecodeOptions(task="summarize")
    en = toy_vocab()
    assert en.prompt(None, None) == [SOT, NO_TS]
    with pytest.raises(ConfigError):
        en.prompt("de", "transcribe")
    multi = WhisperVocab(sot=1, eot=2, no_timestamps=3, suppress=(), begin_suppress=(), lang_to_id={"en": 10, "de": 11},
                         task_to_id={"transcribe": 20, "translate": 21})
    assert multi.prompt("de", "translate") == [1, 11, 21, 3]
    with pytest.raises(ConfigError):
        multi.prompt("xx", "transcribe")
