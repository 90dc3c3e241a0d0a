"""OpenVINO GenAI's Whisper pipeline (``openvino_genai.WhisperPipeline``), the peer an Intel CPU user would pick,
beside faster-whisper in the side-by-side bench.

The pipeline reads a folder of OpenVINO IR files, which :func:`convert_openvino` writes once per model and
precision into ``cache_dir()/openvino/<model>-<precision>/`` (atomically, ``io.staged_dir``), without
``optimum-intel`` (whose releases pin an older transformers and torch than this package's):

* ``openvino_encoder_model.xml``: the Hugging Face encoder, ``input_features [N, n_mels, 3000]`` to
  ``last_hidden_state``;
* ``openvino_decoder_model.xml``: a *stateful* decoder, the layout GenAI's ``WhisperStatefullDecoder`` reads (inputs
  ``input_ids``, ``encoder_hidden_states``, ``beam_idx``; output ``logits``). It is traced from a small re-statement
  of the Hugging Face decoder with explicit self-attention K/V inputs and outputs (the same weights, the same
  operations), which are then hidden as model state (``apply_make_stateful_transformation``, reordered by
  ``beam_idx``); the cross-attention K/V, computed from ``encoder_hidden_states`` alone, become state initialized on
  the first step of each generation (a ``ReadValue`` whose initializer is that projection), so later steps read them
  instead of projecting the encoder output again;
* ``openvino_tokenizer.xml`` / ``openvino_detokenizer.xml`` from ``openvino_tokenizers.convert_tokenizer``;
* ``config.json``, ``generation_config.json`` (the special tokens, suppression lists) and
  ``preprocessor_config.json`` (GenAI's own log-mel front end reads it).

``int8`` compresses the linear layers' weights to 8 bits (``nncf.compress_weights``, INT8_ASYM: per-output-channel
scale and zero point, activations stay float32, as optimum-intel's default for small models); ``float32`` keeps
them. The CPU plugin then picks its inference precision itself (bf16 where the CPU has AMX/AVX512-BF16, f32 on an
AVX2-only one); the backend reads it back (``INFERENCE_PRECISION_HINT``) into ``numerics``.

The pipeline decodes from raw audio with its own front end, so this backend's front end is the raw waveform
(``WaveformFrontend(normalize=False)``); ``encode`` only keeps each clip's samples and ``decode`` runs the whole
pipeline, whose ``PerfMetrics`` split the time: its feature extraction and encoder durations are reported in
``last_metrics`` and folded into the decoder's first step (``DecodeStats``), so a bench row's decoder time is the
pipeline's end-to-end time.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..data.features import WaveformFrontend
from ..errors import ConfigError, ModelError
from ..io import atomic_write_json, locked, staged_dir, tree_size_bytes
from ..models.decoding import Decoded, DecodeOptions, DecodeStats
from ..paths import cache_dir

PRECISIONS = ("int8", "float32")
RECORD = "speechprune_openvino.json"
CONVERSION_FORMAT = 1  # raise when the folder's layout or the conversion changes: older folders are rebuilt
REQUIRED_FILES = ("openvino_encoder_model.xml", "openvino_decoder_model.xml", "openvino_tokenizer.xml",
                  "openvino_detokenizer.xml", "config.json", "generation_config.json", "preprocessor_config.json")


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("openvino", "openvino-genai", "openvino-tokenizers", "nncf"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _require_openvino() -> None:
    v = _versions()
    missing = [p for p in ("openvino", "openvino-genai", "openvino-tokenizers") if v[p] is None]
    if missing:
        raise ConfigError(f"--backend openvino needs {', '.join(missing)}: pip install 'speechprune[openvino]'")


def int8_available() -> bool:
    """Whether int8 weight compression can run here (``nncf`` installed)."""
    return _versions()["nncf"] is not None


# ---------------------------------------------------------------------------------------------------------------
# conversion


def _decoder_module(model):
    """A ``torch.nn.Module`` over ``model``'s decoder (the same parameters) with the self-attention cache as explicit
    tensors: ``forward(input_ids [B, T], encoder_hidden_states [B, S, d], *past)`` with ``past`` the keys and values
    of each layer ``[B, heads, P, head_dim]`` (P may be 0), returning ``(logits [B, T, V], *present)``."""
    import torch
    import torch.nn.functional as F

    class Decoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.dec = m.model.decoder
            self.proj = m.proj_out

        @staticmethod
        def _split(x, heads):  # [B, L, h*dh] -> [B, h, L, dh]
            b, n = x.shape[0], x.shape[1]
            return x.view(b, n, heads, -1).transpose(1, 2)

        def forward(self, input_ids, encoder_hidden_states, *past):
            dec = self.dec
            t = input_ids.shape[1]
            p = past[0].shape[2]
            pos = torch.arange(t, device=input_ids.device) + p
            x = dec.embed_tokens(input_ids) * dec.embed_scale + dec.embed_positions.weight[pos]
            # query i (absolute position p + i) sees keys 0 .. p + i
            keys = torch.arange(t + p, device=input_ids.device)
            mask = keys[None, :] <= pos[:, None]
            present = []
            for i, layer in enumerate(dec.layers):
                sa = layer.self_attn
                h = layer.self_attn_layer_norm(x)
                q = self._split(sa.q_proj(h), sa.num_heads)
                k = torch.cat([past[2 * i], self._split(sa.k_proj(h), sa.num_heads)], dim=2)
                v = torch.cat([past[2 * i + 1], self._split(sa.v_proj(h), sa.num_heads)], dim=2)
                present += [k, v]
                a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=sa.scaling)
                x = x + sa.out_proj(a.transpose(1, 2).reshape(x.shape[0], t, -1))
                ca = layer.encoder_attn
                h = layer.encoder_attn_layer_norm(x)
                q = self._split(ca.q_proj(h), ca.num_heads)
                ck = self._split(ca.k_proj(encoder_hidden_states), ca.num_heads)
                cv = self._split(ca.v_proj(encoder_hidden_states), ca.num_heads)
                a = F.scaled_dot_product_attention(q, ck, cv, scale=ca.scaling)
                x = x + ca.out_proj(a.transpose(1, 2).reshape(x.shape[0], t, -1))
                h = layer.final_layer_norm(x)
                x = x + layer.fc2(layer.activation_fn(layer.fc1(h)))
            x = dec.layer_norm(x)
            return (self.proj(x), *present)

    return Decoder(model).eval()


def _encoder_module(model):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.enc = m.model.encoder

        def forward(self, input_features):
            return self.enc(input_features).last_hidden_state

    return Encoder(model).eval()


def _make_stateful_decoder(ov_model, n_layers: int):
    """Hide the self-attention K/V inputs/outputs as state reordered by a new ``beam_idx`` input, and keep the
    cross-attention K/V (the subgraph fed by ``encoder_hidden_states`` alone) as state computed on the first step
    after a reset: the stateful layout GenAI's Whisper decoder reads."""
    import openvino as ov
    from openvino import opset13
    from openvino._offline_transformations import apply_make_stateful_transformation

    kv_in = [f"past_key_values.{i}.decoder.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    kv_out = [f"present.{i}.decoder.{kv}" for i in range(n_layers) for kv in ("key", "value")]
    # beam_idx: a Gather over the batch axis of every cached K/V, applied before the step reads it
    batch = ov_model.input("input_ids").get_partial_shape()[0]
    beam_idx = opset13.parameter(ov.PartialShape([batch]), ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    ov_model.add_parameters([beam_idx])
    for name in kv_in:
        port = ov_model.input(name)
        consumers = port.get_target_inputs()
        gather = opset13.gather(port, beam_idx, opset13.constant(0))
        for c in consumers:
            c.replace_source_output(gather.output(0))
    ov_model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(ov_model, dict(zip(kv_in, kv_out)))
    # after a reset the self-attention state is empty: zeros of shape [batch, heads, 0, head_dim]
    ids = ov_model.input("input_ids")
    b = opset13.gather(opset13.shape_of(ids, output_type="i64"), opset13.constant([0]), opset13.constant(0))
    for op in ov_model.get_ops():
        if op.get_type_name() == "ReadValue":
            dims = [d.get_min_length() for d in op.get_output_partial_shape(0)]
            parts = [b] + [opset13.constant(np.array([d], dtype=np.int64)) for d in dims[1:]]
            op.set_arguments([opset13.broadcast(opset13.constant(0.0, dtype=op.get_output_element_type(0)),
                                                opset13.concat(parts, axis=0))])
    ov_model.validate_nodes_and_infer_types()
    _cache_cross_attention(ov_model)
    return ov_model


def _cache_cross_attention(ov_model) -> None:
    """Insert a ReadValue/Assign pair after each edge of the subgraph that depends on ``encoder_hidden_states`` only
    (the cross-attention K/V projections), its initializer being that edge: computed once per generation."""
    import openvino as ov
    from openvino.op.util import Variable, VariableInfo

    def inputs_of(node):
        return {v.get_node() for v in node.input_values()}

    def dependents(sources):
        out = set(sources)
        for node in ov_model.get_ordered_ops():
            if inputs_of(node) & out:
                out.add(node)
        return out

    def consumers(node):
        return {i.get_node() for o in node.outputs() for i in o.get_target_inputs()}

    source = ov_model.input("encoder_hidden_states").get_node()
    others = set(ov_model.get_parameters()) | {op for op in ov_model.get_ops()
                                                  if op.get_type_name() in ("ReadValue", "ShapeOf")}
    others.discard(source)
    other_nodes = dependents(others)
    only = dependents([source]) - other_nodes
    edges = [n for n in only if consumers(n) & other_nodes]
    for node in edges:
        for output in node.outputs():
            targets = [t for t in output.get_target_inputs() if t.get_node() in other_nodes]
            if not targets:
                continue
            name = output.get_any_name() if output.get_names() else f"{node.get_friendly_name()}.{output.get_index()}"
            if not output.get_names():
                output.get_tensor().set_names({name})
            info = VariableInfo()
            info.data_shape, info.data_type = output.get_partial_shape(), output.get_element_type()
            info.variable_id = f"cross.{name}"
            var = Variable(info)
            read = ov.opset13.read_value(output, var)
            for t in targets:
                t.replace_source_output(read.output(0))
            ov_model.add_variables([var])
            ov_model.add_sinks([ov.opset13.assign(read, var)])
    ov_model.validate_nodes_and_infer_types()


def _check_dense_whisper(folder: Path) -> dict:
    from ..models.units import LOWRANK_KEY, STRUCTURE_KEY
    from ..models.whisper.lengths import LENGTH_KEY

    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ModelError("not a Whisper model folder (no readable config.json)", folder) from None
    if not isinstance(cfg, dict) or cfg.get("model_type") != "whisper":
        raise ConfigError("--backend openvino runs a Whisper model; this folder is not one", folder)
    if any(cfg.get(k) is not None for k in (STRUCTURE_KEY, LOWRANK_KEY, LENGTH_KEY)):
        raise ConfigError("--backend openvino converts a dense full-window Whisper only (this one is pruned, low-rank "
                          "or length-adaptive)", folder)
    return cfg


def convert_openvino(folder: str | Path, out: str | Path, precision: str = "int8") -> Path:
    """Convert the dense Hugging Face Whisper ``folder`` into the OpenVINO GenAI layout in ``out`` (written
    atomically); ``precision`` ``int8`` (weights, needs ``nncf``) or ``float32``."""
    import openvino as ov
    import torch
    from openvino_tokenizers import convert_tokenizer
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    _require_openvino()
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown OpenVINO precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "int8" and not int8_available():
        raise ConfigError("int8 weight compression needs nncf (pip install 'speechprune[openvino]')")
    folder, out = Path(folder), Path(out)
    cfg = _check_dense_whisper(folder)
    try:
        model = WhisperForConditionalGeneration.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa",
                                                                local_files_only=True, trust_remote_code=False).eval()
        tokenizer = WhisperTokenizerFast.from_pretrained(folder, local_files_only=True)
    except Exception as e:
        raise ModelError(f"cannot load Whisper model: {type(e).__name__}", folder) from None
    n_mels, n_layers = int(cfg["num_mel_bins"]), len(model.model.decoder.layers)
    frames = 2 * int(cfg.get("max_source_positions", 1500))
    t0 = time.perf_counter()
    with torch.no_grad():
        enc = ov.convert_model(_encoder_module(model), example_input=torch.zeros(1, n_mels, frames),
                               input=[ov.PartialShape([-1, n_mels, frames])])
        enc.inputs[0].get_tensor().set_names({"input_features"})
        enc.outputs[0].get_tensor().set_names({"last_hidden_state"})
        heads = [(layer.self_attn.num_heads, layer.self_attn.head_dim) for layer in model.model.decoder.layers]
        d = int(cfg["d_model"])
        past = [torch.zeros(1, h, 2, dh) for h, dh in heads for _ in range(2)]
        names = ["input_ids", "encoder_hidden_states"] + [f"past_key_values.{i}.decoder.{kv}" for i in range(n_layers)
                                                          for kv in ("key", "value")]
        shapes = [ov.PartialShape([-1, -1]), ov.PartialShape([-1, -1, d])] + [
            ov.PartialShape([-1, h, -1, dh]) for h, dh in heads for _ in range(2)]
        example = (torch.full((1, 3), int(cfg.get("decoder_start_token_id", 0)), dtype=torch.int64),
                   torch.zeros(1, frames // 2, d), *past)
        dec = ov.convert_model(_decoder_module(model), example_input=example,
                               input=[(s, t) for s, t in zip(shapes, [ov.Type.i64] + [ov.Type.f32] * (len(names) - 1))])
    for port, name in zip(dec.inputs, names):
        port.get_tensor().set_names({name})
    dec.outputs[0].get_tensor().set_names({"logits"})
    for port, name in zip(dec.outputs[1:], [f"present.{i}.decoder.{kv}" for i in range(n_layers)
                                           for kv in ("key", "value")]):
        port.get_tensor().set_names({name})
    dec = _make_stateful_decoder(dec, n_layers)
    if precision == "int8":
        import logging

        import nncf

        nncf.set_log_level(logging.ERROR)  # its progress tables
        enc = nncf.compress_weights(enc, mode=nncf.CompressWeightsMode.INT8_ASYM)
        dec = nncf.compress_weights(dec, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov_tok, ov_detok = convert_tokenizer(tokenizer, with_detokenizer=True)
    fe = _feature_extractor(folder, n_mels)
    with staged_dir(out) as tmp:
        ov.save_model(enc, tmp / "openvino_encoder_model.xml", compress_to_fp16=False)
        ov.save_model(dec, tmp / "openvino_decoder_model.xml", compress_to_fp16=False)
        ov.save_model(ov_tok, tmp / "openvino_tokenizer.xml")
        ov.save_model(ov_detok, tmp / "openvino_detokenizer.xml")
        for f in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
            if (folder / f).is_file():
                shutil.copyfile(folder / f, tmp / f)
        WhisperFeatureExtractor(**fe).to_json_file(tmp / "preprocessor_config.json")
        atomic_write_json(tmp / RECORD, {
            "conversion_format": CONVERSION_FORMAT, "source": str(folder), "precision": precision,
            "weights": "int8 (nncf INT8_ASYM, per output channel)" if precision == "int8" else "float32",
            "params": sum(p.numel() for p in model.parameters()), "versions": _versions(), "seconds": round(time.perf_counter() - t0, 1)})
    return out


def _feature_extractor(folder: Path, n_mels: int) -> dict:
    """The folder's feature extractor settings (``preprocessor_config.json``, or transformers 5's
    ``processor_config.json``), else Whisper's defaults for ``n_mels`` bins."""
    for name in ("preprocessor_config.json", "processor_config.json"):
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        data = data.get("feature_extractor", data) if isinstance(data, dict) else {}
        keep = ("feature_size", "sampling_rate", "hop_length", "chunk_length", "n_fft", "padding_value")
        if isinstance(data, dict) and "feature_size" in data:
            return {k: data[k] for k in keep if k in data}
    return {"feature_size": n_mels}


def _folder_ok(out: Path, precision: str) -> bool:
    try:
        rec = json.loads((out / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (isinstance(rec, dict) and rec.get("conversion_format") == CONVERSION_FORMAT
            and rec.get("precision") == precision and rec.get("versions", {}).get("openvino") == _versions()["openvino"]
            and all((out / f).is_file() for f in REQUIRED_FILES))


def openvino_dir(model: str, precision: str | None = None) -> Path:
    """The OpenVINO GenAI folder of a bundled model name or a dense Whisper folder, converted on first use into
    ``cache_dir()/openvino/<name>-<precision>/``. ``precision`` None: int8 where nncf is installed, else float32."""
    from ..models.registry import BUNDLED_MODELS, resolve_model

    _require_openvino()
    precision = precision or ("int8" if int8_available() else "float32")
    path = Path(model).expanduser()
    if model not in BUNDLED_MODELS and not path.is_dir():
        raise ModelError("no such model folder or bundled model name", model)
    folder = resolve_model(model)
    _check_dense_whisper(folder)
    if model in BUNDLED_MODELS:
        key = model
    else:
        from .backends import files_digest

        key = f"{folder.name}-{files_digest(list(folder.glob('*.safetensors')) + [folder / 'config.json'])[:12]}"
    out = cache_dir() / "openvino" / f"{key}-{precision}"
    with locked(out):  # a second process waits for the first's conversion instead of making its own
        if not _folder_ok(out, precision):
            convert_openvino(folder, out, precision)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the backend


class OpenVinoWhisper:
    """A Whisper model run end to end by ``openvino_genai.WhisperPipeline`` on the CPU: greedy, no timestamps, the
    language the pipeline's generation config fixes (English for an English-only model)."""

    token_limited = True  # see evaluate.backends.Backend
    name = "openvino"

    def __init__(self, ov_dir: str | Path, threads: int = 0, source: str | Path | None = None):
        _require_openvino()
        import openvino_genai
        from transformers import WhisperConfig

        from ..models.whisper.decoding import WhisperVocab
        from ..models.whisper.shape import whisper_shape_from_config

        ov_dir = Path(ov_dir)
        missing = [f for f in REQUIRED_FILES if not (ov_dir / f).is_file()]
        if missing:
            raise ModelError(f"not an OpenVINO Whisper folder (missing {', '.join(missing)})", ov_dir)
        record = json.loads((ov_dir / RECORD).read_text(encoding="utf-8")) if (ov_dir / RECORD).is_file() else {}
        props = {"INFERENCE_NUM_THREADS": int(threads)} if threads else {}
        try:
            self.pipe = openvino_genai.WhisperPipeline(str(ov_dir), "CPU", **props)
        except Exception as e:
            raise ModelError(f"OpenVINO GenAI cannot load it: {str(e).strip().splitlines()[0][:200]}", ov_dir) from None
        config = WhisperConfig.from_pretrained(ov_dir, local_files_only=True)
        self.vocab = WhisperVocab.from_folder(ov_dir)
        self.detokenizer = self.pipe.get_tokenizer()
        self.shape = whisper_shape_from_config(config)
        self.params = int(record.get("params") or 0) or None
        self.ov_dir, self.source = ov_dir, source
        self.threads = threads
        self.weight_precision = record.get("precision", "unknown")
        self._weight_files = sorted(ov_dir.glob("openvino_*_model.bin"))
        self.disk_bytes = tree_size_bytes(self._weight_files)
        self.numerics = self._numerics(record)
        self.name = f"openvino-{self.weight_precision}"
        self.last_positions: int | None = None
        self.last_metrics: list[dict] = []

    def _numerics(self, record: dict) -> dict:
        """What ran: the weights' storage (the conversion) and the CPU plugin's inference precision on this CPU."""
        import openvino as ov

        try:
            hint = ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT")
            hint = hint.to_string() if hasattr(hint, "to_string") else str(hint)
        except Exception:  # noqa: BLE001 - an older plugin without the property
            hint = "unknown"
        weights = record.get("weights", self.weight_precision)
        why = (f"weights {weights} (conversion); activations in the CPU plugin's default inference precision "
               f"{hint} on this CPU (bf16 only where it has AMX or AVX512-BF16)")
        return {"all": {"dtype": f"{self.weight_precision} weights, {hint} compute", "why": why,
                        "versions": record.get("versions", _versions())}}

    def frontend(self) -> WaveformFrontend:
        """The raw 16 kHz waveform: the pipeline computes its own log-mel features (GenAI's C++ extractor)."""
        return WaveformFrontend(normalize=False)

    def fingerprint(self) -> str:
        from .backends import files_digest

        return f"openvino-{self.weight_precision}:{files_digest(self._weight_files)}"

    def synchronize(self) -> None:
        pass

    def flops_record(self, rows: list[dict]) -> dict:
        from ..models.whisper.flops import bench_flops

        return bench_flops(self.shape, [{**r, "positions": None} for r in rows])

    def encode(self, features: np.ndarray, frames: list[int] | None = None) -> list[np.ndarray]:
        """Each clip's own samples (the batch's waveform rows cut to ``frames``); the pipeline encodes in ``decode``."""
        frames = frames if frames is not None else [features.shape[1]] * features.shape[0]
        self.last_positions = None
        return [np.ascontiguousarray(row[:n], dtype=np.float32) for row, n in zip(features, frames)]

    def decode(self, encoded: list[np.ndarray], languages, tasks, options: DecodeOptions, **_) -> Decoded:
        if options.beam_size != 1 or options.fusion:
            raise ConfigError("--backend openvino decodes greedily without an LM (beam size 1)")
        for lang, task in zip(languages, tasks):
            if (task or options.task) != "transcribe":
                raise ConfigError("--backend openvino transcribes only (no translate task)")
            want = lang or options.language
            if not self.vocab.lang_to_id and want not in (None, "en"):
                raise ConfigError(f"an English-only model cannot transcribe {want!r}")
        config = self.pipe.get_generation_config()
        config.max_new_tokens = options.max_new_tokens
        config.num_beams = 1
        config.do_sample = False
        config.return_timestamps = False
        if self.vocab.lang_to_id:  # GenAI refuses a task for an English-only model
            config.task = "transcribe"
        tokens, langs, self.last_metrics = [], [], []
        stats = DecodeStats()
        first, later, steps = 0.0, 0.0, 0
        for audio, lang in zip(encoded, languages):
            want = lang or options.language
            if self.vocab.lang_to_id:
                config.language = f"<|{want}|>" if want else None
            streamer = _collector()
            t0 = time.perf_counter()
            result = self.pipe.generate(audio, config, streamer)
            total = time.perf_counter() - t0
            ids = [t for t in streamer.ids if t != self.vocab.eot]
            tokens.append(ids)
            langs.append((getattr(result, "language", None) or want or "en").strip("<|>") if self.vocab.lang_to_id
                         else "en")
            pm = result.perf_metrics
            m = _metrics(pm, total)
            self.last_metrics.append(m)
            # the first step: the pipeline's front end, its encoder and its first decoder step (its time to first
            # token); the rest of the wall time: the later steps (sampling, detokenization included)
            ttft = min(m["ttft_ms"] / 1e3, total) if m["ttft_ms"] is not None else total
            first += ttft
            later += total - ttft
            steps += len(ids)
        stats.first_step_s, stats.later_steps_s, stats.later_steps = first, later, steps
        return Decoded(tokens, langs, stats)

    def decode_text(self, tokens: list[int]) -> str:
        return self.detokenizer.decode([int(t) for t in tokens if t < self.vocab.eot]).strip()


def _metrics(pm, total_s: float) -> dict:
    """The durations GenAI's ``WhisperPerfMetrics`` gives (ms), with the wall time measured around ``generate``."""
    def mean(getter):
        try:
            return float(getter().mean)
        except Exception:  # noqa: BLE001 - a metric the pipeline did not fill
            return None

    return {
        "wall_ms": total_s * 1e3,
        "generate_ms": mean(pm.get_generate_duration),
        "features_ms": mean(pm.get_features_extraction_duration),
        "encoder_ms": mean(pm.get_encode_inference_duration),
        "decoder_ms": mean(pm.get_decode_inference_duration),
        "ttft_ms": mean(pm.get_ttft),
        "tpot_ms": mean(pm.get_tpot),
        "n_tokens": int(pm.get_num_generated_tokens()),
    }


_COLLECTOR = None


def _collector():
    """A fresh token collector (its class built once openvino_genai is imported)."""
    global _COLLECTOR
    if _COLLECTOR is None:
        _COLLECTOR = _make_collector()
    return _COLLECTOR()


def _make_collector():
    import openvino_genai

    class TokenCollector(openvino_genai.StreamerBase):
        """Collects the generated token ids as the pipeline streams them (its results give text only)."""

        def __init__(self):
            super().__init__()
            self.ids: list[int] = []

        def write(self, token):
            self.ids.extend([int(t) for t in token] if isinstance(token, (list, tuple)) else [int(token)])
            return openvino_genai.StreamingStatus.RUNNING

        def end(self):
            pass

    return TokenCollector


def load_openvino(model: str, threads: int = 0, precision: str | None = "int8", device: str = "cpu") -> OpenVinoWhisper:
    """``--backend openvino``: a bundled Whisper name or a dense Whisper folder (converted once into the cache), or
    a folder that already holds the OpenVINO GenAI layout. ``precision``: ``int8`` weights (float32, said in
    ``numerics``, where nncf is not installed), ``float32``, or None (int8 where it can)."""
    _require_openvino()
    if device != "cpu":
        raise ConfigError(f"--backend openvino runs on the CPU here, not {device!r}")
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"OpenVINO weights are int8 or float32, not {precision!r}")
    fallback = None
    if precision == "int8" and not int8_available():
        precision, fallback = "float32", "int8 weight compression needs nncf, which is not installed: float32 weights"
    path = Path(model).expanduser()
    if path.is_dir() and (path / "openvino_decoder_model.xml").is_file():
        be = OpenVinoWhisper(path, threads=threads, source=path)
    else:
        be = OpenVinoWhisper(openvino_dir(model, precision), threads=threads, source=model)
    if fallback:
        be.numerics["all"]["why"] = f"{fallback}; {be.numerics['all']['why']}"
    return be
