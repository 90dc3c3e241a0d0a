"""ONNX export of dense and pruned Whisper models (the folder's reader is ``evaluate.onnx_backend``).

An exported folder holds three graphs traced from ``models.whisper.graph`` (``encoder.onnx``,
``decoder_prefill.onnx``, ``decoder_step.onnx``; dynamic batch and sequence axes), the tokenizer, processor and
generation-config files of the source folder, and ``speechprune_onnx.json``: format version, tensor names, the
per-layer structure, ``n_mels``, ``output_vocab``, quantization and source. It is written to a temporary sibling
folder, checked against PyTorch there, and renamed into place: a failed export leaves nothing behind.

Quantization is ONNX Runtime's dynamic quantization: MatMul weights to int8, one scale per output column
(activations quantized on the fly to uint8: "U8S8", the format ORT recommends on x86-64), and the token embedding
table (Gather) to int8 so the decoder graphs shrink 4x. The machine chooses the weights' range: U8S8 saturates on
CPUs without VNNI or AMX (AVX2, AVX-512 core: pairs of products summed in int16; tiny.en's logits then moved by up
to 4.4 on an AVX2 EPYC), so there the weights use 7 bits (ORT's ``reduce_range``), which cannot overflow; the
manifest records the choice, the CPU's int8 kernel and why (an export made on one CPU and run on another keeps its
choice: 7-bit weights are safe everywhere, 8-bit ones only where VNNI or AMX runs them). Attention products have no constant operand and stay
float32. On 80 real dev prompts tiny.en's greedy transcripts stay token-identical to float32 PyTorch on 72 (69
with one scale per tensor, which is no faster); the embedding quantization changes none of them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from speechprune.errors import ConfigError, ModelError
from speechprune.evaluate.onnx_backend import FORMAT, GRAPHS, MANIFEST, open_sessions

GENERATION_CONFIG = "generation_config.json"
# Dynamic quantization: not Conv: ORT's ConvInteger made tiny.en's int8 encoder slower (182 vs 146 ms per window,
# one thread) than float convolutions in the stem.
QUANT_OP_TYPES = ("MatMul", "Gather")
# Graphs must reproduce PyTorch to this, relative to 1 + the largest logit magnitude: float32 to rounding, int8
# loosely (real tiny.en: 0.04) so that only a broken quantization fails.
CHECK_TOLERANCE = {False: 1e-3, True: 0.2}
SOURCE_RECORD = "speechprune_source.json"  # a bundled model's provenance (weight checksums), kept when present


def versions() -> dict[str, str | None]:
    out = {}
    for lib in ("speechprune", "torch", "transformers", "onnx", "onnxruntime"):
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            out[lib] = None
    return out


def check_opset(opset: int) -> None:
    """A one-line ``ConfigError`` for an ONNX opset the exports do not support."""
    if not 14 <= opset <= 21:
        raise ConfigError(f"ONNX opset {opset} is not supported (choose 14..21)")


def trace_to_onnx(module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                   dynamic_axes: dict[str, dict[int, str]], opset: int, ort_ops: bool = False) -> None:
    """TorchScript-exporter trace: the graphs have Python-level control flow only (present blocks), fixed at trace.
    ``ort_ops``: the graph uses ONNX Runtime's ``com.microsoft`` operators."""
    import torch

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape arithmetic and the exporter's deprecation notice
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True, dynamo=False,
                          custom_opsets={"com.microsoft": 1} if ort_ops else None)


def _export_graphs(graphs, shape: dict, out: Path, opset: int,
                   length_adaptive: bool = False) -> dict[str, dict[str, list[str]]]:
    """Trace the three graphs into ``out``; returns their input and output names. ``length_adaptive``: the encoder
    gets a dynamic frames axis (it reads a length bucket's frames, not always the 30 s window)."""
    import torch

    d, t, n_mels = shape["d_model"], shape["max_source_positions"], shape["num_mel_bins"]
    io = graphs.io
    g = torch.Generator().manual_seed(0)
    names: dict[str, dict[str, list[str]]] = {}

    feats = torch.randn(2, n_mels, 2 * t, generator=g)
    names["encoder"] = {"inputs": ["input_features"], "outputs": ["encoder_hidden"]}
    axes = {"input_features": {0: "batch"}, "encoder_hidden": {0: "batch"}}
    if length_adaptive:
        axes = {"input_features": {0: "batch", 2: "frames"}, "encoder_hidden": {0: "batch", 1: "positions"}}
    trace_to_onnx(graphs.encoder, (feats,), out / "encoder.onnx", ["input_features"], ["encoder_hidden"], axes, opset,
                   ort_ops=True)

    # no size of 1 gets baked in: prefill traced on 2 utterances and a 3-token prompt, the step on N = 4 rows over
    # B = 2 cross-attention rows (G = 2 beams share one)
    enc = torch.randn(2, t, d, generator=g)
    ids = torch.randint(0, 50, (4, 3), generator=g)
    inputs, outputs = io.prefill()
    axes = {"input_ids": {0: "rows", 1: "prompt"}, "encoder_hidden": {0: "batch", 1: "frames"}, "logits": {0: "rows"}}
    axes.update({n: {0: "rows", 2: "prompt"} for n in io.self_cache})
    axes.update({n: {0: "batch", 2: "frames"} for n in io.cross_cache})
    names["decoder_prefill"] = {"inputs": inputs, "outputs": outputs}
    trace_to_onnx(graphs.prefill, (ids[::2], enc), out / "decoder_prefill.onnx", inputs, outputs, axes, opset)

    with torch.no_grad():
        first = graphs.prefill(ids, enc[:2].repeat_interleave(2, dim=0))
    past = list(first[1 : 1 + len(io.self_cache)])
    cross = [c[::2] for c in first[1 + len(io.self_cache) :]]
    inputs, outputs = io.step()
    axes = {"input_ids": {0: "rows"}, "logits": {0: "rows"}}
    axes.update({n: {0: "rows", 2: "past"} for n in io.past_self_cache})
    axes.update({n: {0: "batch", 2: "frames"} for n in io.cross_cache})
    axes.update({n: {0: "rows", 2: "length"} for n in io.self_cache})
    names["decoder_step"] = {"inputs": inputs, "outputs": outputs}
    step_args = (ids[:, :1], torch.tensor([3]), *past, *cross)
    trace_to_onnx(graphs.step, step_args, out / "decoder_step.onnx", inputs, outputs, axes, opset)
    return names


class _NoPreprocessHint(logging.Filter):
    """Drops the quantizer's root-logger advice to run ``quant_pre_process`` first: its symbolic shape inference
    fails on the prefill graph, and ORT optimizes every graph when a session opens anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def quantize_dynamic_graph(src: Path, dst: Path, per_channel: bool, reduce_range: bool,
                           exclude: Sequence[str] = (), include: Sequence[str] | None = None) -> None:
    """ONNX Runtime's dynamic int8 quantization of the graph ``src`` into ``dst``: every MatMul and Gather but the
    nodes named in ``exclude`` (or only those in ``include``)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint = _NoPreprocessHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=reduce_range,
                         op_types_to_quantize=list(QUANT_OP_TYPES), nodes_to_exclude=list(exclude),
                         nodes_to_quantize=None if include is None else list(include))
    finally:
        logging.getLogger().removeFilter(hint)


def quantize_graphs(folder: Path, per_channel: bool, graphs: tuple[str, ...] = GRAPHS,
                    isa: dict[str, bool] | None = None, parts: dict | None = None) -> dict:
    """Dynamic int8 quantization of ``graphs`` in ``folder``, in place, with 7-bit weights where the CPU (``isa``,
    default this machine's) would saturate 8-bit ones; returns what was done and why. ``parts`` (Whisper's graphs,
    from ``onnx_numerics.probe_parts``) keeps the parts it chose float32 in float32: the encoder graph, the decoder
    graphs' body or their vocabulary projection."""
    from ..bench.environment import cpu_isa, int8_saturates, isa_summary, mlas_kernels
    from .onnx_numerics import vocabulary_nodes

    isa = cpu_isa() if isa is None else isa
    reduce_range = int8_saturates(isa)
    for name in graphs:
        src, dst = folder / f"{name}.onnx", folder / f"{name}.int8.onnx"
        exclude: list[str] = []
        include: list[str] | None = None
        if parts is not None:
            if name == "encoder":
                if parts["encoder"]["dtype"] != "int8":
                    continue
            else:
                body, proj = parts["decoder"]["dtype"], parts["vocabulary"]["dtype"]
                if body != "int8" and proj != "int8":
                    continue
                if body != proj:
                    vocab = vocabulary_nodes(src)
                    if not vocab:  # an empty include list would quantize everything
                        raise ModelError("cannot tell the vocabulary projection apart in this graph", src)
                    exclude, include = (vocab, None) if proj != "int8" else ([], vocab)
        quantize_dynamic_graph(src, dst, per_channel, reduce_range, exclude, include)
        os.replace(dst, src)
    kernel = mlas_kernels(isa)["int8_gemm"]
    return {"method": "dynamic", "weight_type": "QInt8", "activation_type": "QUInt8", "per_channel": per_channel,
            "op_types": list(QUANT_OP_TYPES), "weight_bits": 7 if reduce_range else 8, "reduce_range": reduce_range,
            "chosen_for": {"cpu": isa_summary(isa), "int8_kernel": kernel,
                           "why": ("u8s8 sums pairs of products in int16 on this CPU and would saturate 8-bit "
                                   "weights" if reduce_range else "VNNI/AMX accumulate u8s8 in int32: full 8-bit "
                                   "weights")},
            **({"parts": parts} if parts is not None else {})}


def quantize_mode(quantize: bool | str) -> str | None:
    """``None`` (float32), ``"int8"`` (every part) or ``"auto"`` (each part as this CPU runs it best) from an
    export's ``quantize`` (``True`` is ``"int8"``); anything else is a one-line ``ConfigError``."""
    mode = {False: None, True: "int8"}[quantize] if isinstance(quantize, bool) else quantize
    if mode not in (None, "int8", "auto"):
        raise ConfigError(f"ONNX export quantizes to int8 or auto (int8 where this CPU runs a part faster), "
                          f"not {quantize!r}")
    return mode


def _read_json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def check_against_torch(graphs, sessions: dict, prompt: list[int], n_mels: int, n_frames: int) -> dict[str, float]:
    """Largest absolute differences between ONNX Runtime and the PyTorch graphs on a random window: encoder output,
    prefill logits (``prompt`` + 2 tokens) and one step's logits (the step fed ORT's own caches)."""
    import torch

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, n_mels, n_frames)).astype(np.float32)
    ids = np.array([prompt + [int(t) for t in rng.integers(0, 50, 2)]], dtype=np.int64)
    nxt = np.array([[int(rng.integers(0, 50))]], dtype=np.int64)
    io = graphs.io
    with torch.no_grad():
        ref_enc = graphs.encoder(torch.from_numpy(feats))
        ref_first = graphs.prefill(torch.from_numpy(ids), ref_enc)
        ref_step = graphs.step(torch.from_numpy(nxt), torch.tensor([ids.shape[1]]), *ref_first[1:])
    (enc,) = sessions["encoder"].run(None, {"input_features": feats})
    first = sessions["decoder_prefill"].run(None, {"input_ids": ids, "encoder_hidden": enc})
    feed = {"input_ids": nxt, "position": np.array([ids.shape[1]], dtype=np.int64)}
    feed.update(zip(io.past_self_cache + io.cross_cache, first[1:]))
    step = sessions["decoder_step"].run(None, feed)
    scale = 1.0 + float(ref_first[0].abs().max())
    return {
        "encoder_max_abs_diff": _max_abs(enc, ref_enc),
        "prefill_logits_max_abs_diff": _max_abs(first[0], ref_first[0]),
        "step_logits_max_abs_diff": _max_abs(step[0], ref_step[0]),
        "self_cache_max_abs_diff": max(_max_abs(a, b) for a, b in zip(step[1:], ref_step[1:])),
        "logits_scale": scale,
    }


def export_onnx(model_dir: str | Path, out_dir: str | Path, *, quantize: bool | str = False,
                output_vocab: Sequence[int] | None = None, opset: int = 17, per_channel: bool = True,
                overwrite: bool = False) -> dict:
    """Export a (dense or pruned) Whisper folder to ONNX Runtime graphs in ``out_dir``; returns the manifest
    (``speechprune_onnx.json``) with the parity check against PyTorch (max abs differences) under ``"check"``.
    A length-adaptive folder (``models.whisper.lengths``) gets an encoder with a dynamic frames axis, its buckets
    under ``"length_buckets"`` and a parity check at each of its buckets but the full window (``"check"``) too
    (``"check_buckets"``).

    ``output_vocab`` restricts the output projection to those token ids (it must contain end-of-text);
    ``quantize`` applies dynamic int8 quantization to every graph (``True`` or ``"int8"``; ``per_channel``: one
    scale per output column) or, ``"auto"``, to each part (encoder, decoder, vocabulary projection) that this CPU
    runs faster in int8 within ``onnx_numerics.MAX_INT8_ERROR`` (measured here; the manifest records the times).
    An existing non-empty ``out_dir`` is refused unless ``overwrite``. float32 graphs that disagree with PyTorch
    raise ``ModelError``; int8 graphs only when far off (a broken quantization).
    """
    import torch

    from speechprune.io import check_output_dir, staged_dir
    from speechprune.models.adapters import adapter_for
    from speechprune.models.checkpoint import PROCESSOR_FILES
    from speechprune.models.lowrank import lowrank_ranks
    from speechprune.models.whisper.decoding import WhisperVocab
    from speechprune.models.whisper.graph import whisper_graphs
    from speechprune.models.whisper.lengths import FRAMES_PER_POSITION, length_buckets
    from speechprune.models.whisper.load import load_whisper

    source, out = Path(model_dir), Path(out_dir)
    mode = quantize_mode(quantize)
    check_opset(opset)
    check_output_dir(out, overwrite, source=source)
    model, _ = load_whisper(source)
    if not (source / GENERATION_CONFIG).is_file() or not (source / "tokenizer.json").is_file():
        raise ModelError(f"model folder lacks {GENERATION_CONFIG} or tokenizer.json, which decoding needs", source)
    vocab = WhisperVocab.from_folder(source)
    graphs = whisper_graphs(model, output_vocab)
    ids = graphs.output_vocab
    if ids is not None and vocab.eot not in ids:
        raise ConfigError(f"output_vocab lacks end-of-text ({vocab.eot}): decoding could never stop")
    cfg = model.config
    shape = {"d_model": int(cfg.d_model), "num_mel_bins": int(cfg.num_mel_bins),
             "max_source_positions": int(cfg.max_source_positions),
             "max_target_positions": int(cfg.max_target_positions), "vocab_size": int(cfg.vocab_size)}

    buckets = length_buckets(cfg)
    prompt = vocab.prompt("en" if vocab.multilingual else None, "transcribe")
    with staged_dir(out) as tmp:
        names = _export_graphs(graphs, shape, tmp, opset, length_adaptive=buckets is not None)
        quantization = None
        if mode == "auto":
            from ..bench.environment import cpu_isa, int8_saturates
            from .onnx_numerics import probe_parts

            reduce_range = int8_saturates(cpu_isa())
            parts = probe_parts(
                tmp, lambda src, dst, exclude, include=None: quantize_dynamic_graph(
                    src, dst, per_channel, reduce_range, exclude, include),
                graphs.io, prompt, shape["num_mel_bins"],
                # a length-adaptive encoder is timed at its first bucket, where most clips fall
                FRAMES_PER_POSITION * (buckets[0] if buckets else shape["max_source_positions"]))
            # the probe left its chosen encoder and step graphs in place; the prefill graph follows the step's choice
            quantization = quantize_graphs(tmp, per_channel, graphs=("decoder_prefill",), parts=parts)
        elif mode == "int8":
            quantization = quantize_graphs(tmp, per_channel)
        quantized = quantization is not None and (
            "parts" not in quantization or any(p["dtype"] == "int8" for p in quantization["parts"].values()))
        for name in (*PROCESSOR_FILES, GENERATION_CONFIG):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        sessions = open_sessions(tmp, threads=None)
        with torch.inference_mode():
            check = check_against_torch(graphs, sessions, prompt, shape["num_mel_bins"],
                                        2 * shape["max_source_positions"])
            # traced at the full window, so checked at every other bucket too (a baked-in length would fail there)
            bucket_checks = {str(b): check_against_torch(graphs, sessions, prompt, shape["num_mel_bins"],
                                                         FRAMES_PER_POSITION * b) for b in (buckets or ())[:-1]}
        for c in (check, *bucket_checks.values()):
            worst = max(c["encoder_max_abs_diff"], c["prefill_logits_max_abs_diff"], c["step_logits_max_abs_diff"])
            if worst > CHECK_TOLERANCE[quantized] * c["logits_scale"]:
                raise ModelError(f"exported {'int8' if quantized else 'float32'} ONNX graphs disagree with PyTorch "
                                 f"(max abs difference {worst:.3g})", source)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "family": "whisper",
            "files": {name: f"{name}.onnx" for name in GRAPHS},
            "io": names,
            "decoder_self_layers": list(graphs.io.self_layers),
            "decoder_cross_layers": list(graphs.io.cross_layers),
            "config": shape,
            "structure": adapter_for(model).structure(model),
            "lowrank": lowrank_ranks(model),  # {site key: rank} of factorized projections (FLOPs), {} if none
            "n_mels": shape["num_mel_bins"],
            "params": sum(p.numel() for p in model.parameters()),
            "output_vocab": ids,
            "quantized": quantized,
            "quantization": quantization,
            "opset": opset,
            "source": {"model_dir": str(source.resolve()), "versions": versions(),
                       "record": _read_json_or_none(source / SOURCE_RECORD)},
            "check": check,
        }
        if buckets is not None:  # stock exports keep today's manifest
            manifest["length_buckets"] = list(buckets)
            manifest["check_buckets"] = bucket_checks
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        del sessions
    return manifest
