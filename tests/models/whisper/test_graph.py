"""The export-friendly Whisper graphs against the Hugging Face model, on tiny random dense and pruned models."""

import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.models.whisper.graph import attend, whisper_graphs

from closeness import FRAMES, WHISPER_ENCODER_DEPTH, assert_reorder_close, assert_whisper_close
from tiny_models import EOT, NO_TS, SOT, build_tiny, pruned_tiny_whisper

SUBSET = list(range(0, 60, 3)) + [SOT, EOT, NO_TS]  # 23 of the 64 tokens, specials included


@pytest.fixture(scope="module", params=["dense", "pruned"])
def model(request):
    return build_tiny("whisper") if request.param == "dense" else pruned_tiny_whisper()


def inputs(batch: int = 2, length: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 60, (batch, length), generator=g)
    ids[:, :2] = torch.tensor([SOT, NO_TS])
    return torch.randn(batch, 80, 3000, generator=g), ids


@pytest.mark.parametrize("output_vocab", [None, SUBSET])
@torch.no_grad()
def test_prefill_and_every_step_match_the_hf_forward(model, output_vocab):
    graphs = whisper_graphs(model, output_vocab)
    feats, ids = inputs()
    ref = model(input_features=feats, decoder_input_ids=ids).logits
    cols = slice(None) if output_vocab is None else output_vocab
    enc = graphs.encoder(feats)
    assert_reorder_close(enc, model.model.encoder(feats).last_hidden_state, k=FRAMES, depth=WHISPER_ENCODER_DEPTH)

    full = graphs.prefill(ids, enc)
    assert_whisper_close(full[0], ref[:, -1, cols])
    assert full[0].shape == (2, 64 if output_vocab is None else len(SUBSET))

    out = graphs.prefill(ids[:, :2], enc)
    n_self = len(graphs.io.self_cache)
    past, cross = list(out[1 : 1 + n_self]), list(out[1 + n_self :])
    assert_whisper_close(out[0], ref[:, 1, cols])
    for t in range(2, ids.shape[1]):
        out = graphs.step(ids[:, t : t + 1], torch.tensor([t]), *past, *cross)
        past = list(out[1:])
        assert_whisper_close(out[0], ref[:, t, cols])
    assert all(k.shape[2] == ids.shape[1] for k in past)


def test_caches_follow_the_present_blocks_and_their_head_counts():
    model = pruned_tiny_whisper()
    graphs = whisper_graphs(model)
    io = graphs.io
    assert io.self_layers == (0, 2) and io.cross_layers == (0, 1)
    assert io.self_cache == ["self_key.0", "self_value.0", "self_key.2", "self_value.2"]
    assert io.step()[0][:4] == ["input_ids", "position", "past_self_key.0", "past_self_value.0"]
    feats, ids = inputs(batch=1, length=3)
    with torch.no_grad():
        out = graphs.prefill(ids, graphs.encoder(feats))
    heads = [o.shape[1] for o in out[1:]]
    assert heads == [4, 4, 1, 1, 3, 3, 4, 4]  # self 0 (4), self 2 (1 kept), cross 0 (3 kept), cross 1 (4)
    assert [o.shape[2] for o in out[5:]] == [1500] * 4


def test_graphs_reference_the_model_parameters_without_copies():
    model = pruned_tiny_whisper()
    graphs = whisper_graphs(model, SUBSET)
    owned = {p.data_ptr() for p in model.parameters()}
    for g in (graphs.encoder, graphs.prefill, graphs.step):
        assert {p.data_ptr() for p in g.parameters()} <= owned
    with torch.no_grad():  # so a change to the model shows in the graphs
        feats, ids = inputs(batch=1, length=3)
        before = graphs.prefill(ids, graphs.encoder(feats))[0].clone()
        norm = model.model.decoder.layer_norm  # doubling the final norm doubles the logits
        norm.weight.mul_(2)
        norm.bias.mul_(2)
        after = graphs.prefill(ids, graphs.encoder(feats))[0]
    assert torch.equal(after, 2 * before)  # scaling by a power of two is exact in every summation order


@torch.no_grad()
def test_beams_sharing_one_cross_attention_cache_equal_repeated_caches():
    graphs = whisper_graphs(build_tiny("whisper"))
    feats, ids = inputs(batch=2, length=3)
    enc = graphs.encoder(feats)
    beams = 3
    rows = ids.repeat_interleave(beams, dim=0)
    rows[:, -1] = torch.arange(rows.shape[0])  # every beam its own last token
    out = graphs.prefill(rows[:, :2], enc.repeat_interleave(beams, dim=0))
    n = len(graphs.io.self_cache)
    past, cross = out[1 : 1 + n], out[1 + n :]
    repeated = graphs.step(rows[:, 2:], torch.tensor([2]), *past, *cross)
    shared = graphs.step(rows[:, 2:], torch.tensor([2]), *past, *[c[::beams] for c in cross])
    for a, b in zip(repeated, shared):  # the same sums, batched differently: one step of the decoder
        assert_whisper_close(a, b)


def test_attend_folds_query_groups_onto_shared_keys():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(6, 2, 8, generator=g), torch.randn(2, 2, 5, 4, generator=g), torch.randn(2, 2, 5, 4, generator=g)
    shared = attend(q, k, v)
    repeated = attend(q, k.repeat_interleave(3, 0), v.repeat_interleave(3, 0))
    assert_reorder_close(shared, repeated, k=5, depth=2)  # scores over 4 dims, then 5 keys
    expected = torch.softmax(q.view(6, 2, 2, 4).transpose(1, 2) @ k.repeat_interleave(3, 0).transpose(2, 3), -1)
    expected = (expected @ v.repeat_interleave(3, 0)).transpose(1, 2).reshape(6, 2, 8)
    assert_reorder_close(shared, expected, k=5, depth=2)


@pytest.mark.parametrize("bad,msg", [([], "empty"), ([1, 1], "repeats"), ([64], "outside"), ([-1], "outside")])
def test_bad_output_vocab_is_refused(bad, msg):
    with pytest.raises(ConfigError, match=msg):
        whisper_graphs(build_tiny("whisper"), bad)
