"""The LM family: the cached step equals the uncached forward, the kept-vocabulary map and its floor, save/load,
structured pruning through the adapter, FLOPs, the vocabulary check and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from closeness import assert_reorder_close
from models.lm.tiny_lm import SIZES, recognizer, tiny_lm
from speechprune.errors import ConfigError, ModelError
from speechprune.models.adapters import adapter_for
from speechprune.models.family import family_for, family_for_folder
from speechprune.models.lm import (CONFIG_FILE, IGNORE, LMCache, LMModel, check_vocabulary, folder_tokens, load_lm,
                                   read_config, recognizer_identity, save_lm, tokens_for, whisper_log_probs,
                                   whisper_rows)
from speechprune.models.lm.adapter import LMAdapter
from speechprune.models.lm.family import FAMILY
from speechprune.models.lm.flops import attention_flops, linear_flops, mean_token_flops

# chained reductions of one forward: per layer q/k/v, scores, x V, out, fc1, fc2; then the output layer
DEPTH = 6 * SIZES["n_layers"] + 1
K = max(SIZES["ffn_dim"], SIZES["context"])


def _stepped(model, ids: torch.Tensor) -> torch.Tensor:
    """``[B, T, V]`` log-probabilities read one token at a time through the cache."""
    cache, out = None, []
    for t in range(ids.shape[1]):
        lp, cache = model.step(ids[:, t : t + 1], cache)
        out.append(lp)
    return torch.stack(out, dim=1)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@pytest.mark.parametrize("tokens", ["chars", "whisper"])
def test_the_cached_step_equals_the_uncached_forward(tmp_path, tokens, positions):
    model, _ = tiny_lm(tokens, tmp_path, kept=[3, 40, 77, 256] if tokens == "whisper" else None, positions=positions)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, SIZES["context"]), generator=gen)
    with torch.no_grad():
        full = torch.log_softmax(model(ids).logits.float(), dim=-1)
        assert_reorder_close(_stepped(model, ids), full, k=K, depth=DEPTH)
        # a prefill of several tokens, then steps; and beams reordered with the cache's rows
        lp, cache = model.step(ids[:, :7])
        assert_reorder_close(lp, full[:, 6], k=K, depth=DEPTH)
        lp3, _ = model.step(ids[:, 7:10], cache)  # several new tokens after a cache: a causal mask with an offset
        assert_reorder_close(lp3, full[:, 9], k=K, depth=DEPTH)
        order = torch.tensor([2, 0, 0])
        lp, _ = model.step(ids[order, 7:8], cache.select(order))
        assert_reorder_close(lp, full[order, 7], k=K, depth=DEPTH)
        with pytest.raises(ValueError, match="past the LM's context of 40 tokens"):
            model.step(ids[:, :1], LMCache(cache.keys, cache.values, 40))


def test_a_new_model_starts_from_gpt2s_initialization():
    model = LMModel(tiny_lm()[0].config)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * SIZES["n_layers"] + 1
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) and not n.bias.any() for n in norms)
    assert not model.layers[0].attn.q_proj.bias.any()
    assert model.layers[0].ffn.fc2.weight.std() < model.layers[0].ffn.fc1.weight.std()  # residual branches scaled


def test_the_loss_is_the_mean_cross_entropy_of_the_scored_targets():
    model, _ = tiny_lm()
    ids = torch.tensor([[0, 5, 6, 7], [0, 9, 0, 0]])
    targets = torch.tensor([[5, 6, 7, 0], [9, 0, IGNORE, IGNORE]])
    with torch.no_grad():
        out = model(ids, targets)
        logits = model(ids).logits
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                         reduction="none").reshape(targets.shape)
    assert_reorder_close(out.nll, ce, k=K, depth=DEPTH)
    assert_reorder_close(out.loss, ce.sum() / 6, k=K, depth=DEPTH)
    assert float(out.nll[1, 2:].abs().sum()) == 0.0


def test_kept_tokens_map_back_to_whisper_ids_and_the_unseen_ones_score_at_the_floor(tmp_path):
    kept = [72, 101, 108, 111, 256, 4]  # unsorted on purpose: rows follow the sorted ids
    model, tokenizer = tiny_lm("whisper", tmp_path, kept=kept)
    ids = sorted(kept)
    assert whisper_rows(model, torch.tensor(ids)).tolist() == list(range(len(ids)))
    assert whisper_rows(model, torch.tensor([[5, 72]])).tolist() == [[len(ids), ids.index(72)]]  # 5: unseen
    with torch.no_grad():
        lp, _ = model.step(torch.tensor([[ids.index(256)]]))
    full = whisper_log_probs(model, lp)
    assert full.shape == (1, model.config.tokenizer.n_vocab)
    assert torch.equal(full[0, ids], lp[0, :-1])
    unseen = [i for i in range(full.shape[1]) if i not in ids]
    assert torch.all(full[0, unseen] == -15.0)
    tokens = tokens_for(model, tokenizer)
    (rows, oov), = tokens.encode(["hello"])  # " hello": space (unseen), h e l l o
    assert rows[0] == rows[-1] == ids.index(256) and oov == 2  # the space and 'h' (byte ids: 72 is 'H')


def test_the_character_vocabulary_is_the_ctc_familys_with_row_zero_the_line_boundary():
    from speechprune.models.ctc import CharVocab

    model, _ = tiny_lm()
    (rows, oov), = tokens_for(model).encode(["it's 10%"])
    vocab = CharVocab(model.config.chars)
    assert rows == [0, *vocab.encode("it's 10"), 0] and oov == 1


@pytest.mark.parametrize("tokens", ["chars", "whisper"])
def test_save_and_load_give_identical_outputs(tmp_path, tokens):
    model, tokenizer = tiny_lm(tokens, tmp_path, kept=[3, 40, 256] if tokens == "whisper" else None)
    save_lm(model, tmp_path / "lm", tokenizer)
    again = family_for_folder(tmp_path / "lm").load(tmp_path / "lm")
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert again.config == model.config
    if tokens == "whisper":
        assert torch.equal(again.whisper_ids, model.whisper_ids)
        assert folder_tokens(tmp_path / "lm", again).encode(["ab"]) == tokens_for(model, tokenizer).encode(["ab"])
        with pytest.raises(ModelError, match="saved with its tokenizer"):
            save_lm(model, tmp_path / "lm2")


def _prune(model) -> None:
    adapter = LMAdapter()
    for g in adapter.unit_groups(model):
        adapter.prune_units(model, g, list(range(0, g.n_units, 2)))
    adapter.remove_module(model, "decoder", 0, "ffn")
    adapter.remove_layers(model, "decoder", [1])


def test_structured_pruning_makes_tensors_smaller_and_reloads_identical(tmp_path):
    model, tokenizer = tiny_lm("whisper", tmp_path, kept=list(range(0, 280, 3)) + [256])
    dense = FAMILY.shape_record(model)
    save_lm(model, tmp_path / "dense", tokenizer)
    _prune(model)
    assert family_for(model) is FAMILY
    layers = model.layers
    assert len(layers) == 2 and layers[0].ffn is None and layers[0].ffn_norm is None
    assert layers[0].attn.q_proj.weight.shape == (2 * model.config.head_dim, SIZES["d_model"])
    assert layers[1].ffn.fc1.weight.shape == (SIZES["ffn_dim"] // 2, SIZES["d_model"])
    pruned = FAMILY.shape_record(model)
    assert pruned["params"] < dense["params"]
    assert pruned["flops_decoder_per_token"] < dense["flops_decoder_per_token"]
    FAMILY.save(model, tmp_path / "dense", tmp_path / "pruned")
    again = load_lm(tmp_path / "pruned")
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    ids = torch.randint(0, model.config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
        full = torch.log_softmax(again(ids).logits, dim=-1)
        assert_reorder_close(_stepped(again, ids), full, k=K, depth=DEPTH)  # the cache still works
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in again.modules())


def test_the_pruning_core_drives_the_adapter_with_lm_batches(tmp_path):
    from speechprune.prune.recipe import parse_recipe
    from speechprune.prune.structured import prune

    model, _ = tiny_lm()
    recipe = parse_recipe({"criterion": "taylor", "targets": [
        {"stack": "decoder", "kind": "ffn", "sparsity": 0.5}, {"stack": "decoder", "kind": "self_attn",
                                                                "sparsity": 0.5}]})
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (4, 10), generator=gen)
    batches = [{"ids": ids, "targets": torch.roll(ids, -1, dims=1)}]
    adapter = adapter_for(model)  # registered in models.adapters.FAMILIES
    assert isinstance(adapter, LMAdapter)
    prune(model, adapter, recipe, batches)
    assert [l.ffn.fc1.out_features for l in model.layers] == [SIZES["ffn_dim"] // 2] * 3
    assert [l.attn.n_heads for l in model.layers] == [2] * 3
    assert model.config.structure["ffn"] == [SIZES["ffn_dim"] // 2] * 3
    FAMILY.save(model, None, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, load_lm(tmp_path / "m")(ids).logits)


def test_flops_per_token_match_the_counter():
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = tiny_lm()
    cfg = model.config
    t = cfg.context
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, t, dtype=torch.long))
    attention = sum(attention_flops(cfg, p) for p in range(t))
    # the counter sees the projections, FFNs and output layer; SDPA's products on the CPU it may or may not see
    assert counter.get_total_flops() in (t * linear_flops(cfg), t * linear_flops(cfg) + 2 * attention)
    assert mean_token_flops(cfg) == linear_flops(cfg) + attention / t
    assert FAMILY.shape_record(model)["flops_decoder_per_token"] == mean_token_flops(cfg)
    # a factorized model: its sites at their rank, counted from the modules as they are now
    from speechprune.models.adapters import adapter_for
    from speechprune.prune.lowrank import factorize

    sites = [s for s in adapter_for(model).weight_sites(model) if s.key in ("decoder.0.ffn.in", "decoder.1.self_attn.q")]
    factorize(sites, {s.key: 4 for s in sites})
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, t, dtype=torch.long))
    factorized = FAMILY.shape_record(model)["flops_decoder_per_token"]
    assert counter.get_total_flops() in (t * factorized - attention, t * factorized + attention)
    assert factorized < mean_token_flops(cfg)


def test_a_recognizer_with_other_tokens_is_refused_in_one_line(tmp_path):
    model, tokenizer = tiny_lm("whisper", tmp_path)
    save_lm(model, tmp_path / "lm", tokenizer)
    own = recognizer_identity(recognizer(tmp_path))
    check_vocabulary(read_config(tmp_path / "lm"), own, tmp_path / "lm")  # the same tokenizer: fine
    other = own.model_copy(update={"sha256": "0" * 64})
    with pytest.raises(ModelError, match=r"lm/speechprune_lm.json: the LM's tokenizer .* is not the recognizer's") as e:
        check_vocabulary(model.config, other, tmp_path / "lm")
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match=r"\(266 tokens, 300 outputs\) is not the recognizer's \(266 tokens, 51864"):
        check_vocabulary(model.config, own.model_copy(update={"n_vocab": 51864}), tmp_path / "lm")
    with pytest.raises(ModelError, match="a character LM does not share Whisper's token ids"):
        check_vocabulary(tiny_lm()[0].config, own)


def test_bad_folders_are_one_line_errors_naming_the_file(tmp_path):
    model, tokenizer = tiny_lm("whisper", tmp_path, kept=[3, 256])
    save_lm(model, tmp_path / "lm", tokenizer)
    cfg_path = tmp_path / "lm" / CONFIG_FILE
    raw = json.loads(cfg_path.read_text())
    cfg_path.write_text(json.dumps({**raw, "vocab": 3}))
    with pytest.raises(ModelError, match=r"speechprune_lm.json: bad LM config: vocab: Extra inputs"):
        load_lm(tmp_path / "lm")
    cfg_path.write_text(json.dumps({**raw, "vocab_size": 7}))
    with pytest.raises(ModelError, match=r"model.safetensors: weights do not fit the config"):
        load_lm(tmp_path / "lm")
    cfg_path.write_text(json.dumps({**raw, "tokenizer": {**raw["tokenizer"], "sha256": "f" * 64}}))
    with pytest.raises(ModelError, match="the tokenizer files are not the one speechprune_lm.json names"):
        folder_tokens(tmp_path / "lm", load_lm(tmp_path / "lm"))


def test_what_the_seam_offers_for_audio_is_a_one_line_config_error(tmp_path):
    model, _ = tiny_lm()
    for call in (lambda: FAMILY.backend("x"), lambda: FAMILY.set_length_buckets(model, []),
                 lambda: FAMILY.reference_scorer(None, [])):
        with pytest.raises(ConfigError, match="a language model reads text, not audio"):
            call()
    with pytest.raises(ConfigError, match="needs the LM folder it came from"):
        FAMILY.save(tiny_lm("whisper", tmp_path)[0], None, tmp_path / "out")
