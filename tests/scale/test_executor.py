"""Job lists run locally and on one small local Ray cluster (2 CPUs, shared by this file's tests)."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

import pytest

from speechprune.errors import ConfigError
from speechprune.scale.executor import (Executor, add_executor_arguments, check_address, executor_from_arguments,
                                        run_jobs)

ray = pytest.importorskip("ray")


@dataclass(frozen=True)
class Squares:
    """A toy job: the state records which process built it and how many threads torch was given there."""

    offset: int

    def setup(self):
        import torch

        return {"pid": os.getpid(), "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}

    def run(self, state, item):
        if item == "boom":
            raise ValueError("bad item boom")
        return {"item": item, "value": item * item + self.offset, **state}


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster with 2 CPUs for every Ray test here (started once: a few seconds)."""
    from speechprune.scale.executor import _init_ray

    _init_ray(Executor("ray", workers=2))
    assert ray.cluster_resources()["CPU"] == 2
    yield Executor("ray", threads=1)
    ray.shutdown()


def test_local_runs_in_order_with_one_setup():
    got = []
    n = run_jobs(Squares(1), [3, 1, 2], Executor(), lambda i, r: got.append((i, r)))
    assert n == 3 and [i for i, _ in got] == [3, 1, 2]
    assert [r["value"] for _, r in got] == [10, 2, 5] and {r["pid"] for _, r in got} == {os.getpid()}
    assert run_jobs(Squares(1), [], Executor("ray"), lambda i, r: got.append(r)) == 0  # nothing starts Ray


def test_bad_executor_settings_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown executor 'dask'"):
        Executor("dask")
    with pytest.raises(ConfigError, match="needs --executor ray"):
        Executor("local", address="127.0.0.1:6379")
    with pytest.raises(ConfigError, match="threads per worker"):
        Executor("ray", threads=0)
    with pytest.raises(ConfigError, match="host:port"):
        check_address("nowhere")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ConfigError, match=f"cluster at 127.0.0.1:{port} does not answer") as e:
        check_address(f"127.0.0.1:{port}", timeout=1.0)
    assert "\n" not in str(e.value)


def test_the_bench_scripts_options_name_the_same_executor():
    import argparse

    ap = argparse.ArgumentParser()
    add_executor_arguments(ap, local_threads=2)
    assert executor_from_arguments(ap.parse_args([])) == Executor("local", threads=2)
    ray = executor_from_arguments(ap.parse_args(["--executor", "ray", "--ray-workers", "3"]))
    assert ray == Executor("ray", workers=3, threads=1)  # one thread per Ray worker unless told
    assert executor_from_arguments(ap.parse_args(["--executor", "ray", "--threads", "2"])).threads == 2
    with pytest.raises(ConfigError, match="--ray-workers needs --executor ray"):
        executor_from_arguments(ap.parse_args(["--ray-workers", "3"]))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(ConfigError, match="does not answer"):  # before any work
        executor_from_arguments(ap.parse_args(["--executor", "ray", "--ray-address", f"127.0.0.1:{port}"]))


def test_ray_gives_the_local_records_with_one_setup_per_pinned_worker(cluster):
    items = list(range(8))
    local, remote = {}, {}
    run_jobs(Squares(5), items, Executor(), lambda i, r: local.__setitem__(i, r["value"]))
    records = []
    run_jobs(Squares(5), items, cluster, lambda i, r: (remote.__setitem__(i, r["value"]), records.append(r)))
    assert remote == local
    pids = {r["pid"] for r in records}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2  # two actors at most, each set up once
    assert {r["threads"] for r in records} == {1} and {r["omp"] for r in records} == {"1"}


def test_a_failing_item_raises_its_own_error_here(cluster):
    with pytest.raises(ValueError, match="bad item boom"):
        run_jobs(Squares(0), [1, "boom"], cluster, lambda i, r: None)


def test_sweep_on_ray_writes_the_serial_points(cluster, clips, tmp_path):
    """A sensitivity sweep run serially and on Ray ends with the same points.jsonl content (order and the timing
    field aside); a Ray rerun after a lost point redoes that point alone."""
    from models.conftest import write_tiny_whisper_folder
    from transformers import WhisperFeatureExtractor

    from speechprune.analysis import sensitivity as S

    _, folder = write_tiny_whisper_folder(tmp_path / "tinyw")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    kw = dict(split="all", components=["encoder.ffn", "decoder.cross_attn"], levels=[0.3, 0.6],
              methods=["structured", "unstructured"], limit=None, max_new_tokens=4, progress=False)

    def points(out):
        recs = [json.loads(line) for line in (out / S.POINTS).read_text().splitlines()]
        return sorted((json.dumps({k: v for k, v in r.items() if k != "decode_seconds"}, sort_keys=True)
                       for r in recs))

    S.run_sweep(str(folder), str(clips), tmp_path / "serial", **kw)
    S.run_sweep(str(folder), str(clips), tmp_path / "ray", executor=cluster, **kw)
    assert points(tmp_path / "ray") == points(tmp_path / "serial") and len(points(tmp_path / "ray")) == 9
    lines = (tmp_path / "ray" / S.POINTS).read_text().splitlines()
    (tmp_path / "ray" / S.POINTS).write_text("\n".join(lines[:-1]) + "\n")  # killed before its last point
    S.run_sweep(str(folder), str(clips), tmp_path / "ray", executor=cluster, **kw)
    assert points(tmp_path / "ray") == points(tmp_path / "serial")



def test_the_sweep_command_refuses_bad_executors_in_one_line(tmp_path):
    from cli_helpers import cli

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    for args, what in ((["--executor", "ray", "--ray-address", f"127.0.0.1:{port}"], "does not answer"),
                       (["--ray-address", f"127.0.0.1:{port}"], "needs --executor ray"),
                       (["--executor", "spark"], "unknown executor")):
        r = cli("analyze", "sensitivity", "whisper-tiny.en", "asterisk", "--out", str(tmp_path / "o"), *args)
        assert r.returncode != 0 and what in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert not (tmp_path / "o").exists()  # refused before any work


def test_ablation_on_ray_writes_the_serial_records(cluster, clips, tmp_path):
    """A layer ablation (re-init to the family's initialization per seed, re-randomize, skip) of a tiny CTC model:
    the same records (timings aside) from this process and from Ray workers that each rebuild model and scorers."""
    from speechprune.analysis.jobs import ablation_job
    from speechprune.models.ctc.family import FAMILY
    from tiny_models import tiny_ctc

    folder = FAMILY.save(tiny_ctc("whisper", "group", seed=1), None, tmp_path / "dense")
    kw = dict(split="all", methods=("reinit", "rerandom", "skip"), seeds=2, metric="both", batch_size=2,
              progress=False)

    def records(out):
        rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
        return sorted(json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True) for r in rows)

    serial = ablation_job(str(folder), str(clips), tmp_path / "serial", **kw)
    remote = ablation_job(str(folder), str(clips), tmp_path / "ray", executor=cluster, **kw)
    assert records(tmp_path / "ray") == records(tmp_path / "serial")
    assert len(records(tmp_path / "serial")) > 2 * 3 * 3  # dense, then layers x methods x metrics (and seeds)
    assert remote["table"] == serial["table"]
