"""Where a job list runs: in this process (``local``, the default, needs nothing) or on a Ray cluster (``ray``).

A *job list* is what a sweep, an ablation or a methods bench produces: many independent items (sensitivity points,
ablation records...) that all need the same expensive state (the dense model, the dev features), then give one JSON
record each. A :class:`Job` says how to build that state (``setup``, once per worker process) and how to run one
item on it (``run``). :func:`run_jobs` runs the items and hands each record to ``on_record`` **in this process**, as
it arrives, so the caller's resumable file (``points.jsonl``, ``records.jsonl``) is written by one writer, point by
point, whichever executor ran the work; a killed run loses only the items in flight, and a rerun skips what is in
the file.

On Ray each worker is an actor that builds the state once and then takes items from a queue
(``ray.util.ActorPool``); each actor reserves ``threads`` CPUs and pins torch (and OpenMP, for what it starts) to
that many threads, so a 2-CPU cluster runs two 1-thread workers and never oversubscribes. ``address`` None starts a
private local cluster with ``workers * threads`` CPUs; an address (``host:port`` or ``auto``) joins a running one
(``ray start --head``). Ray is an optional extra (``speechprune[ray]``).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

from ..errors import ConfigError

EXECUTORS = ("local", "ray")


class Job(Protocol):
    """A picklable description of a job list's shared work (its fields are settings, not models)."""

    def setup(self) -> Any:
        """The state every item needs, built once per worker process."""

    def run(self, state: Any, item: Any) -> dict:
        """One item's record."""


@dataclass(frozen=True)
class Executor:
    """``kind``: local | ray; ``address``: a running Ray cluster to join (None: start a local one); ``workers``: Ray
    actors (default: the cluster's CPUs // threads); ``threads``: compute threads per worker."""

    kind: str = "local"
    address: str | None = None
    workers: int | None = None
    threads: int = 1

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.kind!r}; choose from {', '.join(EXECUTORS)}")
        if self.threads < 1:
            raise ConfigError(f"threads per worker must be >= 1, got {self.threads}")
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.kind == "local" and (self.address or self.workers):
            raise ConfigError(f"{'--ray-address' if self.address else '--ray-workers'} needs --executor ray")

    @property
    def record(self) -> dict:
        """What the run's summary says about where it ran."""
        return {"kind": self.kind, "address": self.address, "workers": self.workers, "threads": self.threads}


EXECUTOR_HELP = "where the job list runs: local (this process) | ray (Ray workers; pip install 'speechprune[ray]')"
RAY_ADDRESS_HELP = "a running Ray cluster (host:port or auto; default: start a local one with this machine's CPUs)"
RAY_WORKERS_HELP = "Ray workers (default: the cluster's CPUs // threads)"


def add_executor_arguments(parser, local_threads: int = 2) -> None:
    """``--executor``, ``--ray-address``, ``--ray-workers`` and ``--threads`` on an ``argparse`` parser (the bench
    scripts' grids; the CLI has the same options). ``--threads`` defaults to ``local_threads`` here, 1 per Ray
    worker."""
    parser.add_argument("--executor", choices=EXECUTORS, default="local", help=EXECUTOR_HELP)
    parser.add_argument("--ray-address", default=None, help=RAY_ADDRESS_HELP)
    parser.add_argument("--ray-workers", type=int, default=None, help=RAY_WORKERS_HELP)
    parser.add_argument("--threads", type=int, default=None,
                        help=f"compute threads (default: {local_threads} here, 1 per Ray worker)")
    parser.set_defaults(local_threads=local_threads)


def executor_from_arguments(args) -> Executor:
    """The :class:`Executor` that :func:`add_executor_arguments`' options name (its ``threads``: per worker, or
    this process's); an address that does not answer fails here, before any work."""
    threads = args.threads or (1 if args.executor == "ray" else args.local_threads)
    where = Executor(args.executor, address=args.ray_address, workers=args.ray_workers, threads=threads)
    if where.address:
        check_address(where.address)
    return where


def run_jobs(job: Job, items: Sequence[Any], executor: Executor, on_record: Callable[[Any, dict], None],
             progress: bool = False, desc: str = "jobs") -> int:
    """Run ``job`` on every item (setup once per worker) and call ``on_record(item, record)`` here as each one
    finishes (in finishing order on Ray, in list order locally); returns how many ran. Nothing is set up when
    ``items`` is empty."""
    items = list(items)
    if not items:
        return 0
    from tqdm import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress, dynamic_ncols=True)
    try:
        if executor.kind == "local":
            state = job.setup()
            for item in items:
                on_record(item, job.run(state, item))
                bar.update()
        else:
            for item, record in _ray_map(job, items, executor):
                on_record(item, record)
                bar.update()
    finally:
        bar.close()
    return len(items)


# ----------------------------------------------------------------------------------------------------------------
# Ray


def pin_threads(threads: int) -> None:
    """Pin this process's compute threads (torch, and OpenMP/MKL for libraries and children started after)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


class _Worker:
    """A Ray actor: the job's state, built once; items run one at a time."""

    def __init__(self, job: Job, threads: int):
        pin_threads(threads)
        self.job, self.state = job, job.setup()

    def run(self, item: Any) -> tuple[Any, dict]:
        return item, self.job.run(self.state, item)


def check_address(address: str, timeout: float = 5.0) -> None:
    """A one-line ConfigError unless ``host:port`` accepts a connection (``auto`` is left to Ray)."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"a Ray address is host:port (or auto), got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"the Ray cluster at {address} does not answer ({exc.strerror or type(exc).__name__}); "
                          f"start one with `ray start --head` or leave --ray-address out for a local one") from None


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'speechprune[ray]'") from None
    return ray


def _init_ray(executor: Executor):
    # keep Ray from rewriting CUDA_VISIBLE_DEVICES for 0-GPU workers (and from warning that it will stop doing so)
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    ray = _ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    if executor.address:
        check_address(executor.address)
        ray.init(address=executor.address, **kwargs)
    else:
        cpus = (executor.workers or max(1, (os.cpu_count() or 1) // executor.threads)) * executor.threads
        # the workers import speechprune from wherever this process did (a source checkout too)
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(_import_paths())}}
        ray.init(num_cpus=cpus, **kwargs)
    return ray


def _import_paths() -> list[str]:
    import speechprune

    here = os.path.dirname(os.path.dirname(os.path.abspath(speechprune.__file__)))
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [here] + [p for p in rest if p != here]


def _ray_map(job: Job, items: list, executor: Executor) -> Iterable[tuple[Any, dict]]:
    ray = _init_ray(executor)
    from ray.util import ActorPool

    cpus = int(ray.cluster_resources().get("CPU", 1))
    n = min(len(items), executor.workers or max(1, cpus // executor.threads))
    actor = ray.remote(num_cpus=executor.threads)(_Worker)
    pool = ActorPool([actor.remote(job, executor.threads) for _ in range(n)])
    try:
        yield from pool.map_unordered(lambda a, item: a.run.remote(item), items)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), Exception) else exc
        raise cause from None
    except ray.exceptions.RayActorError as exc:
        raise ConfigError(f"a Ray worker died ({' '.join(str(exc).split())[:200]})") from None
