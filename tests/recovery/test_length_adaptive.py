"""Adaptation to length buckets by distillation (``recovery.length_adaptive``): the teacher labels at the full window,
the batches record their clips' frames and come in order of length, the student reads each batch at its bucket and
is compared with the teacher's first positions, and training lowers that loss."""

from __future__ import annotations

import copy

import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.models.adapters import adapter_for
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.models.whisper.family import FAMILY
from speechprune.models.whisper.graph import WhisperEncoderGraph
from speechprune.models.whisper.lengths import LENGTH_KEY, batch_bucket, length_buckets, set_length_buckets
from speechprune.recovery.config import Recovery
from speechprune.recovery.distill import distill, hidden_state_loss, kl_loss, recovery_batches

from closeness import FRAMES, WHISPER_ENCODER_DEPTH, assert_reorder_close
from tiny_models import ToyTokenizer, tiny_ctc, toy_vocab

BUCKETS = [50, 100, 1500]  # clips of 0.5 .. 1.3 s fill 51 .. 131 frames: buckets 50 and 100
OPTS = DecodeOptions(max_new_tokens=5)


class _Teacher(TorchWhisper):
    """The tiny teacher, labelling with at most ``OPTS.max_new_tokens`` tokens (the tiny model has 64 positions)."""

    def labelled_batches(self, utterances, batch_size, options=OPTS, **kw):
        return super().labelled_batches(utterances, batch_size, options, **kw)


def _cfg(clips, **kw) -> Recovery:
    base = {"data": [str(clips)], "steps": 30, "batch_size": 2, "lr": 1e-3,
            "length_adaptive": {"buckets": BUCKETS}}
    return Recovery(**{**base, **kw})


def test_the_option_is_checked_and_left_out_of_every_other_recoverys_record():
    assert "length_adaptive" not in Recovery().model_dump() and "length_adaptive" not in Recovery().model_dump_json()
    cfg = Recovery(length_adaptive={"buckets": [150, 1500]})
    assert Recovery.model_validate(cfg.model_dump(mode="json")) == cfg
    with pytest.raises(ValueError, match="needs recovery steps"):
        Recovery(steps=0, length_adaptive={"buckets": [1500]})
    with pytest.raises(ValueError, match="ascending"):
        Recovery(length_adaptive={"buckets": [500, 150, 1500]})
    with pytest.raises(ValueError, match="buckets"):
        Recovery(length_adaptive={})


def test_batches_record_their_frames_in_order_of_length_and_packed_windows_come_beside(tiny_model, clips):
    teacher = _Teacher(tiny_model, ToyTokenizer(), toy_vocab())
    plain = recovery_batches(teacher, _cfg(clips, length_adaptive=None), progress=False)
    assert all("frames" not in b for b in plain)  # every other recovery's batches are as before
    batches = recovery_batches(teacher, _cfg(clips), progress=False)
    frames = [f for b in batches for f in b["frames"].tolist()]
    assert frames == sorted(frames) and len(frames) == 5 and frames[0] == 51 and frames[-1] == 131
    assert all(b["input_features"].shape[-1] == 3000 for b in batches)  # the teacher read the full window
    assert [b["frames"].tolist() for b in batches] == [[51, 71], [91, 111], [131]]
    assert [batch_bucket(b["frames"].tolist(), BUCKETS) for b in batches] == [50, 100, 100]
    packed = recovery_batches(teacher, _cfg(clips, pack_seconds=2.0), progress=False)
    assert len(packed) > len(batches)
    assert [b["frames"].tolist() for b in packed[: len(batches)]] == [b["frames"].tolist() for b in batches]
    assert max(f for b in packed[len(batches):] for f in b["frames"].tolist()) > 131  # windows of several clips


def test_a_length_adaptive_student_is_compared_with_the_teachers_first_positions(tiny_model, clips):
    teacher = _Teacher(tiny_model, ToyTokenizer(), toy_vocab())
    batch = recovery_batches(teacher, _cfg(clips, hidden_weight=1.0, encoder_weight=1.0), progress=False)[0]
    student = copy.deepcopy(tiny_model)
    set_length_buckets(student, BUCKETS)
    out = FAMILY.distill_outputs(student, batch, layers=True)
    p = batch_bucket(batch["frames"].tolist(), BUCKETS)
    assert out.student_final.shape == (2, p, 32) and out.student_final.requires_grad
    assert torch.equal(out.teacher_final.cpu(), batch["teacher_encoder"][:, :p].float().half())
    assert out.teacher_layers.shape[2] == p and len(out.student_layers) == out.teacher_layers.shape[0]
    assert out.student_logits.shape == out.teacher_logits.shape
    with torch.no_grad():  # the student read only its bucket's frames
        want = WhisperEncoderGraph(student)(batch["input_features"][..., : 2 * p])
    assert_reorder_close(out.student_final.detach(), want, k=FRAMES, depth=WHISPER_ENCODER_DEPTH)
    with pytest.raises(ConfigError, match="frames"):
        FAMILY.distill_outputs(student, {k: v for k, v in batch.items() if k != "frames"}, layers=False)


def test_adaptation_of_a_pruned_student_lowers_its_loss_at_the_buckets_and_marks_it(tiny_model, clips):
    teacher = _Teacher(tiny_model, ToyTokenizer(), toy_vocab())
    cfg = _cfg(clips, encoder_weight=1.0, hidden_weight=1.0)
    batches = recovery_batches(teacher, cfg, progress=False)
    student = copy.deepcopy(tiny_model)  # pruned, as a recipe that prunes and adapts in one recovery leaves it
    a = adapter_for(student)
    a.prune_units(student, next(g for g in a.unit_groups(student) if g.key == "encoder.0.ffn"), list(range(8)))

    def loss() -> float:
        """The recovery's objective (KL + CE + encoder output), each batch read at its bucket."""
        probe = copy.deepcopy(student)
        set_length_buckets(probe, BUCKETS)
        with torch.no_grad():
            outs = [FAMILY.distill_outputs(probe, b, layers=False) for b in batches]
        return sum(float(kl_loss(o.student_logits, o.teacher_logits, 2.0) + o.task_loss
                         + hidden_state_loss(o.student_final, o.teacher_final)) for o in outs) / len(outs)

    before = loss()
    stats = distill(student, batches, cfg, progress=False)
    assert stats["steps"] == 30 and stats["loss_last"] < stats["loss_first"]
    assert loss() < 0.9 * before
    assert length_buckets(student.config) == tuple(BUCKETS) and getattr(student.config, LENGTH_KEY) == BUCKETS
    assert length_buckets(tiny_model.config) is None  # the teacher still reads the full window


def test_a_family_without_length_buckets_is_refused(clips):
    from speechprune.models.ctc.batches import CTCLabeller

    teacher = tiny_ctc()
    batches = recovery_batches(CTCLabeller(teacher), _cfg(clips), progress=False)  # CTC batches carry lengths
    with pytest.raises(ConfigError, match="length_adaptive"):
        distill(tiny_ctc(), batches, _cfg(clips), progress=False)
