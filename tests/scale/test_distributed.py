"""Data-parallel recovery under torchrun (gloo, 2 processes) against one process on the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.numerics import reorder_rtol
from speechprune.scale.distributed import DataParallel

WORKER = Path(__file__).with_name("dp_worker.py")


def _run(out: Path, procs: int, *args: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(WORKER), str(out), *args]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs), *cmd[1:]]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _result(out: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return json.loads((out / "result.json").read_text()), load_file(str(out / "student.safetensors"))


def test_shares_split_the_global_batch_and_refuse_a_world_that_does_not_divide_it():
    assert list(DataParallel(1, 2).shares(4)) == [1, 3] and list(DataParallel().shares(3)) == [0, 1, 2]
    with pytest.raises(ConfigError, match="world size 2 does not divide the global batch of 3") as e:
        DataParallel(0, 2).shares(3)
    assert "\n" not in str(e.value)


def test_two_processes_follow_the_single_process_loss_curve_and_resume_under_another_world_size(tmp_path):
    one = _run(tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _run(tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    (r1, w1), (r2, w2) = _result(tmp_path / "one"), _result(tmp_path / "two")
    assert r2["processes"] == 2 and "processes" not in r1 and len(r1["losses"]) == len(r2["losses"]) == 20
    # the same sums in another order (two partial gradients added by the all-reduce): float32 rounding, 20 steps
    rtol = 20 * reorder_rtol(torch.float32, 2, 1) + 1e-6
    assert r1["losses"][-1] < r1["losses"][0]
    torch.testing.assert_close(torch.tensor(r2["losses"]), torch.tensor(r1["losses"]), rtol=rtol, atol=0.0)
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)

    # killed inside step 12 with two processes; rerun alone from rank 0's checkpoint of step 11
    ckpt = tmp_path / "rec.safetensors"
    crashed = _run(tmp_path / "crash", 2, "--crash-at", "12", "--checkpoint", str(ckpt))
    assert crashed.returncode != 0 and ckpt.is_file() and not (tmp_path / "crash" / "result.json").exists()
    resumed = _run(tmp_path / "resume", 1, "--checkpoint", str(ckpt))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    r3, w3 = _result(tmp_path / "resume")
    assert r3["resumed_at"] == 11 and "processes" not in r3
    torch.testing.assert_close(torch.tensor(r3["losses"]), torch.tensor(r1["losses"]), rtol=rtol, atol=0.0)
    for k in w1:
        torch.testing.assert_close(w3[k], w1[k], rtol=1e-4, atol=1e-5, msg=k)


def test_train_under_torchrun_follows_the_single_process_loss_curve(tmp_path):
    """`torchrun --standalone --nproc_per_node 2 -m speechprune train` on a tiny character LM: the same loss per step
    as one process over the same global batches (accumulate: 2), and one writer."""
    from safetensors import safe_open

    text = tmp_path / "text"
    text.mkdir()
    words = "the cat sat on a mat while seven red birds sang near the old stone wall".split()
    lines = [" ".join(words[(i * 3) % 11: (i * 3) % 11 + 4 + i % 3]) for i in range(40)]
    (text / "train.txt").write_text("\n".join(lines[:32]) + "\n")
    (text / "dev.txt").write_text("\n".join(lines[32:]) + "\n")
    model = {"tokens": "chars", "d_model": 32, "n_layers": 1, "n_heads": 2, "ffn_dim": 48, "context": 48,
             "dropout": 0.1}  # dropout: its masks follow the step and the batch's place, not the process
    recipe = tmp_path / "t.yaml"
    recipe.write_text(f"family: lm\nmodel: {json.dumps(model)}\n"
                      f"data: {{text: '{text / 'train.txt'}', valid: '{text / 'dev.txt'}'}}\n"
                      f"steps: 8\nbatch_tokens: 64\naccumulate: 2\nwarmup: 0\n")
    runs = {}
    for procs in (1, 2):
        cmd = [sys.executable, "-m", "speechprune", "train", str(recipe), "--out", str(tmp_path / f"run{procs}")]
        if procs > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd[1:]]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        assert r.stdout.count("dev perplexity") == 1  # one process reports
        with safe_open(str(tmp_path / f"run{procs}" / "checkpoint.safetensors"), "pt") as f:  # the loss per step
            runs[procs] = json.loads(f.metadata()["recovery"])["losses"]
    assert len(runs[1]) == len(runs[2]) == 8
    torch.testing.assert_close(torch.tensor(runs[2]), torch.tensor(runs[1]), rtol=1e-4, atol=0.0)


def test_prune_recovery_under_torchrun_writes_once_and_follows_the_single_process_losses(clips, tmp_path):
    """`torchrun ... -m speechprune prune` on a tiny CTC Conformer (group norm: per-clip statistics, so splitting a
    global batch changes nothing): rank 0 writes the one record and model, whose recovery losses are those of one
    process over the same global batches."""
    from speechprune.models.ctc import load_ctc, save_ctc
    from tiny_models import tiny_ctc

    dense = save_ctc(tiny_ctc("conformer", "group"), tmp_path / "dense")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5}],
        "recovery": {"data": [str(clips)], "steps": 6, "batch_size": 2, "lr": 1e-3, "encoder_weight": 1.0,
                     "accumulate": 2}}))
    records = {}
    for procs in (1, 2):
        cmd = [sys.executable, "-m", "speechprune", "prune", str(dense), "--recipe", str(recipe), "--out",
               str(tmp_path / f"p{procs}")]
        if procs > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd[1:]]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        records[procs] = json.loads((tmp_path / f"p{procs}" / "prune.json").read_text())
        assert sorted(p.name for p in (tmp_path / f"p{procs}").iterdir()) == ["model.txt", "prune.json", "step-1"]
    one, two = (records[n]["steps"][0]["recovery"] for n in (1, 2))
    assert two["processes"] == 2 and len(one["losses"]) == len(two["losses"]) == 6
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one["losses"]), rtol=1e-4, atol=0.0)
    a, b = load_ctc(tmp_path / "p1" / "step-1"), load_ctc(tmp_path / "p2" / "step-1")
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(w, v, rtol=1e-4, atol=1e-5, msg=k)
