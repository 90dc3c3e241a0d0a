"""The wav2vec2 family: a Hugging Face ``Wav2Vec2ForCTC`` folder (tokenizer and feature extractor beside it) found,
loaded and decoded through the seam, pruned models saved and reloaded exactly, teacher labels and what distillation
compares, the reference scorer, FLOPs against torch's counter, and one-line errors for broken folders."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from closeness import WAV2VEC2_DEPTH, assert_reorder_close
from speechprune.data.features import WaveformFrontend
from speechprune.data.manifest import read_manifest
from speechprune.data.normalize import normalize_text
from speechprune.errors import ConfigError, ModelError
from speechprune.evaluate.runner import decode_prepared, prepare_batch
from speechprune.models.adapters import adapter_for
from speechprune.models.decoding import DecodeOptions
from speechprune.models.family import family_for, family_for_folder
from speechprune.models.registry import resolve_model
from speechprune.models.wav2vec2.family import FAMILY, REFERENCE_SAMPLES
from speechprune.models.wav2vec2.flops import clip_flops
from speechprune.recovery.distill import kl_loss
from tiny_models import WAV2VEC2_VOCAB, tiny_wav2vec2_folder

LAYER_NORM = {"feat_extract_norm": "layer", "do_stable_layer_norm": True}  # the large models' layout


@pytest.fixture
def folder(tmp_path):
    return tiny_wav2vec2_folder(tmp_path / "dense")


def _pruned(model):
    """``model`` with half its FFN neurons and one head of layer 0 removed, and layer 1's attention removed."""
    adapter = adapter_for(model)
    groups = {g.key: g for g in adapter.unit_groups(model)}
    adapter.prune_units(model, groups["encoder.0.ffn"], list(range(0, 64, 2)))
    adapter.prune_units(model, groups["encoder.0.self_attn"], [0, 2, 3])
    adapter.remove_module(model, "encoder", 1, "self_attn")
    return model


def test_a_folder_is_owned_resolved_loaded_and_decoded(folder, clips):
    assert resolve_model(str(folder)) == folder
    family = family_for_folder(folder)
    assert family is FAMILY and family.name == "wav2vec2"
    model = family.load(folder)
    assert type(model).__name__ == "Wav2Vec2ForCTC" and not model.training
    assert family_for(model) is FAMILY
    be = family.backend(folder)
    assert be.frontend() == WaveformFrontend() and be.numerics["all"]["dtype"] == "float32"
    batch = prepare_batch(be.frontend(), read_manifest(clips))
    assert batch.frames == [8000, 11200, 14400, 17600, 20800]  # samples, not log-mel frames
    log_probs, lengths = be.encode(batch.features, batch.frames)
    assert lengths.tolist() == model._get_feat_extract_output_lengths(torch.tensor(batch.frames)).tolist()
    assert log_probs.shape == (5, int(lengths.max()), len(WAV2VEC2_VOCAB))
    records = decode_prepared(be, batch, DecodeOptions())
    assert all(isinstance(r["hypothesis"], str) and r["hypothesis"] for r in records)
    assert all(set(r["hypothesis"]) <= set("tone01234as ") for r in records)  # characters, "|" read as a space
    beam = decode_prepared(be, batch, DecodeOptions(beam_size=3))
    assert all(isinstance(r["hypothesis"], str) for r in beam)


@pytest.mark.parametrize("layout", [{}, LAYER_NORM], ids=["group-norm", "layer-norm"])
def test_a_clip_decodes_the_same_alone_and_beside_longer_ones(tmp_path, clips, layout):
    be = FAMILY.backend(tiny_wav2vec2_folder(tmp_path / "m", **layout))
    utts = read_manifest(clips)
    together = prepare_batch(be.frontend(), utts)
    lp, lengths = be.encode(together.features, together.frames)
    for i, u in enumerate(utts[:2]):  # the shortest clips, padded the most in the batch
        alone = prepare_batch(be.frontend(), [u])
        lp1, n1 = be.encode(alone.features, alone.frames)
        n = int(n1[0])
        assert n == int(lengths[i])
        if layout:  # one padded batch with an attention mask: other shapes, other summation orders
            assert_reorder_close(lp[i, :n], lp1[0, :n], k=int(lengths.max()), depth=WAV2VEC2_DEPTH)
        else:  # each clip is read alone anyway
            assert torch.equal(lp[i, :n], lp1[0, :n])


def test_the_cli_evaluates_a_folder(folder, clips, tmp_path):
    from cli_helpers import cli

    r = cli("eval", str(folder), str(clips), "--no-ood", "--beam", "2", "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert metrics["n_scored"] == 5 and metrics["n_failed"] == 0 and metrics["settings"]["backend"] == "wav2vec2"
    lines = (tmp_path / "e" / "hypotheses.jsonl").read_text().splitlines()
    assert len(lines) == 5 and all(json.loads(line)["hypothesis"] for line in lines)


def test_a_pruned_model_saves_and_reloads_to_identical_outputs(folder, clips, tmp_path):
    model = _pruned(FAMILY.load(folder))
    out = FAMILY.save(model, folder, tmp_path / "pruned")
    for name in ("vocab.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (out / name).read_bytes() == (folder / name).read_bytes()
    assert family_for_folder(out) is FAMILY
    loaded = FAMILY.load(out)
    dense = FAMILY.load(folder)
    layer0, dense0 = loaded.wav2vec2.encoder.layers[0], dense.wav2vec2.encoder.layers[0]
    assert layer0.feed_forward.intermediate_dense.weight.shape == (32, 32)
    assert dense0.feed_forward.intermediate_dense.weight.shape == (64, 32)
    assert layer0.attention.q_proj.weight.shape == (24, 32) and loaded.wav2vec2.encoder.layers[1].attention is None
    x = torch.randn(2, 6000)
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)
    be, pruned_be = FAMILY.backend(folder), FAMILY.backend(out)
    batch = prepare_batch(be.frontend(), read_manifest(clips))
    assert ([r["hypothesis"] for r in decode_prepared(pruned_be, batch, DecodeOptions())]
            == [r["hypothesis"] for r in decode_prepared(be.with_model(model), batch, DecodeOptions())])
    assert pruned_be.params < be.params and pruned_be.fingerprint() != be.fingerprint()
    assert FAMILY.shape_record(loaded)["flops_encoder"] < FAMILY.shape_record(dense)["flops_encoder"]


def test_flops_are_counted_per_layer_as_torch_counts_them(tmp_path):
    """``torch.utils.flop_counter`` sees every convolution and linear map but not the CPU's fused attention kernel,
    whose products are counted analytically (``attention_products``)."""
    for name, layout in (("post-norm", {}), ("pre-norm", LAYER_NORM)):
        model = _pruned(FAMILY.load(tiny_wav2vec2_folder(tmp_path / name, num_conv_pos_embeddings=15, **layout)))
        for samples in (4000, 9999):
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                model(torch.randn(1, samples))
            ours = clip_flops(model, samples)
            assert counter.get_total_flops() + ours["attention_products"] == ours["total"]
    record = FAMILY.shape_record(model)
    assert record["flops_encoder"] == clip_flops(model, REFERENCE_SAMPLES)["total"]
    assert record["params"] == sum(p.numel() for p in model.parameters())


def test_labelled_batches_carry_the_teachers_greedy_output_and_a_loss(folder, clips):
    teacher = FAMILY.load(folder)
    batches = FAMILY.labeller(teacher, folder).labelled_batches(read_manifest(clips), 2, teacher_logits=True,
                                                                teacher_hidden=True)
    assert [len(b["input_values"]) for b in batches] == [2, 2, 1]
    b = batches[0]
    be = FAMILY.backend(folder)
    samples = b["attention_mask"].sum(-1).tolist()
    log_probs, lengths = be.encode(b["input_values"].numpy(), samples)
    greedy = be.decode((log_probs, lengths), [None] * 2, [None] * 2, DecodeOptions()).tokens
    assert [[t for t in row if t >= 0] for row in b["labels"].tolist()] == greedy
    with torch.no_grad():  # calibration reads the loss of the batch as forward arguments
        assert torch.isfinite(teacher(**{k: b[k] for k in ("input_values", "attention_mask", "labels")}).loss)
    n, t = 2, int(lengths.max())
    assert b["teacher_logits"].shape == (n, t, len(WAV2VEC2_VOCAB))
    assert b["teacher_encoder"].shape == (n, t, 32) and b["teacher_hidden"].shape == (1, n, t, 32)


def test_the_teacher_compared_with_itself_differs_by_nothing_but_fp16(folder, clips):
    teacher = FAMILY.load(folder)
    batch = FAMILY.labeller(teacher, folder).labelled_batches(read_manifest(clips), 3, teacher_logits=True,
                                                              teacher_hidden=True)[0]
    teacher.train()  # as recovery runs it: no SpecAugment or LayerDrop may change the forward
    teacher.config.mask_time_prob, teacher.config.layerdrop = 0.5, 0.5
    out = FAMILY.distill_outputs(teacher, batch, layers=True)
    real = int(teacher._get_feat_extract_output_lengths(batch["attention_mask"].sum(-1)).sum())
    assert out.student_logits.shape[0] == out.teacher_logits.shape[0] == real
    assert_reorder_close(out.student_logits.detach().half().float(), out.teacher_logits.float(), k=1, depth=1,
                         dtype=torch.float16)
    assert float(kl_loss(out.student_logits.detach(), out.teacher_logits, 1.0)) < 1e-3
    assert torch.isfinite(out.task_loss) and out.task_loss.requires_grad
    assert len(out.student_layers) == out.teacher_layers.shape[0] == 1
    assert teacher.config.mask_time_prob == 0.5 and teacher.config.apply_spec_augment  # restored


def test_the_reference_scorer_scores_ctc_loss_and_greedy_hypotheses(folder, clips):
    be = FAMILY.backend(folder)
    utts = read_manifest(clips)
    scorer = FAMILY.reference_scorer(be, utts, batch_size=2)
    proxy = scorer.proxy(be.model, {})
    assert proxy > 0 and proxy == scorer.proxy(be.model, {})
    assert scorer.n_targets == sum(len(normalize_text(u.text)) for u in utts)  # "|" counts: a symbol
    evaluated = decode_prepared(be, prepare_batch(be.frontend(), utts), DecodeOptions())
    assert [r["hypothesis"] for r in scorer.records(be.model, {})] == [r["hypothesis"] for r in evaluated]
    assert scorer.proxy(_pruned(FAMILY.load(folder)), {"encoder": 0}) != proxy
    bad = [dataclasses.replace(utts[0], text="tone x")]
    with pytest.raises(ConfigError, match="outside the wav2vec2 tokenizer's vocabulary"):
        FAMILY.reference_scorer(be, bad)


def test_what_the_family_cannot_do_is_a_one_line_error(folder):
    with pytest.raises(ConfigError, match="has no exits"):
        FAMILY.backend(folder, exit_layer=1)
    with pytest.raises(ConfigError, match="float32"):
        FAMILY.backend(folder, numerics="bfloat16")
    with pytest.raises(ConfigError, match="length buckets"):
        FAMILY.set_length_buckets(FAMILY.load(folder), (500, 1500))


def _one_line(info, path) -> None:
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg, msg


def test_broken_folders_are_one_line_errors(folder, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "wav2vec2"}))  # no CTC head named
    with pytest.raises(ModelError, match="not a model folder of a supported family") as info:
        resolve_model(plain)
    _one_line(info, plain)

    pickled = tmp_path / "pickled"
    shutil.copytree(folder, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelError, match="no safetensors weights") as info:
        FAMILY.load(pickled)
    _one_line(info, pickled)

    torn = tmp_path / "torn"
    shutil.copytree(folder, torn)
    (torn / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot load the wav2vec2 model") as info:
        FAMILY.load(torn)
    _one_line(info, torn)

    untokenized = tmp_path / "untokenized"
    shutil.copytree(folder, untokenized)
    (untokenized / "vocab.json").unlink()
    with pytest.raises(ModelError, match="vocab.json") as info:
        FAMILY.backend(untokenized)
    _one_line(info, untokenized)

    other_rate = tmp_path / "rate"
    shutil.copytree(folder, other_rate)
    pre = json.loads((other_rate / "preprocessor_config.json").read_text())
    (other_rate / "preprocessor_config.json").write_text(json.dumps({**pre, "sampling_rate": 8000}))
    with pytest.raises(ModelError, match="16 kHz") as info:
        FAMILY.backend(other_rate)
    _one_line(info, other_rate)

    other_blank = tmp_path / "blank"
    shutil.copytree(folder, other_blank)
    config = json.loads((other_blank / "config.json").read_text())
    (other_blank / "config.json").write_text(json.dumps({**config, "pad_token_id": 3}))
    with pytest.raises(ModelError, match="pad_token_id 3") as info:
        FAMILY.backend(other_blank)
    _one_line(info, other_blank)


def test_reference_batches_spell_the_references_in_the_tokenizers_characters(folder, clips):
    model = FAMILY.load(folder)
    batches = FAMILY.labeller(model, folder).reference_batches(read_manifest(clips), 2)
    assert [len(b["input_values"]) for b in batches] == [2, 2, 1]
    spell = {t: i for i, t in enumerate(WAV2VEC2_VOCAB)}
    labels = [[t for t in row if t >= 0] for b in batches for row in b["labels"].tolist()]
    # the references as the scoring normalizes them (Whisper's English normalizer spells "tone 1" "tone one")
    assert labels == [[spell["|" if c == " " else c] for c in normalize_text(f"tone {i}")] for i in range(5)]
    with torch.no_grad():
        assert torch.isfinite(model(**batches[0]).loss)
    with pytest.raises(ModelError, match="tokenizer"):
        FAMILY.labeller(model).reference_batches(read_manifest(clips), 2)
