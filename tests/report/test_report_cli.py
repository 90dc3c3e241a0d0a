"""`speechprune report` and `speechprune analyze plan` from the command line: output written, bad input one line."""

from __future__ import annotations

import json

from cli_helpers import cli


def test_report_command_writes_a_page(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"wer": 0.125, "cer": 0.05, "n_utterances": 8, "n_failed": 0}))
    r = cli("report", str(run), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 0, r.stderr
    assert "12.5" in (tmp_path / "r.html").read_text()


def test_bad_inputs_are_one_line_errors(tmp_path):
    r = cli("report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "missing" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = cli("analyze", "plan", str(tmp_path), "--target", "encoder-flops:0.4", "--out", str(tmp_path / "p.yaml"))
    assert r.returncode == 2 and "not a sensitivity sweep" in r.stderr
    r = cli("analyze", "sensitivity", "whisper-tiny.en", "--out", str(tmp_path / "s"), "--levels", "0.5,x")
    assert r.returncode == 2 and "--levels" in r.stderr
