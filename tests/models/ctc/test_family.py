"""The CTC family's seam: teacher-labelled batches, what distillation compares, save/load of pruned and factorized
models, the shape record."""

from __future__ import annotations

import pytest
import torch

from closeness import assert_reorder_close
from speechprune.data.manifest import read_manifest
from speechprune.errors import ManifestError
from speechprune.models.ctc import greedy_ctc
from speechprune.models.ctc.vocab import CharVocab
from speechprune.models.ctc.adapter import CTCAdapter
from speechprune.models.ctc.family import FAMILY
from speechprune.models.ctc.flops import encoder_flops
from speechprune.models.family import family_for, family_for_folder
from speechprune.models.lowrank import LowRankLinear
from speechprune.prune.lowrank import factorize_linear
from speechprune.recovery.config import Recovery
from speechprune.recovery.distill import distill, kl_loss
from tiny_models import tiny_ctc


def _pruned(model):
    adapter = CTCAdapter()
    for g in adapter.unit_groups(model):
        if g.kind == "ffn":
            adapter.prune_units(model, g, list(range(g.n_units // 2)))
    return model


def test_labelled_batches_carry_the_teachers_greedy_output_and_a_loss(clips):
    teacher = tiny_ctc("conformer", "group")
    batches = FAMILY.labeller(teacher).labelled_batches(read_manifest(clips), 2, teacher_logits=True,
                                                        teacher_hidden=True)
    assert [len(b["lengths"]) for b in batches] == [2, 2, 1]
    b = batches[0]
    with torch.no_grad():
        out = teacher(b["features"], b["lengths"])
        ids = greedy_ctc(out.log_probs, out.lengths)
        assert b["targets"].tolist() == [t for seq in ids for t in seq]
        assert torch.isfinite(teacher(**{k: b[k] for k in ("features", "lengths", "targets", "target_lengths")}).loss)
    n, t = len(b["lengths"]), int(out.lengths.max())
    assert b["teacher_logits"].shape == (n, t, len(teacher.config.vocab) + 1)
    assert b["teacher_encoder"].shape == (n, t, teacher.config.d_model)
    assert b["teacher_hidden"].shape == (teacher.depth - 1, n, t, teacher.config.d_model)


def test_the_teacher_compared_with_itself_differs_by_nothing_but_fp16(clips):
    teacher = tiny_ctc("whisper")
    batch = FAMILY.labeller(teacher).labelled_batches(read_manifest(clips), 3, teacher_logits=True,
                                                      teacher_hidden=True)[0]
    with torch.no_grad():
        out = FAMILY.distill_outputs(teacher, batch, layers=True)
    real = int(teacher.stem.out_lengths(batch["lengths"]).sum())  # only real frames are compared
    assert out.student_logits.shape[0] == out.teacher_logits.shape[0] == real
    assert_reorder_close(out.student_logits.half().float(), out.teacher_logits.float(), k=1, depth=1, dtype=torch.float16)
    assert float(kl_loss(out.student_logits, out.teacher_logits, 1.0)) < 1e-3
    assert len(out.student_layers) == out.teacher_layers.shape[0] == teacher.depth - 1


@pytest.mark.parametrize("encoder,norm", [("whisper", "batch"), ("conformer", "batch"), ("conformer", "group")])
def test_recovery_distils_a_pruned_ctc_student_towards_its_teacher(clips, encoder, norm):
    teacher = tiny_ctc(encoder, norm)
    with torch.no_grad():
        teacher.head.weight.mul_(20)  # confident posteriors: a random model's are nearly uniform
    batches = FAMILY.labeller(teacher).labelled_batches(read_manifest(clips), 5, teacher_logits=True,
                                                        teacher_hidden=True)
    student = _pruned(tiny_ctc(encoder, norm, seed=1))
    cfg = Recovery(steps=30, lr=3e-3, batch_size=5, hidden_weight=1.0, encoder_weight=1.0)

    def kl() -> float:
        with torch.no_grad():
            out = family_for(student).distill_outputs(student, batches[0], layers=False)
        return float(kl_loss(out.student_logits, out.teacher_logits, 1.0))

    before = kl()
    stats = distill(student, batches, cfg, progress=False)
    assert stats["loss_last"] < stats["loss_first"]
    assert kl() < before
    assert not student.training


def test_pruned_and_factorized_ctc_models_reload_to_identical_outputs(tmp_path):
    model = _pruned(tiny_ctc("conformer", "group"))
    CTCAdapter().remove_layers(model, "encoder", [1])
    site = next(s for s in CTCAdapter().weight_sites(model) if s.component == "ffn" and s.role == "ffn.in")
    site.replace(factorize_linear(site.module, 4))
    FAMILY.save(model, None, tmp_path / "m")
    again = family_for_folder(tmp_path / "m").load(tmp_path / "m")
    assert isinstance({s.key: s for s in CTCAdapter().weight_sites(again)}[site.key].module, LowRankLinear)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    x, lengths = torch.randn(2, 16, 90), torch.tensor([90, 61])
    with torch.no_grad():
        assert torch.equal(model(x, lengths).log_probs, again(x, lengths).log_probs)


def test_the_shape_record_counts_what_pruning_and_factorization_remove():
    model = tiny_ctc("whisper")
    dense = FAMILY.shape_record(model)
    assert dense["flops_encoder"] == encoder_flops(model.config, dense["flops_reference_frames"])["total"]
    _pruned(model)
    pruned = FAMILY.shape_record(model)
    assert pruned["params"] < dense["params"] and pruned["flops_encoder"] < dense["flops_encoder"]
    site = next(s for s in CTCAdapter().weight_sites(model) if s.component == "self_attn" and s.role == "out")
    n_in, n_out = site.module.in_features, site.module.out_features
    site.replace(factorize_linear(site.module, 2))
    factored = FAMILY.shape_record(model)
    t = 1500  # the whisper stem halves the 3000 reference frames
    assert pruned["flops_encoder"] - factored["flops_encoder"] == 2 * t * (n_in * n_out - 2 * (n_in + n_out))


def test_a_folder_of_no_family_is_a_one_line_error(tmp_path):
    from speechprune.errors import ModelError

    (tmp_path / "x").mkdir()
    with pytest.raises(ModelError, match="not a model folder of a supported family"):
        family_for_folder(tmp_path / "x")


def test_an_unstructured_sparse_ctc_model_round_trips_through_the_compressed_format(tmp_path):
    from speechprune.models.sparse import SPARSE_FILE, save_sparse
    from speechprune.prune.unstructured import magnitude_prune

    model = tiny_ctc("conformer", "batch")
    magnitude_prune(model, 0.8)
    record = save_sparse(model, None, tmp_path / "s")
    assert (tmp_path / "s" / SPARSE_FILE).is_file() and not (tmp_path / "s" / "model.safetensors").exists()
    assert record["layouts"]["bitmask"] + record["layouts"]["csr"] > 0
    again = family_for_folder(tmp_path / "s").load(tmp_path / "s")
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k


def test_length_buckets_are_refused_for_a_family_that_reads_each_clip_already():
    from speechprune.errors import ConfigError

    with pytest.raises(ConfigError, match="already reads each clip's own frames"):
        FAMILY.set_length_buckets(tiny_ctc(), (150, 1500))


def test_the_familys_backend_decodes_a_saved_model_and_a_pruned_copy_alike(tmp_path, clips):
    from speechprune.data.features import FeatureFrontend
    from speechprune.errors import ConfigError
    from speechprune.evaluate.backends import load_backend
    from speechprune.evaluate.runner import decode_prepared, prepare_batch
    from speechprune.models.decoding import DecodeOptions

    model = tiny_ctc("whisper")
    FAMILY.save(model, None, tmp_path / "m")
    be = load_backend(str(tmp_path / "m"), "torch", name="dense")  # through the family seam
    assert be.name == "dense" and type(be).__name__ == "CTCBackend"
    batch = prepare_batch(FeatureFrontend(be.n_mels), read_manifest(clips)[:3])
    pruned = be.with_model(_pruned(FAMILY.load(tmp_path / "m")), name="pruned")
    assert pruned.name == "pruned" and pruned.params < be.params
    FAMILY.save(pruned.model, tmp_path / "m", tmp_path / "p")
    again = FAMILY.backend(tmp_path / "p")
    hyps = [[r["hypothesis"] for r in decode_prepared(b, batch, DecodeOptions())] for b in (pruned, again)]
    assert hyps[0] == hyps[1]  # a pruned copy decodes as its saved and reloaded folder does
    with pytest.raises(ConfigError, match="exit layer 9 is outside"):
        FAMILY.backend(tmp_path / "m", exit_layer=9)


def test_reference_batches_carry_the_references_characters_and_a_loss(clips, tmp_path):
    model = tiny_ctc("conformer", "group")
    batches = FAMILY.labeller(model).reference_batches(read_manifest(clips), 2)
    assert [len(b["lengths"]) for b in batches] == [2, 2, 1]
    vocab = CharVocab(model.config.vocab)
    b = batches[0]
    # the references as the scoring normalizes them (Whisper's English normalizer spells "tone 1" "tone one")
    assert b["targets"].tolist() == vocab.encode("tone 0") + vocab.encode("tone one")
    with torch.no_grad():
        assert torch.isfinite(model(**b).loss)
    (tmp_path / "x.jsonl").write_text('{"audio": "%s", "text": "\\u97f3", "id": "x"}\n' % (clips.parent / "c0.wav"))
    with pytest.raises(ManifestError, match="none of the clips"):  # outside the vocabulary: skipped, none left
        FAMILY.labeller(model).reference_batches(read_manifest(tmp_path / "x.jsonl"), 2)
