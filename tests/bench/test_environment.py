"""The machine record every bench and report carries: instruction sets, and the kernels each backend chose."""

from __future__ import annotations

import pytest

from speechprune.bench.environment import (backend_kernels, cpu_isa, environment, isa_summary, machine_line,
                                           mlas_kernels, parse_probe)

ZEN3 = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni"
ZEN4 = ZEN3 + " avx512f avx512dq avx512bw avx512vl avx512_bf16 avx512_vnni avx512vbmi"
SAPPHIRE_RAPIDS = ZEN4 + " avx_vnni amx_bf16 amx_tile amx_int8 avx512_fp16"


@pytest.mark.parametrize("flags,summary,int8", [
    (ZEN3, "AVX2", "AVX2 (u8s8 through int16, may saturate)"),
    (ZEN4, "AVX-512 (VNNI, BF16)", "AVX512-VNNI"),
    (SAPPHIRE_RAPIDS, "AVX-512 (VNNI, BF16, AMX)", "AMX"),
    ("fpu sse sse2", "no AVX2", "SSE"),
])
def test_instruction_sets_and_the_mlas_kernels_they_select(flags, summary, int8):
    isa = cpu_isa(flags)
    assert isa_summary(isa) == summary
    assert mlas_kernels(isa)["int8_gemm"] == int8
    assert isa["avx512_vnni"] == ("avx512_vnni" in flags) and isa["amx_tile"] == ("amx_tile" in flags)


INTEL_PROBE = """MKL_VERBOSE oneMKL 2024.0 Update 2 Product build 20240605 for Intel(R) 64 architecture Intel(R) Advanced Vector Extensions 512 (Intel(R) AVX-512) with support for INT8, BF16, FP16 (limited) instructions, and Intel(R) Advanced Matrix Extensions (Intel(R) AMX) with INT8 and BF16, Lnx 2.10GHz lp64 gnu_thread
MKL_VERBOSE SGEMM(N,N,64,64,64,0x7ffd,0x55ce,64,0x55ce,64,0x7ffd,0x55ce,64) 16.07ms CNR:OFF Dyn:1 FastMM:1 TID:0  NThr:1
onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80afa71049cd69a3df32adcccb623b12cd7baa22)
onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with float16, Intel DL Boost and bfloat16 support and Intel AMX with bfloat16 and 8-bit integer support
onednn_verbose,v1,primitive,exec,cpu,matmul,brg_matmul:avx512_core_amx,undef,src:bf16::blocked:ab::f0 wei:bf16::blocked:ba::f0 dst:bf16::blocked:ab::f0,attr-scratchpad:user,,64x64:64x64,0.61
onednn_verbose,v1,primitive,exec,cpu,convolution,brgconv_1d:avx512_core,forward_training,src:f32::blocked:abc::f0 wei:f32::blocked:abc::f0,,alg:convolution_direct,mb1_ic80oc384_iw3000ow3000kw3sw1dw0pw1,2.1
[2026-12-07 05:04:53.631] [ctranslate2] [thread 8113] [info] CPU: GenuineIntel (SSE4.1=true, AVX=true, AVX2=true, AVX512=true)
[2026-12-07 05:04:53.632] [ctranslate2] [thread 8113] [info]  - Selected ISA: AVX512
[2026-12-07 05:04:53.632] [ctranslate2] [thread 8113] [info]  - Use Intel MKL: true
[2026-12-07 05:04:53.632] [ctranslate2] [thread 8113] [info]  - SGEMM backend: MKL (packed: false)
[2026-12-07 05:04:53.632] [ctranslate2] [thread 8113] [info]  - GEMM_S8 backend: MKL (packed: false, u8s8 preferred: true)
[2026-12-07 05:04:54.080] [ctranslate2] [thread 8113] [info] Loaded model /x on device cpu:0
PROBE {"aten_cpu_capability": "AVX512", "float32_matmul_precision": "highest"}
"""


def test_the_probe_output_becomes_a_kernel_record():
    rec = parse_probe(INTEL_PROBE)
    t, ct2 = rec["torch"], rec["ctranslate2"]
    assert t["aten_cpu_capability"] == "AVX512" and t["float32_matmul"] == "MKL SGEMM"
    assert "Intel(R) AMX" in t["mkl_version"] and "AMX" in t["onednn_isa"]
    assert t["onednn_kernels"] == {"matmul bf16": "brg_matmul:avx512_core_amx", "convolution f32": "brgconv_1d:avx512_core"}
    assert ct2 == {"cpu": "GenuineIntel (SSE4.1=true, AVX=true, AVX2=true, AVX512=true)", "selected_isa": "AVX512",
                   "use_intel_mkl": "true", "sgemm_backend": "MKL (packed: false)",
                   "gemm_s8_backend": "MKL (packed: false, u8s8 preferred: true)"}
    env = {"cpu_model": "Intel Xeon", "cpu_isa_summary": "AVX-512 (VNNI, BF16, AMX)", "kernels": {**rec, "onnxruntime": mlas_kernels(cpu_isa(SAPPHIRE_RAPIDS))}}
    line = machine_line(env)
    assert "Intel Xeon [AVX-512 (VNNI, BF16, AMX)]" in line and "brg_matmul:avx512_core_amx" in line
    assert "int8 AMX" in line and "ISA AVX512" in line


def test_this_machine_is_probed_for_real():
    env = environment(threads=1)
    k = env["kernels"]
    assert "probe_error" not in k, k.get("probe_error")
    assert env["cpu_isa_summary"] == isa_summary(env["cpu_isa"])
    # ATen dispatches to the widest vector unit it has kernels for (unless ATEN_CPU_CAPABILITY lowers it)
    assert k["torch"]["aten_cpu_capability"] in ("AVX512", "AVX2", "DEFAULT", "ZVECTOR", "NEON", "SVE256")
    assert k["torch"]["onednn_isa"] and k["torch"]["float32_matmul"] == "MKL SGEMM"  # x86 wheels: MKL, oneDNN
    if env["cpu_isa"]["avx512_bf16"] or env["cpu_isa"]["amx_bf16"]:  # elsewhere ATen's own kernel runs bf16
        assert k["torch"]["onednn_kernels"]["matmul bf16"]
    assert k["ctranslate2"]["selected_isa"] in ("AVX512", "AVX2", "AVX", "NEON", "GENERIC")
    assert k["onnxruntime"]["int8_gemm"] == mlas_kernels(env["cpu_isa"])["int8_gemm"]
    assert backend_kernels() is k  # probed once per process


def test_the_main_report_names_the_machine_and_its_kernels(tmp_path):
    from speechprune.report.summary import write_report

    env = {"cpu_model": "AMD EPYC", "cpu_isa_summary": "AVX2", "threads": 2, "versions": {},
           "kernels": {"torch": {"aten_cpu_capability": "AVX2"}, "ctranslate2": {"selected_isa": "AVX2"},
                       "onnxruntime": mlas_kernels(cpu_isa(ZEN3))}}
    bench = {"backends": {"torch": {"latency_ms_median": 300.0, "encoder_ms_median": 250.0, "decoder_ms_per_token": 12.0,
                                    "rtf_median": 0.1, "flops_encoder": 3.7e10, "params": 3.8e7, "disk_bytes": 1.5e8}},
             "latency_ratio": {"torch": 1.0}, "environment": env}
    md = write_report(tmp_path, bench, {"torch": {"wer": 0.05, "ood": {"wer": 0.0841, "macro_wer": 0.1213}}}, "t").read_text()
    assert "| torch | 5.00 | 8.41 (12.13) |" in md  # out of domain beside in domain
    assert "Machine and kernels: AMD EPYC [AVX2]; torch: ATen AVX2" in md and "int8 AVX2 (u8s8" in md


def test_int8_saturates_where_u8s8_sums_in_int16():
    from speechprune.bench.environment import cpu_isa, int8_saturates

    assert int8_saturates(cpu_isa("fma avx2"))
    assert int8_saturates(cpu_isa("avx2 avx512f avx512bw"))  # AVX-512 core without VNNI: vpmaddubsw
    assert not int8_saturates(cpu_isa("avx2 avx_vnni"))
    assert not int8_saturates(cpu_isa("avx2 avx512f avx512bw avx512_vnni"))
    assert not int8_saturates(cpu_isa("avx2 avx512f amx_tile amx_int8"))
