"""Model surgery on tiny random Whisper and Wav2Vec2 models: physical removal equals masking, the model stays clean."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from closeness import assert_family_close, whisper_depth
from tiny_models import EOT, SOT, ToyTokenizer, toy_vocab

from speechprune.errors import ConfigError, ModelError
from speechprune.models.adapters import adapter_for
from speechprune.models.units import ParamSlice
from speechprune.models.whisper.flops import encoder_flops
from speechprune.models.whisper.shape import whisper_shape

FAMILIES = ("whisper", "wav2vec2")


def inputs(family: str, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    if family == "whisper":
        return {"input_features": torch.randn(2, 80, 3000, generator=g),
                "decoder_input_ids": torch.tensor([[SOT, 62, 5, 9, 11, 3], [SOT, 62, 7, 7, 40, 2]])}
    return {"input_values": torch.randn(2, 4000, generator=g)}


@torch.no_grad()
def run(model, family: str) -> torch.Tensor:
    return model(**inputs(family)).logits


def layers(model, stack: str):
    if hasattr(model, "wav2vec2"):
        return model.wav2vec2.encoder.layers
    return getattr(model.model, stack).layers


def branch(model, stack: str, layer: int, kind: str):
    """``(attention or FFN module holder, output-side Linear)`` of a block (test-side name knowledge)."""
    l = layers(model, stack)[layer]
    if hasattr(model, "wav2vec2"):
        if kind == "self_attn":
            return l.attention, l.attention.out_proj
        return l.feed_forward, l.feed_forward.output_dense
    if kind == "ffn":
        return l, l.fc2
    attn = l.self_attn if kind == "self_attn" else l.encoder_attn
    return attn, attn.out_proj


def group(adapter, model, key: str):
    return next(g for g in adapter.unit_groups(model) if g.key == key)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------------
# unit groups


@pytest.mark.parametrize("family", FAMILIES)
def test_unit_groups_describe_every_block(family, build):
    model = build(family)
    adapter = adapter_for(model)
    groups = adapter.unit_groups(model)
    expected = (
        ["encoder.0.self_attn", "encoder.0.ffn", "encoder.1.self_attn", "encoder.1.ffn", "decoder.0.self_attn",
         "decoder.0.cross_attn", "decoder.0.ffn", "decoder.1.self_attn", "decoder.1.cross_attn", "decoder.1.ffn"]
        if family == "whisper" else ["encoder.0.self_attn", "encoder.0.ffn", "encoder.1.self_attn", "encoder.1.ffn"]
    )
    assert [g.key for g in groups] == expected
    for g in groups:
        assert (g.n_units, g.unit_size) == ((4, 8) if g.kind != "ffn" else (64, 1))
        assert g.activation_site.in_features == g.n_units * g.unit_size
        for s in g.params:
            assert isinstance(s, ParamSlice) and s.per_unit().shape[0] == g.n_units
    assert adapter.stacks(model) == (("encoder", "decoder") if family == "whisper" else ("encoder",))


# ----------------------------------------------------------------------------------------------------------------
# physical removal == masking

PRUNE_CASES = [
    ("whisper", "encoder.1.self_attn", [0, 2, 3]),
    ("whisper", "decoder.0.self_attn", [1]),
    ("whisper", "decoder.1.cross_attn", [0, 3]),
    ("whisper", "encoder.0.ffn", list(range(0, 64, 3))),
    ("whisper", "decoder.1.ffn", [5, 6, 60]),
    ("wav2vec2", "encoder.0.self_attn", [1, 2]),
    ("wav2vec2", "encoder.1.ffn", list(range(1, 64, 2))),
]


@pytest.mark.parametrize("family,key,keep", PRUNE_CASES)
def test_pruning_units_equals_zeroing_their_output_slice(family, key, keep, build):
    model = build(family)
    ref = copy.deepcopy(model)
    stack, layer, kind = key.split(".")
    _, out = branch(ref, stack, int(layer), kind)
    size = 1 if kind == "ffn" else 8
    dropped = [u for u in range(out.in_features // size) if u not in keep]
    with torch.no_grad():  # zero the input columns of the output projection; its bias stays
        for u in dropped:
            out.weight[:, u * size : (u + 1) * size] = 0

    adapter = adapter_for(model)
    before = n_params(model)
    adapter.prune_units(model, group(adapter, model, key), keep)

    assert_family_close(family, run(model, family), run(ref, family))
    g = group(adapter, model, key)
    assert g.n_units == len(keep)
    d = 32
    per_unit = (2 * d + 1) if kind == "ffn" else size * (4 * d + (3 if family == "wav2vec2" else 2))
    assert before - n_params(model) == per_unit * len(dropped)
    holder, out = branch(model, stack, int(layer), kind)
    assert out.in_features == len(keep) * size
    if kind != "ffn":
        assert holder.num_heads == len(keep) and holder.q_proj.out_features == len(keep) * 8


def test_pruned_units_keep_their_order_and_values(build):
    model = build("whisper")
    attn = model.model.encoder.layers[0].self_attn
    q_rows = attn.q_proj.weight[16:24].clone()
    adapter = adapter_for(model)
    adapter.prune_units(model, group(adapter, model, "encoder.0.self_attn"), [3, 2])  # any order; kept sorted
    new = model.model.encoder.layers[0].self_attn
    assert torch.equal(new.q_proj.weight[:8], q_rows)
    assert isinstance(new.q_proj.weight, torch.nn.Parameter) and new.q_proj.weight.requires_grad


REMOVE_CASES = [
    ("whisper", "encoder", 0, "self_attn"),
    ("whisper", "encoder", 1, "ffn"),
    ("whisper", "decoder", 0, "self_attn"),
    ("whisper", "decoder", 1, "cross_attn"),
    ("whisper", "decoder", 0, "ffn"),
    ("wav2vec2", "encoder", 1, "self_attn"),
    ("wav2vec2", "encoder", 0, "ffn"),
]


@pytest.mark.parametrize("family,stack,layer,kind", REMOVE_CASES)
def test_removing_a_module_equals_zeroing_its_branch(family, stack, layer, kind, build):
    model = build(family)
    ref = copy.deepcopy(model)
    _, out = branch(ref, stack, layer, kind)
    with torch.no_grad():
        out.weight.zero_()
        out.bias.zero_()
    adapter = adapter_for(model)
    adapter.remove_module(model, stack, layer, kind)
    assert_family_close(family, run(model, family), run(ref, family))
    assert f"{stack}.{layer}.{kind}" not in [g.key for g in adapter.unit_groups(model)]
    s = adapter.structure(model)
    assert s[stack]["layers"][layer][kind] is None


@pytest.mark.parametrize("family,stack,drop", [
    ("whisper", "encoder", [0]), ("whisper", "decoder", [0]), ("whisper", "decoder", [1]), ("wav2vec2", "encoder", [0]),
])
def test_removing_layers_equals_skipping_them(family, stack, drop, build):
    model = build(family)
    ref = copy.deepcopy(model)
    for i in drop:  # the reference runs every layer but makes the dropped ones identities
        layers(ref, stack)[i].register_forward_hook(lambda mod, args, out: args[0])
    adapter = adapter_for(model)
    adapter.remove_layers(model, stack, drop)
    assert_family_close(family, run(model, family), run(ref, family))
    assert adapter.n_layers(model, stack) == 2 - len(drop)
    count = model.config.num_hidden_layers if family == "wav2vec2" else getattr(model.config, f"{stack}_layers")
    assert count == 2 - len(drop)


# ----------------------------------------------------------------------------------------------------------------
# KV-cache decoding after decoder surgery


def _decoder_surgery(model):
    adapter = adapter_for(model)
    adapter.remove_layers(model, "decoder", [1])  # layer 2 becomes 1: its KV-cache slot must follow
    adapter.prune_units(model, group(adapter, model, "decoder.0.self_attn"), [0, 3])
    adapter.prune_units(model, group(adapter, model, "decoder.1.cross_attn"), [2])
    adapter.remove_module(model, "decoder", 0, "self_attn")  # self-attention slots: only layers 1 and 2
    adapter.remove_module(model, "decoder", 2, "cross_attn")
    adapter.prune_units(model, group(adapter, model, "decoder.2.ffn"), list(range(20)))
    return adapter


def test_kv_cache_greedy_decoding_after_decoder_surgery_equals_uncached(build):
    from speechprune.models.decoding import DecodeOptions
    from speechprune.models.whisper.backend import TorchWhisper
    from speechprune.models.whisper.decoding import greedy_search

    model = build("whisper", decoder_layers=4)
    _decoder_surgery(model)
    assert [l.self_attn.layer_idx for l in model.model.decoder.layers if l.self_attn is not None] == [0, 1]
    assert [l.encoder_attn.layer_idx for l in model.model.decoder.layers if l.encoder_attn is not None] == [0, 1]

    backend = TorchWhisper(model, ToyTokenizer(), toy_vocab())
    feats = inputs("whisper")["input_features"].numpy()
    enc = backend.encode(feats)
    decoded = backend.decode(enc, [None, None], [None, None], DecodeOptions(beam_size=1, max_new_tokens=12))

    @torch.no_grad()
    def uncached_step(ids, cache):  # the whole sequence every step: no cache involved
        cache.append(ids)
        full = torch.cat(cache, dim=1)
        h = model.model.decoder(input_ids=full, encoder_hidden_states=enc, use_cache=False).last_hidden_state
        return model.proj_out(h[:, -1])

    tokens, _ = greedy_search(uncached_step, list, [[SOT, 62]] * 2, toy_vocab(), 12)
    assert decoded.tokens == tokens
    beam = backend.decode(enc, [None, None], [None, None], DecodeOptions(beam_size=3, max_new_tokens=12)).tokens
    assert len(beam) == 2 and all(beam)  # the cache reorders across beams with the renumbered slots
    assert any(len(t) > 3 for t in tokens)  # it really decoded something

    # and the cached logits of each step equal the uncached ones (not just their argmax)
    cached_logits = []

    def cached_step(ids, cache):
        logits = backend._stepper(enc)(ids, cache)
        cached_logits.append(logits)
        return logits

    with torch.inference_mode():
        greedy_search(cached_step, backend._new_cache, [[SOT, 62]] * 2, toy_vocab(), 12)
    seqs = torch.tensor([[SOT, 62] + t + [EOT] * (12 - len(t)) for t in decoded.tokens])
    with torch.no_grad():
        h = model.model.decoder(input_ids=seqs, encoder_hidden_states=enc, use_cache=False).last_hidden_state
        full = model.proj_out(h)
    for i, logits in enumerate(cached_logits):  # finished items are fed end-of-text, as in `seqs`
        assert_family_close("whisper", logits, full[:, 1 + i], depth=whisper_depth(0, 4))


def test_hf_forward_with_its_own_cache_after_decoder_surgery(build):
    model = build("whisper", decoder_layers=4)
    ref = copy.deepcopy(model)
    _decoder_surgery(model)
    with torch.no_grad():
        a = model(**inputs("whisper")).logits  # use_cache=True: transformers builds a pre-allocated cache
        b = model(**inputs("whisper"), use_cache=False).logits
    assert_family_close("whisper", a, b, depth=whisper_depth(2, 4))
    assert not torch.allclose(a, run(ref, "whisper"), atol=1e-3)


# ----------------------------------------------------------------------------------------------------------------
# the model after surgery


def _mixed_surgery(family, model):
    adapter = adapter_for(model)
    adapter.prune_units(model, group(adapter, model, "encoder.0.self_attn"), [0, 1])
    adapter.prune_units(model, group(adapter, model, "encoder.1.ffn"), list(range(16)))
    adapter.remove_module(model, "encoder", 1, "self_attn")
    if family == "whisper":
        adapter.prune_units(model, group(adapter, model, "decoder.1.cross_attn"), [3])
        adapter.remove_module(model, "decoder", 0, "ffn")
    return adapter


def _mask_names(model) -> set[str]:
    return {n for n, _ in [*model.named_parameters(), *model.named_buffers()] if "mask" in n.lower()}


@pytest.mark.parametrize("family", FAMILIES)
def test_model_is_clean_smaller_and_described_after_surgery(family, build):
    model = build(family)
    stock = copy.deepcopy(model)
    stock_parametrized = {n for n, m in stock.named_modules() if hasattr(m, "parametrizations")}
    adapter = _mixed_surgery(family, model)

    for name, m in model.named_modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), name
        if hasattr(m, "parametrizations"):  # wav2vec2's positional conv carries weight norm from transformers
            assert name in stock_parametrized, name
    assert _mask_names(model) == _mask_names(stock)
    assert not torch.nn.modules.module._global_forward_hooks

    enc0 = layers(model, "encoder")[0]
    attn = enc0.attention if family == "wav2vec2" else enc0.self_attn
    assert attn.q_proj.weight.shape == (16, 32) and attn.out_proj.weight.shape == (32, 16)
    d, ffn_drop = 32, 64 - 16
    expected = 2 * 8 * (4 * d + (3 if family == "wav2vec2" else 2))  # two heads of encoder.0
    expected += ffn_drop * (2 * d + 1)
    expected += 4 * d * d + (4 if family == "wav2vec2" else 3) * d  # encoder.1 self_attn: q/k/v/out (+ biases)
    expected += 0 if family == "wav2vec2" else 2 * d  # whisper's pre-norm goes with it; wav2vec2's post-norm stays
    if family == "whisper":
        expected += 3 * 8 * (4 * d + 2)  # three cross heads
        expected += (d * 64 + 64) + (64 * d + d) + 2 * d  # fc1, fc2, final_layer_norm
    assert n_params(stock) - n_params(model) == expected

    s = adapter.structure(model)
    json.dumps(s)
    assert s["encoder"]["layers"][0]["self_attn"] == 2 and s["encoder"]["layers"][1] == {"self_attn": None, "ffn": 16}
    assert s["encoder"]["original"] == {"layers": 2, "heads": 4, "head_dim": 8, "ffn": 64}
    assert model.config.speechprune_structure == s
    if family == "whisper":
        shape = whisper_shape(model)
        assert shape.encoder[0].self_attn.n_heads == 2 and shape.encoder[1].self_attn is None
        assert shape.encoder[1].ffn_dim == 16 and shape.decoder[0].ffn_dim == 0
        assert shape.decoder[1].cross_attn.n_heads == 1
        assert encoder_flops(shape).total < encoder_flops(whisper_shape(stock)).total
        assert model.config.encoder_ffn_dim == 64 and model.config.decoder_ffn_dim == 64  # not uniform: kept
        assert not adapter.stock_compatible(model)


def test_config_keeps_uniform_stock_fields(build):
    model = build("whisper")
    adapter = adapter_for(model)
    for i in range(2):
        adapter.prune_units(model, group(adapter, model, f"encoder.{i}.ffn"), list(range(40)))
    adapter.remove_layers(model, "decoder", [0])
    c = model.config
    assert (c.encoder_ffn_dim, c.decoder_ffn_dim, c.encoder_layers, c.decoder_layers) == (40, 64, 2, 1)
    assert adapter.stock_compatible(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_structure_reshapes_a_fresh_model(family, build):
    model = build(family)
    adapter = _mixed_surgery(family, model)
    adapter.remove_layers(model, "encoder", [0])
    structure = json.loads(json.dumps(adapter.structure(model)))
    fresh = build(family, seed=3)
    adapter.apply_structure(fresh, structure)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(run(fresh, family), run(model, family))  # the same computation twice
    assert adapter.structure(fresh) == structure


@pytest.mark.parametrize("family", FAMILIES)
def test_apply_structure_rejects_what_does_not_fit(family, build):
    model = build(family)
    adapter = adapter_for(model)
    s = adapter.structure(model)
    s["encoder"]["layers"][0]["self_attn"] = 9
    with pytest.raises(ModelError, match="does not fit"):
        adapter.apply_structure(build(family), s)
    s = adapter.structure(model)
    s["family"] = "other"
    with pytest.raises(ModelError, match="does not fit"):
        adapter.apply_structure(build(family), s)


def test_stable_layer_norm_wav2vec2_removal_equals_zeroed_branch(build):
    model = build("wav2vec2", do_stable_layer_norm=True, feat_extract_norm="layer")
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref_layers = ref.wav2vec2.encoder.layers
        for m in (ref_layers[0].feed_forward.output_dense, ref_layers[1].attention.out_proj):
            m.weight.zero_()
            m.bias.zero_()
    adapter = adapter_for(model)
    adapter.remove_module(model, "encoder", 0, "ffn")
    adapter.remove_module(model, "encoder", 1, "self_attn")
    assert model.wav2vec2.encoder.layers[0].final_layer_norm is None  # pre-norm: the block's norm goes too
    assert_family_close("wav2vec2", run(model, "wav2vec2"), run(ref, "wav2vec2"))


# ----------------------------------------------------------------------------------------------------------------
# invalid requests

def _twice(first, second):
    return lambda a, m: (first(a, m), second(a, m))


def _drop(stack, layer, kind):
    return lambda a, m: a.remove_module(m, stack, layer, kind)


INVALID = [
    ("whisper", lambda a, m: a.prune_units(m, group(a, m, "encoder.0.self_attn"), []), "remove the module instead"),
    ("whisper", lambda a, m: a.prune_units(m, group(a, m, "decoder.0.ffn"), [0, 64]), "out of range"),
    ("whisper", lambda a, m: a.prune_units(m, group(a, m, "decoder.0.ffn"), [1, 1]), "repeats"),
    ("whisper", lambda a, m: a.remove_module(m, "encoder", 0, "conv"), "conv stem cannot be removed"),
    ("whisper", lambda a, m: a.remove_module(m, "encoder", 0, "cross_attn"), "have no cross_attn"),
    ("whisper", lambda a, m: a.remove_module(m, "encoder", 0, "mlp"), "unknown module kind"),
    ("whisper", lambda a, m: a.remove_module(m, "middle", 0, "ffn"), "unknown stack"),
    ("whisper", lambda a, m: a.remove_module(m, "decoder", 2, "ffn"), "layer 2 does not exist"),
    ("whisper", lambda a, m: a.remove_layers(m, "encoder", [0, 1]), "at least one must stay"),
    ("whisper", lambda a, m: a.remove_layers(m, "encoder", [-1]), "does not exist"),
    ("whisper", _twice(_drop("decoder", 0, "self_attn"), _drop("decoder", 0, "self_attn")), "already removed"),
    ("whisper", _twice(_drop("decoder", 0, "self_attn"), _drop("decoder", 1, "self_attn")), "last decoder self_attn"),
    ("whisper", lambda a, m: (a.remove_module(m, "decoder", 0, "self_attn"), a.remove_layers(m, "decoder", [1])),
     "last decoder self_attn"),
    ("whisper", lambda a, m: (g := group(a, m, "encoder.0.ffn"), a.prune_units(m, g, [0, 1]), a.prune_units(m, g, [0])),
     "stale"),
    ("wav2vec2", lambda a, m: a.remove_module(m, "encoder", 0, "conv"), "conv feature encoder cannot be removed"),
    ("wav2vec2", lambda a, m: a.remove_module(m, "encoder", 0, "cross_attn"), "no cross_attn"),
    ("wav2vec2", lambda a, m: a.remove_layers(m, "decoder", [0]), "unknown stack"),
    ("wav2vec2", lambda a, m: a.prune_units(m, group(a, m, "encoder.1.self_attn"), []), "remove the module instead"),
    ("wav2vec2", lambda a, m: a.remove_module(m, "encoder", 5, "ffn"), "layer 5 does not exist"),
]


@pytest.mark.parametrize("family,call,message", INVALID)
def test_invalid_requests_raise_one_line_config_errors(family, call, message, build):
    model = build(family)
    adapter = adapter_for(model)
    with pytest.raises(ConfigError) as e:
        call(adapter, model)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_adapter_for_an_unsupported_model():
    with pytest.raises(ModelError, match="no pruning adapter for .*Linear"):
        adapter_for(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kind", ["Encoder", "Decoder"])
def test_pruned_layers_take_the_arguments_of_the_installed_transformers_layers(kind):
    """The pruned layers copy transformers' forward; a release that renames an argument (5.24: ``past_key_values``
    -> ``cache``) must fail here, not pass the cache into ``**kwargs`` where it is silently dropped."""
    import inspect

    from transformers.models.whisper import modeling_whisper

    from speechprune.models.whisper import adapter

    def params(fn):
        return list(inspect.signature(inspect.unwrap(fn)).parameters)

    ours = getattr(adapter, f"PrunedWhisper{kind}Layer").forward
    assert params(ours) == params(getattr(modeling_whisper, f"Whisper{kind}Layer").forward)
