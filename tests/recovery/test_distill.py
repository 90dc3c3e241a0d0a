"""Recovery by distillation: the loss (a pure function), the teacher's batches, and that training reduces it."""

from __future__ import annotations

import copy

import pytest
import torch

from speechprune.data.manifest import read_manifest
from speechprune.errors import ConfigError
from speechprune.models.adapters import adapter_for
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.recovery.config import Recovery
from speechprune.recovery.distill import (distill, distillation_loss, hidden_state_loss, layerwise_loss,
                                          recovery_batches)

from speechprune.numerics import reorder_rtol, rounding_rtol

from closeness import FRAMES, WHISPER_DEPTH, WHISPER_ENCODER_DEPTH, assert_reorder_close
from tiny_models import ToyTokenizer, toy_vocab

OPTS = DecodeOptions(max_new_tokens=5)


def assert_stored_close(stored, computed, depth: int):
    """Teacher outputs kept in float16: computed in float32 (perhaps batched otherwise), then rounded once."""
    assert stored.dtype == torch.float16
    rtol = rounding_rtol(torch.float16) + reorder_rtol(torch.float32, FRAMES, depth)
    torch.testing.assert_close(stored.float(), computed, rtol=rtol, atol=rtol * float(computed.abs().max()))


def test_distillation_loss_is_kl_times_t_squared_plus_ce():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    assert distillation_loss(t, t, y, 2.0, 1.0, 0.0) == 0  # student == teacher: no KL
    th = t.half().float()  # the teacher as stored
    kl = (torch.softmax(th / 2, -1) * (torch.log_softmax(th / 2, -1) - torch.log_softmax(s / 2, -1))).sum(-1).mean()
    ce = torch.nn.functional.cross_entropy(s, y)
    # the same formula summed in another order: log-softmax over 10 logits, then a sum over 10 and a mean over 6
    assert_reorder_close(distillation_loss(s, t.half(), y, 2.0, 0.5, 3.0), 0.5 * 4 * kl + 3 * ce, k=10, depth=3)


def test_hidden_state_loss_is_relative_to_the_teachers_scale():
    t = torch.randn(2, 7, 4) * 3
    assert 0 < hidden_state_loss(t, t.half()) < rounding_rtol(torch.float16) ** 2  # relative squared error of rounding
    assert torch.isclose(hidden_state_loss(torch.zeros_like(t), t), torch.tensor(1.0))
    assert torch.isclose(hidden_state_loss(10 * torch.zeros_like(t), 10 * t), torch.tensor(1.0))


def test_teacher_batches_hold_its_own_transcripts_and_logits(tiny_model, clips):
    teacher = TorchWhisper(tiny_model, ToyTokenizer(), toy_vocab())
    utts = read_manifest(clips)
    batches = teacher.labelled_batches(utts, 2, OPTS, teacher_logits=True)
    assert sum(len(b["labels"]) for b in batches) == len(utts)
    for b in batches:
        mask = b["labels"] != -100
        with torch.no_grad():
            full = tiny_model(input_features=b["input_features"], decoder_input_ids=b["decoder_input_ids"]).logits
        assert b["teacher_logits"].dtype == torch.float16
        with torch.no_grad():
            enc = tiny_model.model.encoder(b["input_features"]).last_hidden_state
        assert_stored_close(b["teacher_encoder"], enc, WHISPER_ENCODER_DEPTH)
        assert_stored_close(b["teacher_logits"], full[mask], WHISPER_DEPTH)
        # the labels are the teacher's greedy choices (suppression aside, its argmax)
        assert torch.equal(full[mask].argmax(-1)[b["labels"][mask] != toy_vocab().eot],
                           b["labels"][mask][b["labels"][mask] != toy_vocab().eot])


def test_teacher_hidden_states_are_every_inner_encoder_layer_output(tiny_model, clips):
    teacher = TorchWhisper(tiny_model, ToyTokenizer(), toy_vocab())
    b = teacher.labelled_batches(read_manifest(clips)[:2], 2, OPTS, teacher_logits=True, teacher_hidden=True)[0]
    with torch.no_grad():
        states = tiny_model.model.encoder(b["input_features"], output_hidden_states=True).hidden_states
    n = len(tiny_model.model.encoder.layers)
    assert b["teacher_hidden"].shape[0] == n - 1 and b["teacher_hidden"].dtype == torch.float16
    for i in range(n - 1):  # layer i's output is layer i + 1's input
        assert_stored_close(b["teacher_hidden"][i], states[i + 1], WHISPER_ENCODER_DEPTH)
    assert_stored_close(b["teacher_encoder"], states[-1], WHISPER_ENCODER_DEPTH)


def test_layerwise_loss_refuses_a_different_depth():
    t = torch.randn(3, 2, 5, 4)
    assert layerwise_loss(list(t), t) == 0
    with pytest.raises(ValueError, match="depth"):
        layerwise_loss(list(t[:2]), t)


def _pruned_student(tiny_model):
    student = copy.deepcopy(tiny_model)
    a = adapter_for(student)
    a.prune_units(student, next(g for g in a.unit_groups(student) if g.key == "encoder.0.ffn"), list(range(8)))
    return student


@pytest.mark.parametrize("encoder_weight, hidden_weight", [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)])
def test_recovery_brings_a_pruned_student_closer_to_its_teacher(tiny_model, clips, encoder_weight, hidden_weight):
    teacher = TorchWhisper(tiny_model, ToyTokenizer(), toy_vocab())
    batches = teacher.labelled_batches(read_manifest(clips), 5, OPTS, teacher_logits=True,
                                       teacher_hidden=bool(hidden_weight))
    student = _pruned_student(tiny_model)
    cfg = Recovery(steps=30, lr=1e-3, batch_size=5, encoder_weight=encoder_weight, hidden_weight=hidden_weight)

    def loss() -> float:
        b = batches[0]
        mask = b["labels"] != -100
        with torch.no_grad():
            logits = student(input_features=b["input_features"], decoder_input_ids=b["decoder_input_ids"]).logits
        return float(distillation_loss(logits[mask], b["teacher_logits"], b["labels"][mask], 2.0, 1.0, 1.0))

    before = loss()
    stats = distill(student, batches, cfg, progress=False)
    assert stats["steps"] == 30 and stats["loss_last"] < stats["loss_first"]
    assert loss() < 0.9 * before
    assert not student.training
    assert all(p.grad is None for p in student.parameters())


def test_recovery_that_trains_the_encoder_leaves_the_decoder_the_teachers(tiny_model, clips):
    teacher = TorchWhisper(tiny_model, ToyTokenizer(), toy_vocab())
    batches = teacher.labelled_batches(read_manifest(clips), 5, OPTS, teacher_logits=True)
    student = _pruned_student(tiny_model)
    decoder = {k: v.clone() for k, v in student.model.decoder.state_dict().items()}
    encoder = {k: v.clone() for k, v in student.model.encoder.state_dict().items()}
    grads = [p.requires_grad for p in student.parameters()]  # Whisper's sinusoidal positions are frozen already
    stats = distill(student, batches, Recovery(steps=5, lr=1e-3, batch_size=5, train=["encoder"]), progress=False)
    assert stats["steps"] == 5
    assert all(torch.equal(v, student.model.decoder.state_dict()[k]) for k, v in decoder.items())
    assert any(not torch.equal(v, student.model.encoder.state_dict()[k]) for k, v in encoder.items())
    assert [p.requires_grad for p in student.parameters()] == grads  # the freeze does not outlive the call


def test_recovery_without_embeddings_keeps_the_tied_embedding_the_teachers(tiny_model, clips):
    teacher = TorchWhisper(tiny_model, ToyTokenizer(), toy_vocab())
    batches = teacher.labelled_batches(read_manifest(clips), 5, OPTS, teacher_logits=True)
    student = copy.deepcopy(tiny_model)
    embed = student.model.decoder.embed_tokens.weight.detach().clone()
    fc1 = student.model.decoder.layers[0].fc1.weight.detach().clone()
    distill(student, batches, Recovery(steps=5, lr=1e-3, batch_size=5, train_embeddings=False), progress=False)
    assert torch.equal(student.model.decoder.embed_tokens.weight, embed)
    assert student.proj_out.weight is student.model.decoder.embed_tokens.weight  # still tied
    assert not torch.equal(student.model.decoder.layers[0].fc1.weight, fc1)  # the rest of the decoder trained
    assert student.model.decoder.embed_tokens.weight.requires_grad  # the freeze does not outlive the call


def test_recovery_refuses_a_stack_twice():
    with pytest.raises(ValueError, match="twice"):
        Recovery(train=["encoder", "encoder"])


def test_packed_recovery_batches_hold_several_clips_per_window(clips):
    from tiny_models import tiny_whisper

    teacher = TorchWhisper(tiny_whisper(max_target_positions=256), ToyTokenizer(), toy_vocab())  # 224 new tokens
    utts = read_manifest(clips)  # five clips of 0.5-1.3 s
    single = recovery_batches(teacher, Recovery(batch_size=8), utts)
    packed = recovery_batches(teacher, Recovery(batch_size=8, pack_seconds=3.0), utts)
    assert single[0]["input_features"].shape[0] == 5
    windows = packed[0]["input_features"].shape[0]
    assert 2 <= windows < 5  # 4.5 s of audio with gaps in windows of 3 s
    assert "teacher_logits" in packed[0]


def test_packing_longer_than_whispers_window_is_refused():
    from speechprune.errors import ConfigError
    from speechprune.prune.recipe import parse_recipe

    with pytest.raises(ConfigError, match="pack_seconds"):
        parse_recipe({"name": "r", "targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5}],
                      "recovery": {"pack_seconds": 31}})


class _Stop(Exception):
    pass


def test_an_interrupted_recovery_resumes_where_it_stopped(tiny_model, clips, tmp_path):
    teacher = TorchWhisper(tiny_model, ToyTokenizer(), toy_vocab())
    batches = teacher.labelled_batches(read_manifest(clips), 2, OPTS, teacher_logits=True)
    assert len(batches) > 1  # the order of batches matters
    cfg = Recovery(steps=8, lr=1e-3, batch_size=2)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where recovery runs long; the state file is CPU-side
    whole = _pruned_student(tiny_model).to(device)
    ref = distill(whole, batches, cfg, progress=False)

    done = []

    def crash():  # dies inside step 5, after the checkpoint of step 4
        done.append(1)
        if len(done) == 5:
            raise _Stop

    ckpt = tmp_path / "step-1.recovery.safetensors"
    with pytest.raises(_Stop):
        distill(_pruned_student(tiny_model).to(device), batches, cfg, progress=False, after_step=crash, checkpoint=ckpt,
                checkpoint_seconds=0)
    resumed = _pruned_student(tiny_model).to(device)
    stats = distill(resumed, batches, cfg, progress=False, checkpoint=ckpt, checkpoint_seconds=0)
    assert stats["resumed_at"] == 4
    for (k, v), w in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(v, w) if device == "cpu" else torch.allclose(v, w, atol=1e-5), k  # GPU atomics reorder sums
    if device == "cpu":
        assert stats["loss_first"] == ref["loss_first"] and stats["loss_last"] == ref["loss_last"]
    assert resumed.proj_out.weight is resumed.model.decoder.embed_tokens.weight  # loading kept the tie


def test_a_checkpoint_of_another_recovery_is_refused_and_kept(tiny_model, clips, tmp_path):
    teacher = TorchWhisper(tiny_model, ToyTokenizer(), toy_vocab())
    batches = teacher.labelled_batches(read_manifest(clips), 2, OPTS, teacher_logits=True)
    ckpt = tmp_path / "rec.safetensors"
    distill(_pruned_student(tiny_model), batches, Recovery(steps=3, lr=1e-3), progress=False, checkpoint=ckpt)
    kept = ckpt.read_bytes()
    other = Recovery(steps=3, lr=5e-4)
    with pytest.raises(ConfigError, match="rec.safetensors: is the checkpoint of another recovery") as e:
        distill(_pruned_student(tiny_model), batches, other, progress=False, checkpoint=ckpt)
    assert "\n" not in str(e.value) and ckpt.read_bytes() == kept  # nothing half-written over that run's work
    ckpt.write_bytes(b"torn")  # an unreadable checkpoint starts over
    assert "resumed_at" not in distill(_pruned_student(tiny_model), batches, other, progress=False, checkpoint=ckpt)


def test_recovery_data_can_be_augmented_before_the_teacher_labels_it(clips):
    from speechprune.data.augment import AugmentSettings
    from tiny_models import tiny_whisper

    teacher = TorchWhisper(tiny_whisper(max_target_positions=256), ToyTokenizer(), toy_vocab())  # 224 new tokens
    utts = read_manifest(clips)
    plain = recovery_batches(teacher, Recovery(batch_size=8), utts, progress=False)
    noisy = AugmentSettings(noise_p=1.0, speed_p=0, reverb_p=0, telephone_p=0, gain_p=0, snr_db=(5, 5))
    aug = recovery_batches(teacher, Recovery(batch_size=8, augment=noisy), utts, progress=False)
    again = recovery_batches(teacher, Recovery(batch_size=8, augment=noisy), utts, progress=False)
    a, p = aug[0]["input_features"], plain[0]["input_features"]
    assert a.shape == p.shape and not torch.allclose(a, p, atol=0.1)  # 5 dB of noise shows in the log-mels
    assert torch.equal(again[0]["input_features"], a)  # the same draw every run
