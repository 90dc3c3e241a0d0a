"""The CTC family on tiny random configs: padding cannot leak between items, exits equal truncated models, LayerDrop
only acts in training, CTC search, checkpoints that reload to identical outputs, and a Whisper encoder that maps
onto the Whisper-encoder CTC model."""

import json
import math

import pytest
import torch

from closeness import assert_reorder_close
from tiny_models import tiny_ctc
from speechprune.errors import ModelError
from speechprune.models.ctc import (BLANK, CharVocab, CTCConfig, from_whisper, greedy_ctc, layerdrop_rates,
                                    load_ctc, prefix_beam_search, save_ctc)

KINDS = [("whisper", "batch"), ("conformer", "batch"), ("conformer", "group")]


@pytest.mark.parametrize("encoder, norm", KINDS)
def test_an_item_decodes_the_same_alone_and_beside_a_longer_one(encoder, norm):
    model = tiny_ctc(encoder, norm)
    torch.manual_seed(1)
    feats = torch.randn(2, 16, 120)
    lengths = torch.tensor([120, 70])
    batched, out_len, _ = model(feats, lengths)
    alone, alone_len, _ = model(feats[1:, :, :70], lengths[1:])
    n = int(alone_len[0])
    assert int(out_len[1]) == n
    assert_reorder_close(batched[1, :n], alone[0], k=120, depth=model.reduction_depth)
    # and the padding really is ignored: garbage there changes nothing
    noisy = feats.clone()
    noisy[1, :, 70:] = 100.0
    assert_reorder_close(model(noisy, lengths)[0][1, :n], alone[0], k=120, depth=model.reduction_depth)


@pytest.mark.parametrize("encoder, norm", KINDS)
def test_group_and_batch_norm_statistics_read_only_real_frames_in_training(encoder, norm):
    model = tiny_ctc(encoder, norm).train()
    feats = torch.randn(2, 16, 100)
    lengths = torch.tensor([100, 60])
    torch.manual_seed(3)
    a = model(feats, lengths)[0][1, :14]
    feats[1, :, 60:] = 50.0
    torch.manual_seed(3)
    b = model(feats, lengths)[0][1, :14]
    assert_reorder_close(b, a, k=100, depth=model.reduction_depth)


@pytest.mark.parametrize("encoder, norm", KINDS)
def test_exiting_at_layer_k_is_the_model_cut_to_k_layers(encoder, norm):
    model = tiny_ctc(encoder, norm)
    feats, lengths = torch.randn(2, 16, 90), torch.tensor([90, 50])
    cut = tiny_ctc(encoder, norm)
    cut.load_state_dict(model.state_dict())
    cut.layers = cut.layers[:2]
    exited = model(feats, lengths, exit_layer=2)[0]
    assert torch.equal(exited, cut(feats, lengths)[0])  # the same computation
    assert not torch.allclose(exited, model(feats, lengths)[0])
    with pytest.raises(ValueError, match="exit layer 4 is outside this model's 1..3"):
        model(feats, lengths, exit_layer=4)


def test_layerdrop_skips_layers_in_training_only():
    assert layerdrop_rates(4, 0.4, "uniform") == (0.4,) * 4
    assert layerdrop_rates(4, 0.4, "linear") == pytest.approx((0.1, 0.2, 0.3, 0.4))
    model = tiny_ctc("whisper")
    feats, lengths = torch.randn(1, 16, 40), torch.tensor([40])
    full = model.encode(feats, lengths).hidden
    assert torch.equal(model.encode(feats, lengths, layerdrop=(0.99,) * 3).hidden, full)  # eval: no drop
    model.train()
    stem_only, _ = model.stem(feats, lengths)
    assert torch.equal(model.encode(feats, lengths, layerdrop=(1.0,) * 3).hidden, stem_only)
    torch.manual_seed(0)
    kept = [not torch.equal(model.encode(feats, lengths, layerdrop=(0.5,) * 3).hidden, stem_only) for _ in range(20)]
    assert 0 < sum(kept) < 20


def test_taps_are_the_outputs_of_the_named_layers():
    model = tiny_ctc("conformer")
    feats, lengths = torch.randn(1, 16, 40), torch.tensor([40])
    enc = model.encode(feats, lengths, taps=(1, 2))
    assert set(enc.taps) == {1, 2}
    assert torch.equal(enc.taps[2], model.encode(feats, lengths, exit_layer=2).hidden)


def test_a_clip_shorter_than_the_stem_is_refused():
    model = tiny_ctc("conformer")
    with pytest.raises(ValueError, match="shorter than the stem's receptive field"):
        model(torch.randn(1, 16, 5), torch.tensor([5]))


def test_greedy_ctc_merges_repeats_and_drops_blanks():
    vocab = CharVocab(("a", "b", " "))
    path = [1, 1, BLANK, 1, 2, 2, 3, BLANK, 2]  # a a _ a b b ' ' _ b -> "aab b"
    lp = torch.full((1, len(path), 4), -10.0)
    lp[0, torch.arange(len(path)), torch.tensor(path)] = 0.0
    ids = greedy_ctc(lp, torch.tensor([len(path)]))[0]
    assert vocab.decode(ids) == "aab b"
    assert greedy_ctc(lp, torch.tensor([2]))[0] == [1]  # only the real frames
    with pytest.raises(ValueError, match="outside the vocabulary: 'z'"):
        vocab.encode("az")


def test_prefix_beam_search_sums_the_paths_that_greedy_splits():
    # two frames, p(blank) = 0.6, p(a) = 0.4 each: greedy says "" (0.36); "a" has 0.16 + 0.24 + 0.24 = 0.64
    lp = torch.log(torch.tensor([[0.6, 0.4], [0.6, 0.4]]))
    assert greedy_ctc(lp[None], torch.tensor([2]))[0] == []
    assert prefix_beam_search(lp, 2, beam_size=4) == [1]
    # repeats need a blank between them
    lp = torch.log(torch.tensor([[0.05, 0.95], [0.9, 0.1], [0.05, 0.95]]))
    assert prefix_beam_search(lp, 3, beam_size=4) == [1, 1]


def test_a_saved_model_reloads_to_identical_outputs_and_bad_folders_are_named(tmp_path):
    model = tiny_ctc("conformer", "batch")
    init = {k: v.clone() for k, v in tiny_ctc("conformer", "batch", seed=5).state_dict().items()}
    save_ctc(model, tmp_path / "m", init_state=init)
    again = load_ctc(tmp_path / "m")
    feats, lengths = torch.randn(2, 16, 50), torch.tensor([50, 31])
    assert torch.equal(again(feats, lengths)[0], model(feats, lengths)[0])
    first = load_ctc(tmp_path / "m", initial=True)
    assert all(torch.equal(first.state_dict()[k], init[k]) for k in init)

    cfg_path = tmp_path / "m" / "speechprune_ctc.json"
    raw = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**raw, "vocab": list("abc")}))
    with pytest.raises(ModelError, match="weights do not fit the config.*vocabulary of 4 classes"):
        load_ctc(tmp_path / "m")
    cfg_path.write_text(json.dumps({**raw, "n_layer": 3}))
    with pytest.raises(ModelError, match=r"speechprune_ctc.json: bad CTC config: n_layer"):
        load_ctc(tmp_path / "m")
    with pytest.raises(ModelError, match="not a CTC model folder"):
        load_ctc(tmp_path)


def test_a_whisper_encoder_maps_onto_the_whisper_encoder_ctc_model(tmp_path):
    from tiny_models import tiny_whisper

    whisper = tiny_whisper()
    whisper.save_pretrained(tmp_path / "w")
    model = from_whisper(tmp_path / "w", vocab=("a", "b")).eval()
    assert model.config.n_layers == 2 and model.config.d_model == 32
    feats = torch.randn(1, 80, 3000)
    with torch.inference_mode():
        ours = model.layer_norm(model.encode(feats, torch.tensor([3000])).hidden)
        theirs = whisper.model.encoder(feats).last_hidden_state
    assert_reorder_close(ours, theirs, k=1500, depth=2 + 6 * 2)
    shallow = from_whisper(tmp_path / "w", vocab=("a",), n_layers=1)
    assert shallow.depth == 1
    with pytest.raises(ModelError, match="n_layers 3 is outside the encoder's 1..2"):
        from_whisper(tmp_path / "w", n_layers=3)


def test_config_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        CTCConfig(encoder="conformer", d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="conv_kernel must be odd"):
        CTCConfig(encoder="conformer", conv_kernel=4)
    assert math.isclose(CTCConfig(encoder="whisper").stride, 2)


@pytest.mark.parametrize("encoder, norm", KINDS)
def test_analytic_flops_match_torchs_flop_counter(encoder, norm):
    from torch.utils.flop_counter import FlopCounterMode

    from speechprune.models.ctc.flops import encoder_flops

    model = tiny_ctc(encoder, norm)
    for frames, exit_layer in [(100, None), (57, 2)]:
        counter = FlopCounterMode(display=False)
        with counter, torch.inference_mode():
            model(torch.randn(1, 16, frames), torch.tensor([frames]), exit_layer=exit_layer)
        ours = encoder_flops(model.config, frames, exit_layer)
        # torch's counter does not see scaled_dot_product_attention with a mask on the CPU (no bmm is dispatched)
        assert ours["total"] - ours["attention_products"] == counter.get_total_flops()
        t = (frames + 1) // 2 if encoder == "whisper" else ((frames - 1) // 2 - 1) // 2
        assert ours["attention_products"] == (exit_layer or 3) * 4 * t * t * 32


def test_masked_group_norm_is_group_norm_on_unpadded_input():
    from speechprune.models.ctc.network import MaskedGroupNorm

    torch.manual_seed(0)
    ours = MaskedGroupNorm(4, 12)
    ref = torch.nn.GroupNorm(4, 12)
    with torch.no_grad():
        for norm in (ours, ref):
            norm.weight.copy_(torch.linspace(0.5, 1.5, 12))
            norm.bias.copy_(torch.linspace(-1, 1, 12))
    x = torch.randn(3, 12, 20)
    assert_reorder_close(ours(x, torch.ones(3, 20, dtype=torch.bool)), ref(x), k=60, depth=3)


def _prune_everything(model):
    from speechprune.models.adapters import adapter_for

    adapter = adapter_for(model)
    for g in adapter.unit_groups(model):
        adapter.prune_units(model, g, list(range(0, g.n_units, 2)))  # every other unit
    kinds = adapter.module_kinds(model, "encoder")
    adapter.remove_module(model, "encoder", 0, kinds[0])
    adapter.remove_module(model, "encoder", 1, "ffn")
    adapter.remove_layers(model, "encoder", [2])
    return adapter


@pytest.mark.parametrize("encoder, norm", KINDS)
def test_pruning_is_physical_and_reloads_to_identical_outputs(encoder, norm, tmp_path):
    model = tiny_ctc(encoder, norm)
    before = sum(p.numel() for p in model.parameters())
    adapter = _prune_everything(model)
    assert model.depth == 2 and sum(p.numel() for p in model.parameters()) < 0.6 * before
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    layers = adapter.structure(model)["encoder"]["layers"]
    assert layers[0][adapter.module_kinds(model, "encoder")[0]] is None and layers[1]["ffn"] is None
    assert layers[1]["self_attn"] == 1  # 2 heads -> every other one
    feats, lengths = torch.randn(2, 16, 60), torch.tensor([60, 41])
    out = model(feats, lengths)[0]
    save_ctc(model, tmp_path / "p")
    again = load_ctc(tmp_path / "p")
    assert torch.equal(again(feats, lengths)[0], out)
    assert adapter.structure(again) == adapter.structure(model)


def test_conv_channels_pruned_are_the_channels_removed():
    """Cutting a conv channel equals zeroing its output row of the linear map back (BatchNorm is per channel)."""
    from speechprune.models.adapters import adapter_for

    model = tiny_ctc("conformer", "batch")
    adapter = adapter_for(model)
    group = next(g for g in adapter.unit_groups(model) if g.kind == "conv" and g.layer == 1)
    keep = [i for i in range(group.n_units) if i % 3]
    zeroed = tiny_ctc("conformer", "batch")
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        drop = [i for i in range(group.n_units) if i not in keep]
        zeroed.layers[1].conv.out.weight[:, drop] = 0
    adapter.prune_units(model, group, keep)
    feats, lengths = torch.randn(2, 16, 60), torch.tensor([60, 33])
    assert_reorder_close(model(feats, lengths)[0], zeroed(feats, lengths)[0], k=60, depth=model.reduction_depth)


def test_the_adapter_refuses_what_a_ctc_model_does_not_have():
    from speechprune.errors import ConfigError
    from speechprune.models.adapters import adapter_for

    whisper_like = tiny_ctc("whisper")
    adapter = adapter_for(whisper_like)
    with pytest.raises(ConfigError, match="whisper CTC encoder has no removable conv .*stem"):
        adapter.remove_module(whisper_like, "encoder", 0, "conv")
    with pytest.raises(ConfigError, match="only the encoder stack"):
        adapter.n_layers(whisper_like, "decoder")
    with pytest.raises(ConfigError, match="cannot remove every ctc encoder layer"):
        adapter.remove_layers(whisper_like, "encoder", [0, 1, 2])


def test_a_training_batch_is_the_forward_arguments_and_gives_the_ctc_loss():
    model = tiny_ctc("whisper")
    batch = {"features": torch.randn(2, 16, 40), "lengths": torch.tensor([40, 30]),
             "targets": torch.tensor([1, 2, 3, 4, 5]), "target_lengths": torch.tensor([3, 2])}
    out = model(**batch)
    assert out.loss is not None and out.loss.item() > 0
    assert model(batch["features"], batch["lengths"]).loss is None
