"""Context-aware gates on a tiny random Whisper (issue 20, items 2-3): gated-off blocks compute nothing, training gates
are binary with gradients reaching the predictor, the sparsity loss and the temperature schedule, and the static
pruned model of a context equals the gated model."""

from contextlib import contextmanager

import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.models.gates import (GateConfig, gumbel_keep, hard_keep, pool_features, skip_share, sparsity_loss,
                                      temperature)
from speechprune.models.whisper.adapter import WhisperAdapter
from speechprune.models.whisper.decoding import WhisperVocab
from speechprune.models.whisper.gates import (GatedWhisper, deploy_static, gate_modules, gated_graphs, gated_greedy,
                                              keep_map, static_gates, whisper_gate_config)

from closeness import assert_whisper_close
from tiny_models import EOT, NO_TS, SOT, build_tiny, toy_vocab

LANGS = {"en": 50, "es": 51, "fr": 52}  # a toy multilingual vocabulary: which languages the gates know
VOCAB = WhisperVocab(sot=SOT, eot=EOT, no_timestamps=NO_TS, suppress=(), begin_suppress=(EOT,), lang_to_id=LANGS,
                     task_to_id={"transcribe": 53, "translate": 54})
MODULES = ("encoder.0.self_attn", "encoder.0.ffn", "encoder.1.self_attn", "encoder.1.ffn",
           "decoder.0.self_attn", "decoder.0.cross_attn", "decoder.0.ffn",
           "decoder.1.self_attn", "decoder.1.cross_attn", "decoder.1.ffn")
# skips a whole encoder layer (deploy removes it) and one block of every decoder kind
SKIPPING = {"encoder.0.self_attn": 1, "encoder.0.ffn": 0, "encoder.1.self_attn": 0, "encoder.1.ffn": 0,
            "decoder.0.self_attn": 0, "decoder.0.cross_attn": 1, "decoder.0.ffn": 1,
            "decoder.1.self_attn": 1, "decoder.1.cross_attn": 0, "decoder.1.ffn": 0}


@pytest.fixture(scope="module")
def model():
    return build_tiny("whisper")


def inputs(batch=2, length=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (batch, length), generator=g)
    ids[:, :2] = torch.tensor([SOT, NO_TS])
    return torch.randn(batch, 80, 3000, generator=g), ids


def vector(gates: dict, batch: int = 2) -> torch.Tensor:
    return torch.tensor([[float(gates[m]) for m in MODULES]] * batch)


def block_modules(model, key):
    stack, i, kind = key.split(".")
    layer = WhisperAdapter().stack_module(model, stack).layers[int(i)]
    if kind == "ffn":
        return [layer.final_layer_norm, layer.fc1, layer.fc2]
    attn, norm = (layer.self_attn, layer.self_attn_layer_norm) if kind == "self_attn" else \
        (layer.encoder_attn, layer.encoder_attn_layer_norm)
    return [norm, attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj]


@contextmanager
def calls(model):
    """``{module key: [batch rows of each call to any of its norm and projections]}`` while inside."""
    seen = {m: [] for m in MODULES}
    handles = [mod.register_forward_hook(lambda mod, args, out, key=key: seen[key].append(args[0].shape[0]))
               for key in MODULES for mod in block_modules(model, key)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def test_gate_modules_and_config_follow_the_model(model):
    assert gate_modules(model) == MODULES
    config = whisper_gate_config(model, VOCAB, sparsity=0.5)
    assert config.modules == MODULES and config.languages == ("en", "es", "fr") and config.n_features == 80
    assert whisper_gate_config(model, toy_vocab()).languages == ("en",)  # English-only


def test_a_skipped_block_computes_nothing_in_every_forward(model):
    gated = GatedWhisper(model, whisper_gate_config(model, VOCAB)).eval()
    feats, ids = inputs()
    keep = vector(SKIPPING)
    off = [m for m in MODULES if not SKIPPING[m]]
    with torch.no_grad(), calls(model) as seen:
        gated(feats, ids, keep)
    assert all(not seen[m] for m in off) and all(seen[m] for m in MODULES if SKIPPING[m])

    # incremental decoding with the cache: prefill and steps never call them either
    with calls(model) as seen:
        tokens = gated_greedy(model, toy_vocab(), feats, [[SOT, NO_TS]] * 2, keep, max_new_tokens=5)
    assert all(not seen[m] for m in off) and all(seen[m] for m in MODULES if SKIPPING[m])
    assert len(tokens) == 2

    # rows with different gates: a block runs on the rows that keep it only
    rows = keep.clone()
    rows[1, MODULES.index("encoder.1.ffn")] = 1.0
    with torch.no_grad(), calls(model) as seen:
        gated(feats, ids, rows)
    assert seen["encoder.1.ffn"] == [1, 1, 1]  # norm, fc1, fc2 on one row
    assert seen["encoder.0.self_attn"] == [2] * 5


def test_training_gates_are_binary_and_gradients_reach_the_predictor(model):
    gated = GatedWhisper(model, whisper_gate_config(model, VOCAB, sparsity=0.3))
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        gated.predictor.train()
        feats, ids = inputs(batch=2)
        keep = gated.gates(["es", "fr"], ["translate", "transcribe"], feats, tau=temperature(
            0, 5.0, 0.5, 100), generator=torch.Generator().manual_seed(0))
        assert keep.shape == (2, len(MODULES)) and keep.requires_grad
        assert set(keep.detach().unique().tolist()) <= {0.0, 1.0}
        logits = gated(feats, ids, keep)  # training: every block runs, times its 0/1 gate
        with torch.no_grad():
            assert_whisper_close(logits, gated(feats, ids, keep.detach()))  # the same values as real skipping
        task = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        (task + sparsity_loss(skip_share(keep), 0.3, 1.0)).backward()
        pred = gated.predictor
        for p in (pred.out.weight, pred.out.bias, pred.hidden.weight, pred.tasks.weight):
            assert p.grad is not None and p.grad.abs().sum() > 0
        per_language = pred.languages.weight.grad.abs().sum(dim=1)
        assert per_language[1] > 0 and per_language[2] > 0 and per_language[0] == 0  # es, fr used; en not
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_straight_through_sample_and_argmax():
    logits = torch.randn(4, 10, 2, requires_grad=True)
    g = gumbel_keep(logits, 0.7, torch.Generator().manual_seed(1))
    assert set(g.detach().unique().tolist()) <= {0.0, 1.0}
    g.sum().backward()
    assert logits.grad.abs().sum() > 0  # through the soft sample
    again = gumbel_keep(logits, 0.7, torch.Generator().manual_seed(1))
    assert torch.equal(g, again)
    with torch.no_grad():
        assert torch.equal(hard_keep(logits), (logits[..., 1] >= logits[..., 0]).float())

def test_eval_gates_are_deterministic(model):
    gated = GatedWhisper(model, whisper_gate_config(model, VOCAB)).eval()
    feats, _ = inputs()
    a, b = (gated.gates(["es", "fr"], ["translate", "transcribe"], feats) for _ in range(2))
    assert torch.equal(a, b) and not a.requires_grad


def test_sparsity_loss_is_zero_at_the_target_and_positive_elsewhere():
    for s in (0.1, 0.3, 0.5, 0.7):
        assert float(sparsity_loss(torch.tensor(s), s, 2.0)) == pytest.approx(0.0, abs=1e-7)
        losses = [float(sparsity_loss(torch.tensor(g), s, 2.0)) for g in (0.0, s / 2, (s + 1) / 2, 1.0)]
        assert all(loss > 0 for loss in losses)
    d = 0.2
    assert float(sparsity_loss(torch.tensor(0.5), 0.3, 1.0)) == pytest.approx(d + d * d)
    assert float(skip_share(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))) == 0.5


def test_temperature_anneals_monotonically():
    taus = [temperature(step, 5.0, 0.5, 100) for step in range(-5, 200)]
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    assert taus[0] == 5.0 and temperature(0, 5.0, 0.5, 100) == 5.0
    assert temperature(100, 5.0, 0.5, 100) == pytest.approx(0.5) and temperature(10_000, 5.0, 0.5, 100) == taus[-1]


def test_pooled_features_leave_out_the_windows_padding():
    feats = torch.full((1, 80, 3000), -1.0)
    feats[0, :, :100] = torch.linspace(0, 1, 80)[:, None]
    assert torch.allclose(pool_features(feats)[0], torch.linspace(0, 1, 80))
    assert torch.equal(pool_features(torch.full((1, 80, 30), -1.0)), torch.full((1, 80), -1.0))  # silence


def _fix_gates(gated, gates: dict) -> None:
    """Make the predictor's eval gates ``gates`` for every context and clip (a trained predictor whose gates do not
    depend on the audio)."""
    with torch.no_grad():
        gated.predictor.out.weight.zero_()
        bias = gated.predictor.out.bias.view(-1, 2)
        bias[:, 0] = 0.0
        bias[:, 1] = torch.tensor([3.0 if gates[m] else -3.0 for m in MODULES])


def test_the_static_deployed_model_gives_the_gated_models_output(model):
    gated = GatedWhisper(model, whisper_gate_config(model, VOCAB)).eval()
    _fix_gates(gated, SKIPPING)
    feats, ids = inputs()
    gates = static_gates(gated, "es", "translate", feats)
    assert gates == {m: bool(v) for m, v in SKIPPING.items()}
    deployed = deploy_static(model, gates)
    assert gate_modules(model) == MODULES  # the original is untouched
    s = WhisperAdapter().structure(deployed)
    assert len(s["encoder"]["layers"]) == 1  # encoder layer 1 had nothing left: removed
    assert s["decoder"]["layers"] == [{"self_attn": None, "cross_attn": 4, "ffn": 64},
                                      {"self_attn": 4, "cross_attn": None, "ffn": None}]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in deployed.modules())
    with torch.no_grad():
        want = deployed(input_features=feats, decoder_input_ids=ids).logits
        keep = gated.gates(["es", "es"], ["translate", "translate"], feats)
        assert_whisper_close(gated(feats, ids, keep), want)
        graphs = gated_graphs(model, gates)
        enc = graphs.encoder(feats)
        out = graphs.prefill(ids[:, :2], enc)
        n_self = len(graphs.io.self_cache)
        past, cross = list(out[1: 1 + n_self]), list(out[1 + n_self:])
        assert n_self == 2 and len(cross) == 2  # one self- and one cross-attention block left
        for t in range(2, ids.shape[1]):
            out = graphs.step(ids[:, t: t + 1], torch.tensor([t]), *past, *cross)
            past = list(out[1:])
            assert_whisper_close(out[0], want[:, t])
    # greedy decoding of the deployed model through the toolkit's backend: the same tokens
    from speechprune.models.whisper.backend import TorchWhisper
    from speechprune.models.decoding import DecodeOptions
    from tiny_models import ToyTokenizer

    be = TorchWhisper(deployed, ToyTokenizer(), toy_vocab())
    ref = be.decode(be.encode(feats.numpy()), [None, None], [None, None], DecodeOptions(max_new_tokens=5)).tokens
    assert gated_greedy(model, toy_vocab(), feats, [[SOT, NO_TS]] * 2, keep, max_new_tokens=5) == ref


def test_gates_that_depend_on_the_audio_have_no_static_model(model):
    gated = GatedWhisper(model, whisper_gate_config(model, VOCAB)).eval()
    with torch.no_grad():
        gated.predictor.out.weight.normal_(0, 10.0)
        gated.predictor.out.bias.zero_()
    feats = torch.randn(6, 80, 300, generator=torch.Generator().manual_seed(2)) * torch.arange(1, 7.0)[:, None, None]
    feats = feats + torch.arange(6.0)[:, None, None]
    with pytest.raises(ConfigError, match="depend on the audio"):
        static_gates(gated, "en", "transcribe", feats)


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs_are_one_line_errors(model):
    gated = GatedWhisper(model, whisper_gate_config(model, VOCAB)).eval()
    feats, ids = inputs(batch=1)
    with pytest.raises(ConfigError) as e:
        gated.gates(["xx"], ["transcribe"], feats)
    assert "unknown language 'xx'" in one_line(e)
    with pytest.raises(ConfigError) as e:
        gated.gates(["en"], ["summarize"], feats)
    assert "unknown task 'summarize'" in one_line(e)
    for bad in (0.0, 1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ConfigError) as e:
            whisper_gate_config(model, VOCAB, sparsity=bad)
        assert "sparsity" in one_line(e)
        with pytest.raises(ConfigError):
            sparsity_loss(torch.tensor(0.5), bad, 1.0)
    with pytest.raises(ConfigError) as e:
        GateConfig(modules=MODULES, languages=("en",), sparsty=0.3)
    assert "unknown key" in one_line(e)
    with pytest.raises(ConfigError) as e:
        GateConfig(modules=MODULES, languages=("en",), tasks=("transcribe", "summarize"))
    assert "unknown task" in one_line(e)
    with pytest.raises(ConfigError) as e:
        GatedWhisper(model, GateConfig(modules=MODULES[:-1], languages=("en",)))
    assert "does not fit" in one_line(e)
    with pytest.raises(ConfigError) as e:
        keep_map(MODULES, [1] * 9)
    assert "9 gates for 10" in one_line(e)
    with pytest.raises(ConfigError) as e:
        keep_map(MODULES, [0.5] * 10)
    one_line(e)
    no_self = {m: 0 if m.endswith("self_attn") and m.startswith("decoder") else 1 for m in MODULES}
    for build in (gated_graphs, deploy_static):
        with pytest.raises(ConfigError) as e:
            build(model, no_self)
        assert "self_attn" in one_line(e)
