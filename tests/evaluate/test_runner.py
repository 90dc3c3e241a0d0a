import json

import numpy as np

import pytest

from speechprune.data.manifest import read_manifest
from speechprune.errors import ConfigError
from speechprune.evaluate.runner import evaluate, score
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.backend import TorchWhisper

from tiny_models import ToyTokenizer, toy_vocab

OPTS = DecodeOptions(max_new_tokens=6)


def backend(model):
    return TorchWhisper(model, ToyTokenizer(), toy_vocab())


def with_bad_audio(manifest):
    """The clips plus a missing file, a corrupt file and an empty file."""
    folder = manifest.parent
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    import soundfile as sf

    sf.write(folder / "empty.wav", [], 16000)
    extra = [
        {"audio": "missing.wav", "text": "gone", "id": "missing"},
        {"audio": "corrupt.wav", "text": "bad", "id": "corrupt"},
        {"audio": "empty.wav", "text": "nothing", "id": "empty"},
    ]
    with open(manifest, "a") as f:
        for e in extra:
            f.write(json.dumps(e) + "\n")
    return read_manifest(manifest)


def test_bad_audio_is_listed_in_failed_and_the_rest_scored(tiny_model, clips, tmp_path):
    utts = with_bad_audio(clips)
    m = evaluate(backend(tiny_model), utts, tmp_path / "out", OPTS, batch_size=2, progress=False)
    assert m["n_utterances"] == 8 and m["n_scored"] == 5 and m["n_failed"] == 3
    reasons = {f["id"]: f["error"] for f in m["failed"]}
    assert set(reasons) == {"missing", "corrupt", "empty"}
    assert all("\n" not in r and r for r in reasons.values())
    assert m["n_words"] == 10  # "tone N" x 5
    assert m["wer"] > 0  # a random model does not say "tone 3"
    hyps = [json.loads(l) for l in (tmp_path / "out" / "hypotheses.jsonl").read_text().splitlines()]
    assert len(hyps) == 8


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_metrics(tiny_model, clips, tmp_path):
    utts = with_bad_audio(clips)
    full = evaluate(backend(tiny_model), utts, tmp_path / "full", OPTS, batch_size=2, progress=False)

    be = backend(tiny_model)
    real_decode, calls = be.decode, []

    def dying_decode(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise Killed()
        return real_decode(*a, **kw)

    be.decode = dying_decode
    with pytest.raises(Killed):
        evaluate(be, utts, tmp_path / "resumed", OPTS, batch_size=2, progress=False)
    hyp = tmp_path / "resumed" / "hypotheses.jsonl"
    written = hyp.read_text().splitlines()
    assert 0 < len(written) < 8
    with open(hyp, "a") as f:  # a write cut off mid-line by the kill
        f.write('{"id": "c4", "hypo')
    be.decode = real_decode
    again = evaluate(be, utts, tmp_path / "resumed", OPTS, batch_size=2, progress=False)
    assert again == full
    ids = [json.loads(l)["id"] for l in hyp.read_text().splitlines()]
    assert sorted(ids) == sorted(u.id for u in utts)  # nothing decoded twice, nothing lost


def test_other_settings_in_the_same_folder_are_refused(tiny_model, clips, tmp_path):
    utts = read_manifest(clips)
    evaluate(backend(tiny_model), utts, tmp_path / "o", OPTS, settings={"beam_size": 1}, progress=False)
    with pytest.raises(ConfigError, match="beam_size"):
        evaluate(backend(tiny_model), utts, tmp_path / "o", OPTS, settings={"beam_size": 4}, progress=False)


def test_score_counts_words_and_translations():
    recs = [
        {"id": "a", "audio": "a", "task": "transcribe", "language": "en", "reference": "Press one.", "hypothesis": "press 1"},
        {"id": "b", "audio": "b", "task": "transcribe", "language": "en", "reference": "hello world", "hypothesis": "hello"},
        {"id": "c", "audio": "c", "task": "translate", "language": "de", "reference": "the cat sat on the mat", "hypothesis": "the cat sat on the mat"},
        {"id": "d", "audio": "d", "error": "x.wav: audio is empty"},
    ]
    m = score(recs)
    assert m["n_words"] == 4 and m["word_errors"]["deletions"] == 1
    assert m["wer"] == pytest.approx(0.25)
    assert m["bleu"] == pytest.approx(100.0)
    assert m["n_failed"] == 1 and m["n_scored"] == 2


def test_a_clip_over_30_seconds_is_decoded_in_windows(tiny_model, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "long.wav", 0.1 * np.random.default_rng(0).standard_normal(41 * 16000), 16000)
    (tmp_path / "m.jsonl").write_text('{"audio": "long.wav", "text": "long"}\n')
    evaluate(backend(tiny_model), read_manifest(tmp_path / "m.jsonl"), tmp_path / "o", OPTS, progress=False)
    (rec,) = [json.loads(l) for l in (tmp_path / "o" / "hypotheses.jsonl").read_text().splitlines()]
    assert rec["n_windows"] == 2 and "error" not in rec


def test_a_rerun_resumes_only_the_same_weights(tiny_model, clips, tmp_path):
    """Re-pruning into the same model folder makes another model: its evaluation must not resume the old one's."""
    import copy

    import torch

    utts = read_manifest(clips)
    evaluate(backend(tiny_model), utts, tmp_path / "o", OPTS, settings={"model": "m"}, progress=False)
    pinned = json.loads((tmp_path / "o" / "run.json").read_text())["weights"]
    assert pinned and pinned == backend(copy.deepcopy(tiny_model)).fingerprint()  # same weights, same digest
    evaluate(backend(tiny_model), utts, tmp_path / "o", OPTS, settings={"model": "m"}, progress=False)  # resumes
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(ConfigError, match="weights"):
        evaluate(backend(other), utts, tmp_path / "o", OPTS, settings={"model": "m"}, progress=False)
    old = json.loads((tmp_path / "o" / "run.json").read_text())
    old.pop("weights")  # a folder written before runs were pinned to weights
    (tmp_path / "o" / "run.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="without a weights fingerprint"):
        evaluate(backend(tiny_model), utts, tmp_path / "o", OPTS, settings={"model": "m"}, progress=False)


def test_runaway_hypotheses_are_counted_with_their_errors():
    rec = {"audio": "a", "task": "transcribe", "language": "en"}
    recs = [
        {**rec, "id": "a", "reference": "press one", "hypothesis": "press 1", "runaway": False},
        {**rec, "id": "b", "reference": "hello", "hypothesis": "hello hello hello hello", "runaway": True},
        # written before the field existed: one window at the default token limit
        {**rec, "id": "c", "reference": "yes", "hypothesis": "no no", "n_windows": 1, "n_tokens": 224},
        {**rec, "id": "d", "reference": "yes", "hypothesis": "yes", "n_windows": 1, "n_tokens": 2},
    ]
    m = score(recs)
    assert m["runaway"] == {"utterances": 2, "word_errors": 3 + 2}
    assert m["word_errors"]["insertions"] == 3 + 1


def test_a_hypothesis_that_reaches_the_token_limit_is_marked_runaway(tiny_model, clips, tmp_path):
    utts = read_manifest(clips)
    m = evaluate(backend(tiny_model), utts, tmp_path / "o", OPTS, progress=False)
    recs = [json.loads(l) for l in (tmp_path / "o" / "hypotheses.jsonl").read_text().splitlines()]
    assert all(r["runaway"] == (r["n_tokens"] >= OPTS.max_new_tokens) for r in recs)
    assert m["runaway"]["utterances"] == sum(r["runaway"] for r in recs)


def test_out_of_domain_records_are_also_scored_per_source():
    def rec(i, ref, hyp):
        return {"id": i, "audio": i, "task": "transcribe", "language": "en", "reference": ref, "hypothesis": hyp}

    recs = [rec("drascula/1", "where is the castle", "where is the castle"),
            rec("drascula/2", "open the door now", "open a door now"),
            rec("saytime/3", "seven", "eleven")]
    m = score(recs)
    assert m["wer"] == pytest.approx(2 / 9)  # pooled over words
    assert m["by_source"]["drascula"] == {"wer": pytest.approx(1 / 8), "cer": pytest.approx(m["by_source"]["drascula"]["cer"]),
                                          "n_scored": 2, "n_words": 8}
    assert m["by_source"]["saytime"]["wer"] == 1.0
    assert m["macro_wer"] == pytest.approx((1 / 8 + 1) / 2)  # the one-word source weighs as much as the other
    assert "by_source" not in score([rec("digits/1", "one", "one"), rec("agent-pass", "a b", "a b")])  # asterisk ids


def test_scores_are_broken_down_by_language_and_task():
    def rec(i, lang, task, ref, hyp):
        return {"id": i, "audio": i, "task": task, "language": lang, "reference": ref, "hypothesis": hyp}

    m = score([rec("a", "en", "transcribe", "press one", "press 1"),
               rec("es/a", "es", "transcribe", "numero uno", "número dos"),
               rec("es-en/a", "es", "translate", "number one", "number one")])
    table = m["by_language_task"]
    assert list(table) == ["en/transcribe", "es/transcribe", "es/translate"]
    assert table["en/transcribe"]["wer"] == 0.0
    assert table["es/transcribe"]["wer"] == 0.5  # "número" meets "numero": Spanish is scored without diacritics
    assert table["es/translate"] == {"bleu": pytest.approx(m["bleu"]), "n_translated": 1}
    assert m["wer"] == pytest.approx(1 / 4) and m["n_scored"] == 2
    assert "by_language_task" not in score([rec("a", "en", "transcribe", "one", "one")])


def test_a_long_ctc_transcript_is_not_a_runaway(clips, tmp_path):
    """A CTC search reads every frame and has no token cap: a transcript longer than max_new_tokens is just long."""
    from speechprune.models.ctc.backend import CTCBackend
    from tiny_models import tiny_ctc

    few = DecodeOptions(max_new_tokens=2)
    m = evaluate(CTCBackend(tiny_ctc()), read_manifest(clips), tmp_path / "c", few, progress=False)
    recs = [json.loads(l) for l in (tmp_path / "c" / "hypotheses.jsonl").read_text().splitlines()]
    assert any(r["n_tokens"] > few.max_new_tokens for r in recs)  # else the test shows nothing
    assert not any(r["runaway"] for r in recs) and m["runaway"]["utterances"] == 0


def test_every_evaluation_gets_the_out_of_domain_suite_beside_it(tiny_model, clips, tmp_path):
    from speechprune.data.sources import SOURCES
    from speechprune.evaluate.runner import evaluate_with_ood, ood_fields

    utts = read_manifest(clips)
    m = evaluate_with_ood(backend(tiny_model), utts, tmp_path / "e", "toy", "asterisk", "test", OPTS,
                          ood_per_source=1, progress=False)
    assert m["n_utterances"] == len(utts)
    assert m["ood"]["n_utterances"] == len(SOURCES) == len(m["ood"]["by_source"])  # one clip of each source
    assert (tmp_path / "e" / "ood" / "metrics.json").is_file()
    flat = ood_fields(m, "_pruned")
    assert flat["wer_ood_pruned"] == m["ood"]["wer"] and flat["macro_wer_ood_pruned"] == m["ood"]["macro_wer"]
    assert set(flat["wer_ood_by_source_pruned"]) == set(m["ood"]["by_source"])
    # a source of the suite is itself out of domain: nothing beside it, and nothing to flatten
    alone = evaluate_with_ood(backend(tiny_model), utts, tmp_path / "d", "toy", "drascula", None, OPTS,
                              progress=False)
    assert "ood" not in alone and ood_fields(alone) == {}
