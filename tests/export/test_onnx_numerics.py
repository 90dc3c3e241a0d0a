"""Per-part numerics of a Whisper ONNX export: the choice (pure), the vocabulary projection found in a graph, the
parts quantized as chosen, and ``quantize="auto"`` end to end on a tiny random Whisper."""

from __future__ import annotations

import shutil

import pytest

from speechprune.errors import ConfigError
from speechprune.export.onnx import export_onnx, quantize_graphs, quantize_mode
from speechprune.export.onnx_numerics import MAX_INT8_ERROR, PARTS, choose_variant, vocabulary_nodes

from tiny_models import build_tiny

from export.test_onnx import save_tiny_folder

F = ("float32", "float32")


def test_int8_is_chosen_only_where_faster_by_the_margin_and_accurate():
    assert choose_variant({"float32": 100.0, "int8": 40.0}, {"int8": 0.03}, "float32")[0] == "int8"
    dtype, why = choose_variant({"float32": 100.0, "int8": 95.0}, {"int8": 0.01}, "float32")
    assert dtype == "float32" and "margin" in why
    dtype, why = choose_variant({"float32": 100.0, "int8": 40.0}, {"int8": 2 * MAX_INT8_ERROR}, "float32")
    assert dtype == "float32" and "rejected for accuracy: int8" in why
    # the decoder: the fastest accurate pair wins, an inaccurate faster one does not
    ms = {F: 10.0, ("int8", "int8"): 4.0, ("int8", "float32"): 6.0, ("float32", "int8"): 7.0}
    errors = {("int8", "int8"): 0.5, ("int8", "float32"): 0.02, ("float32", "int8"): 0.03}
    assert choose_variant(ms, errors, F)[0] == ("int8", "float32")


def test_only_int8_or_auto_quantize():
    assert quantize_mode(False) is None and quantize_mode(True) == "int8" and quantize_mode("auto") == "auto"
    with pytest.raises(ConfigError, match="not 'int4'"):
        quantize_mode("int4")


@pytest.fixture(scope="module")
def float_export(tmp_path_factory):
    root = tmp_path_factory.mktemp("numerics")
    src = save_tiny_folder(build_tiny("whisper", seed=3), root / "src")
    export_onnx(src, root / "fp32")
    return src, root / "fp32"


def _integer_nodes(path) -> set[str]:
    import onnx

    return {n.name for n in onnx.load(str(path)).graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")}


def _float_matmuls(path) -> set[str]:
    import onnx

    return {n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"}


def test_the_vocabulary_projection_is_found_and_each_part_quantized_as_chosen(float_export, tmp_path):
    _, fp32 = float_export
    (vocab,) = vocabulary_nodes(fp32 / "decoder_step.onnx")
    assert vocab in _float_matmuls(fp32 / "decoder_step.onnx")
    assert vocabulary_nodes(fp32 / "decoder_prefill.onnx")  # the prefill graph has its own projection
    for body, proj in (("int8", "float32"), ("float32", "int8")):
        folder = tmp_path / f"{body}-{proj}"
        shutil.copytree(fp32, folder)
        parts = {"encoder": {"dtype": "float32"}, "decoder": {"dtype": body}, "vocabulary": {"dtype": proj}}
        record = quantize_graphs(folder, per_channel=True, parts=parts)
        assert record["parts"] == parts
        assert not _integer_nodes(folder / "encoder.onnx")  # the float32 encoder left as it was
        step = folder / "decoder_step.onnx"
        if proj == "float32":  # every decoder MatMul quantized but the projection
            assert vocab in _float_matmuls(step) and len(_float_matmuls(step)) < len(_float_matmuls(
                fp32 / "decoder_step.onnx"))
        else:  # only the projection quantized
            assert vocab not in _float_matmuls(step)
            assert _float_matmuls(step) == _float_matmuls(fp32 / "decoder_step.onnx") - {vocab}


def test_auto_export_records_each_parts_choice_and_stays_checked(float_export, tmp_path):
    src, _ = float_export
    manifest = export_onnx(src, tmp_path / "auto", quantize="auto")  # parity against PyTorch checked inside
    parts = manifest["quantization"]["parts"]
    assert set(parts) == set(PARTS)
    for name, p in parts.items():
        assert p["dtype"] in ("float32", "int8") and p["why"]
        assert set(p["ms"]) >= ({"float32", "int8"} if name == "encoder" else {"decoder float32, vocabulary float32"})
    assert manifest["quantized"] == any(p["dtype"] == "int8" for p in parts.values())
    assert bool(_integer_nodes(tmp_path / "auto" / "encoder.onnx")) == (parts["encoder"]["dtype"] == "int8")
    any_decoder = "int8" in (parts["decoder"]["dtype"], parts["vocabulary"]["dtype"])
    for graph in ("decoder_step.onnx", "decoder_prefill.onnx"):  # the probe's step and the prefill, alike
        assert bool(_integer_nodes(tmp_path / "auto" / graph)) == any_decoder, graph
    assert not list((tmp_path / "auto").glob(".numerics-probe*"))
    from speechprune.evaluate.onnx_backend import export_numerics

    assert set(export_numerics(manifest)) == set(PARTS)  # a bench record says what each part runs in
