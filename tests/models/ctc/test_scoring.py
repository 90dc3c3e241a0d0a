"""The CTC family's reference scorer: CTC loss per reference character and greedy hypotheses, the same as an
independent computation and as evaluation's decoding; references it cannot score are one-line errors."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from closeness import assert_reorder_close
from speechprune.data.features import FeatureFrontend
from speechprune.data.manifest import read_manifest
from speechprune.data.normalize import normalize_text
from speechprune.errors import ConfigError
from speechprune.models.ctc.backend import CTCBackend
from speechprune.models.ctc.family import FAMILY
from speechprune.models.decoding import DecodeOptions
from tiny_models import tiny_ctc

ENCODERS = [("conformer", "batch"), ("whisper", "batch")]


@pytest.mark.parametrize("encoder,norm", ENCODERS)
def test_proxy_is_the_ctc_loss_per_reference_character(clips, encoder, norm):
    from speechprune.data.audio import load_audio
    from speechprune.data.features import real_frames

    model = tiny_ctc(encoder, norm)
    utts = read_manifest(clips)
    scorer = FAMILY.reference_scorer(CTCBackend(model), utts, batch_size=2)
    frontend, total, chars, longest = FeatureFrontend(model.config.n_mels), 0.0, 0, 0
    for u in utts:  # one clip at a time, from the audio: an independent computation of the definition
        audio = load_audio(u.audio)
        frames = real_frames(len(audio))
        feats = torch.from_numpy(frontend([audio])[:, :, :frames])
        target = torch.tensor([scorer.backend.vocab.index[c] for c in normalize_text(u.text)])
        with torch.no_grad():
            out = model(feats, torch.tensor([frames]))
        total += float(F.ctc_loss(out.log_probs.transpose(0, 1), target[None], out.lengths, torch.tensor([len(target)]),
                                  reduction="sum"))
        chars, longest = chars + len(target), max(longest, frames)
    assert chars == scorer.n_targets == sum(len(normalize_text(u.text)) for u in utts)
    assert_reorder_close(scorer.proxy(model, {}), total / chars, k=longest, depth=model.reduction_depth,
                         dtype=torch.float32)
    assert scorer.proxy(model, {}) == scorer.proxy(model, {"encoder": 0})  # nothing cached: ``changed`` is not read


def test_records_are_the_evaluation_runners_hypotheses(clips):
    from speechprune.evaluate.runner import decode_prepared, prepare_batch

    model = tiny_ctc("conformer", "group")
    be = CTCBackend(model)
    utts = read_manifest(clips)
    records = FAMILY.reference_scorer(be, utts, batch_size=3).records(model, {})
    assert [r["id"] for r in records] == [u.id for u in utts]
    assert all(set(r) == {"id", "audio", "language", "task", "reference", "hypothesis"} for r in records)
    evaluated = decode_prepared(be, prepare_batch(FeatureFrontend(model.config.n_mels), utts), DecodeOptions())
    assert [r["hypothesis"] for r in records] == [r["hypothesis"] for r in evaluated]
    assert any(r["hypothesis"] for r in records)  # a random model still emits characters


def test_a_damaged_copy_scores_through_the_dense_backend(clips):
    from speechprune.models.adapters import adapter_for

    model = tiny_ctc("whisper", "batch")
    scorer = FAMILY.reference_scorer(CTCBackend(model), read_manifest(clips), batch_size=2)
    dense = scorer.proxy(model, {})
    cut = tiny_ctc("whisper", "batch")
    adapter_for(cut).remove_layers(cut, "encoder", [2])
    assert scorer.proxy(cut, {"encoder": 2}) != dense
    assert len(scorer.records(cut, {"encoder": 2})) == 5
    assert scorer.proxy(model, {}) == dense


def test_references_it_cannot_score_are_one_line_errors(clips, tmp_path):
    model = tiny_ctc("conformer", "batch")
    be = CTCBackend(model)
    utts = read_manifest(clips)
    outside = [replace(u, text="tone 日本") if u.id == "c1" else u for u in utts]
    with pytest.raises(ConfigError, match="outside the CTC model's vocabulary") as e:
        FAMILY.reference_scorer(be, outside)
    assert "日本" in str(e.value) and "c1" in str(e.value) and "\n" not in str(e.value)
    too_long = [replace(u, text="a much longer sentence than half a second of tone can spell") if u.id == "c0" else u
                for u in utts]
    with pytest.raises(ConfigError, match="longer than their clip's encoder positions") as e:
        FAMILY.reference_scorer(be, too_long)
    assert "c0" in str(e.value) and "\n" not in str(e.value)
