"""Perplexity: equal to exp of the mean NLL computed by hand, the floor for unseen Whisper ids, characters outside
the vocabulary, and the command line."""

from __future__ import annotations

import json
import math

import pytest
import torch

from models.lm.tiny_lm import SIZES, tiny_lm
from speechprune.data.normalize import normalize_text
from speechprune.evaluate.perplexity import evaluate_perplexity
from speechprune.models.lm import save_lm, tokens_for
from speechprune.numerics import reorder_rtol

LINES = ["The quick brown fox jumps over the lazy dog.", "Press 1 for sales!", "it costs $5 and 10%", "Hello there",
         "A much longer line that goes on and on past the context of the tiny model, so it is cut."]
DEPTH = 6 * SIZES["n_layers"] + 1


def _by_hand(model, rows_per_line, floor_row=None, floor=None):
    """Total NLL, scored targets and max |logit| reading each line alone (``floor_row``: scored at ``-floor``)."""
    total, n, scale = 0.0, 0, 0.0
    for rows in rows_per_line:
        rows = rows[: model.config.context + 1]
        ids = torch.tensor(rows)
        with torch.no_grad():
            logits = model(ids[None, :-1]).logits[0]
        lp = torch.log_softmax(logits.double(), dim=-1)
        for t, target in enumerate(rows[1:]):
            total += -floor if target == floor_row else -float(lp[t, target])
            n += 1
        scale = max(scale, float(logits.abs().max()))
    return total, n, scale


def _tol(scale: float) -> float:
    """How far a mean NLL may move with the summation order: the logits' rounding, relative to their magnitude."""
    return reorder_rtol(torch.float32, max(SIZES["ffn_dim"], SIZES["context"]), DEPTH) * scale


def _close(metrics, total, n, scale):
    tol = _tol(scale)
    assert metrics["tokens"] == n
    assert abs(metrics["nll_per_token"] - total / n) <= tol
    assert math.isclose(metrics["ppl"], math.exp(metrics["nll_per_token"]), rel_tol=1e-12)


def test_character_perplexity_is_exp_of_the_mean_nll_and_drops_what_is_outside_the_vocabulary(tmp_path):
    model, _ = tiny_lm()
    save_lm(model, tmp_path / "lm")
    (tmp_path / "t.txt").write_text("\n".join(LINES) + "\n")
    m = evaluate_perplexity(tmp_path / "lm", str(tmp_path / "t.txt"), out=tmp_path / "out", progress=False)
    lines = [normalize_text(s) for s in LINES]
    encoded = tokens_for(model).encode(lines)
    total, n, scale = _by_hand(model, [r for r, _ in encoded])
    _close(m, total, n, scale)
    assert m["oov"] == 2 and m["oov_share"] == 2 / (n + 2)  # "$" and "%"
    assert m["truncated_lines"] == 2 and m["lines"] == 5  # the fox and the long line, past 40 characters
    words = sum(len(s.split()) for s in lines)
    assert math.isclose(m["ppl_word"], math.exp(m["nll_per_token"] * n / (words + 5)), rel_tol=1e-9)
    assert m["tokens_per_second"] > 0
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["ppl"] == m["ppl"]


def test_unseen_whisper_ids_are_scored_at_the_stated_floor(tmp_path):
    kept = sorted({256, *(ord(c) for c in "the quick brown fox")})
    model, tokenizer = tiny_lm("whisper", tmp_path, kept=kept)
    save_lm(model, tmp_path / "lm", tokenizer)
    (tmp_path / "t.txt").write_text("the quick brown fox\nthe lazy dog\n")
    m = evaluate_perplexity(tmp_path / "lm", str(tmp_path / "t.txt"), progress=False)
    unseen = len(kept)
    encoded = tokens_for(model, tokenizer).encode(["the quick brown fox", "the lazy dog"])
    floor = model.config.unseen_log_prob
    total, n, scale = _by_hand(model, [r for r, _ in encoded], unseen, floor)
    _close(m, total, n, scale)
    n_floor = sum(r[1:].count(unseen) for r, _ in encoded)
    assert n_floor == sum(o for _, o in encoded) > 0 and m["oov"] == n_floor and m["oov_share"] == n_floor / n
    seen_total, _, _ = _by_hand(model, [r for r, _ in encoded], unseen, 0.0)  # the floor's part left out
    assert abs(math.log(m["ppl_seen"]) - seen_total / (n - n_floor)) <= _tol(scale)
    assert m["ppl"] > m["ppl_seen"]  # a floor of -15 is far below a random LM's ~ -ln(V)


def test_the_eval_command_scores_an_lm_folder_and_refuses_bad_text_in_one_line(tmp_path):
    from cli_helpers import cli

    model, _ = tiny_lm()
    save_lm(model, tmp_path / "lm")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in LINES))
    r = cli("eval", str(tmp_path / "lm"), str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    assert "PPL" in r.stdout and json.loads((tmp_path / "e" / "metrics.json").read_text())["lines"] == 5
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad\n")
    r = cli("eval", str(tmp_path / "lm"), str(tmp_path / "bad.txt"), "--out", str(tmp_path / "e2"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "bad.txt: not UTF-8 text" in r.stderr


@pytest.mark.parametrize("split", ["train", "dev"])
def test_a_split_of_a_text_file_is_the_lines_its_hash_puts_there(tmp_path, split):
    from speechprune.data.text import split_of

    model, _ = tiny_lm()
    save_lm(model, tmp_path / "lm")
    lines = [f"line number {i} of the file" for i in range(300)]
    (tmp_path / "t.txt").write_text("\n".join(lines))
    m = evaluate_perplexity(tmp_path / "lm", str(tmp_path / "t.txt"), split=split, progress=False)
    assert m["lines"] == sum(split_of(normalize_text(s)) == split for s in lines)
