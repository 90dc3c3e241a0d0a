"""What a measurement ran on, and what else the machine was doing meanwhile."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil

LIBRARIES = ("speechprune", "torch", "transformers", "numpy", "ctranslate2", "faster-whisper", "onnxruntime")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(threads: int | None = None) -> dict:
    """CPU, threads, library versions and git revision."""
    import torch

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = version(lib)
        except PackageNotFoundError:
            versions[lib] = None
    env = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_revision": _git_revision(),
    }
    if torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(0)
    return env


class ResourceMonitor:
    """Samples this process's resident memory and the other processes' CPU load in a background thread.

    ``other_cpu_load`` is the machine's busy CPU time minus this process's, per logical CPU and second of
    wall time: 0.0 on a quiet machine, 1.0 when something else keeps every core busy.
    """

    def __init__(self, interval_s: float = 0.02):
        self.interval_s = interval_s
        self._proc = psutil.Process()
        self._stop = threading.Event()
        self.peak_rss_bytes = 0
        self.start_rss_bytes = 0
        self.other_cpu_load: float | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_rss_bytes = max(self.peak_rss_bytes, self._proc.memory_info().rss)
            self._stop.wait(self.interval_s)

    @staticmethod
    def _busy(t) -> float:
        return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    def __enter__(self) -> "ResourceMonitor":
        self.start_rss_bytes = self.peak_rss_bytes = self._proc.memory_info().rss
        self._t0 = time.perf_counter()
        self._sys0 = self._busy(psutil.cpu_times())
        c = self._proc.cpu_times()
        self._own0 = c.user + c.system
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        wall = time.perf_counter() - self._t0
        c = self._proc.cpu_times()
        other = (self._busy(psutil.cpu_times()) - self._sys0) - (c.user + c.system - self._own0)
        self.other_cpu_load = max(other, 0.0) / max(wall * (os.cpu_count() or 1), 1e-9)
        self.peak_rss_bytes = max(self.peak_rss_bytes, self._proc.memory_info().rss)
