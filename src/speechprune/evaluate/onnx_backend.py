"""ONNX Runtime backend: the graphs written by ``export.onnx.export_onnx``, driven by the shared search loops.

Same interface as ``TorchWhisper`` and ``FasterWhisper`` (features in, tokens out). The decoder cache is a plain
holder of ONNX Runtime's numpy arrays; the per-token path is numpy in, numpy out (torch only wraps the logits,
zero-copy, for the search loops). Beam search keeps ONE cross-attention cache per utterance: prefill runs on the
un-repeated prompts and the step graph folds each item's beams into its query positions (see
``models.whisper.graph.attend``), so the prompt pass and the cross-attention reads cost the same as greedy.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from ..errors import ConfigError, ModelError
from ..io import read_json, tree_size_bytes
from ..models.decoding import Decoded, DecodeOptions
from ..models.whisper.decoding import (GraphCache, WhisperVocab, beam_search, decoding_prompts, greedy_search,
                                      reorder_cache)
from ..models.whisper.lengths import check_buckets, cut_features
from .backends import files_digest


FORMAT = 1
MANIFEST = "speechprune_onnx.json"
GRAPHS = ("encoder", "decoder_prefill", "decoder_step")


# --------------------------------------------------------------------------------------------------------------
# Reading an exported folder (written by speechprune.export.onnx)


GRAPHS_OF = {"whisper": GRAPHS, "ctc": ("ctc",), "wav2vec2": ("wav2vec2",)}  # the graphs of each family's export


def read_manifest(folder: str | Path, family: str = "whisper") -> dict:
    """``speechprune_onnx.json`` of an exported folder of ``family``, checked for format and files (``ModelError``
    otherwise)."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise ModelError("ONNX model folder does not exist", folder)
    manifest = read_json(path, f"not an exported ONNX folder (no {MANIFEST})", folder)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("family") != family:
        got = (manifest.get("family"), manifest.get("format")) if isinstance(manifest, dict) else (None, None)
        raise ModelError(f"unsupported ONNX export ({got[0]} format {got[1]!r}; expected {family} format {FORMAT})", path)
    for name in GRAPHS_OF[family]:
        if not (folder / f"{name}.onnx").is_file():
            raise ModelError(f"{name}.onnx is missing", folder)
    return manifest


def export_family(folder: str | Path) -> str | None:
    """The family an exported ONNX folder holds (its manifest's ``family``), or None when it is not one."""
    try:
        manifest = read_json(Path(folder) / MANIFEST)
    except ModelError:
        return None
    return manifest.get("family") if isinstance(manifest, dict) else None


def session_options(threads: int | None):
    """Sequential execution, every graph optimization, ``threads`` intra-op threads (None: ORT's default), and
    worker threads that sleep instead of spinning between ops: on 2 cores shared with other work, spinning made
    tiny.en's int8 encoder 250 instead of 185 ms and a decoder step 6.7 instead of 2.8 ms (2 threads)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or 0
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only
    return so


def providers(device: str) -> list[str]:
    """``["CPUExecutionProvider"]``, or CUDA first for ``device="cuda"`` (``ConfigError`` when ORT lacks it)."""
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("this onnxruntime has no CUDA provider (install onnxruntime-gpu) ")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ConfigError(f"unknown ONNX Runtime device {device!r}; choose cpu or cuda")


def open_sessions(folder: str | Path, threads: int | None = None, device: str = "cpu",
                  graphs: tuple[str, ...] = GRAPHS) -> dict:
    """``{graph name: onnxruntime.InferenceSession}`` for the graphs of an exported folder (Whisper's three)."""
    import onnxruntime as ort

    folder = Path(folder)
    so, prov = session_options(threads), providers(device)
    sessions = {}
    for name in graphs:
        path = folder / f"{name}.onnx"
        try:
            sessions[name] = ort.InferenceSession(str(path), sess_options=so, providers=prov)
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf types
            first = str(e).strip().splitlines()
            raise ModelError(f"cannot load ONNX graph: {type(e).__name__}: {first[0] if first else ''}", path) from e
    return sessions


# --------------------------------------------------------------------------------------------------------------
# Running it


def scatter_logits(logits: np.ndarray, output_vocab: np.ndarray, vocab_size: int) -> np.ndarray:
    """Restricted logits ``[N, V_out]`` placed into a full ``[N, vocab_size]`` row of -inf (column j -> token
    ``output_vocab[j]``), so suppress lists and token ids stay those of the full vocabulary."""
    full = np.full((logits.shape[0], vocab_size), -np.inf, dtype=np.float32)
    full[:, output_vocab] = logits
    return full


def export_numerics(manifest: dict) -> dict:
    """A bench record's ``numerics`` for an ONNX export: float32, or the int8 quantization its export chose for the
    CPU it ran on (the weights' bits and why, from the manifest)."""
    quant = manifest.get("quantization")
    if not quant:
        return {"all": {"dtype": "float32", "why": "not quantized"}}
    int8 = f"int{quant.get('weight_bits', 8)} weights, dynamic int8 activations"
    why = (quant.get("chosen_for") or {}).get("why", "chosen at export")
    if "parts" in quant:  # quantize="auto": each part as the exporting CPU ran it best (times and errors kept)
        return {name: {"dtype": int8 if p["dtype"] == "int8" else "float32",
                       "why": p["why"] + (f"; {why}" if p["dtype"] == "int8" else ""), "ms": p["ms"]}
                for name, p in quant["parts"].items()}
    return {"all": {"dtype": int8, "why": why}}


class OnnxWhisper:
    """A dense or pruned Whisper exported by ``export_onnx``, run by ONNX Runtime."""

    token_limited = True  # see evaluate.backends.Backend

    def __init__(self, folder: str | Path, threads: int | None = None, name: str = "onnx", device: str = "cpu"):
        from transformers import WhisperTokenizerFast

        from ..models.units import LOWRANK_KEY, STRUCTURE_KEY
        from ..models.whisper.shape import whisper_shape_from_config

        folder = Path(folder)
        self.name = name
        self.folder = folder
        self.manifest = read_manifest(folder)
        self.vocab = WhisperVocab.from_folder(folder)
        try:
            self.tokenizer = WhisperTokenizerFast.from_pretrained(folder, local_files_only=True)
        except Exception as e:
            raise ModelError(f"cannot load the tokenizer: {type(e).__name__}", folder) from e
        try:
            cfg = self.manifest["config"]
            self.n_mels = int(self.manifest["n_mels"])
            self.vocab_size = int(cfg["vocab_size"])
            self.max_positions = int(cfg["max_target_positions"])
            self.params = int(self.manifest["params"])
            names = self.manifest["io"]
            self._past_names = names["decoder_step"]["inputs"][2:]  # past self K/V, then cross K/V
            self._n_self = len(names["decoder_step"]["outputs"]) - 1
            output_vocab = self.manifest["output_vocab"]
            config = SimpleNamespace(**cfg, **{STRUCTURE_KEY: self.manifest["structure"],
                                               LOWRANK_KEY: self.manifest.get("lowrank")})
            shape = whisper_shape_from_config(config)
            buckets = self.manifest.get("length_buckets")  # a length-adaptive export (dynamic frames axis)
            self.length_buckets = None if buckets is None else check_buckets(buckets, int(cfg["max_source_positions"]))
        except (KeyError, TypeError, ValueError, ConfigError) as e:
            raise ModelError(f"malformed speechprune_onnx.json ({type(e).__name__}: {e})", folder) from None
        self.last_positions: int | None = None  # encoder positions per item of the last ``encode``
        self.numerics = export_numerics(self.manifest)
        self._output_vocab = None if output_vocab is None else np.asarray(output_vocab, dtype=np.int64)
        # FLOPs follow what runs: the restricted projection has len(output_vocab) rows
        self.shape = shape if output_vocab is None else replace(shape, vocab_size=len(output_vocab))
        self.disk_bytes = tree_size_bytes(folder.glob("*.onnx"))
        s = open_sessions(folder, threads=threads, device=device)
        self._encoder, self._prefill, self._step = s["encoder"], s["decoder_prefill"], s["decoder_step"]

    @classmethod
    def from_folder(cls, folder: str | Path, threads: int | None = None, name: str = "onnx",
                    device: str = "cpu") -> "OnnxWhisper":
        return cls(folder, threads=threads, name=name, device=device)

    def frontend(self):
        """The shared log-mel features (``data.features.FeatureFrontend``)."""
        from ..data.features import FeatureFrontend

        return FeatureFrontend(self.n_mels)

    def fingerprint(self) -> str:
        """A digest of the exported graphs (weights included) and the manifest."""

        return files_digest([*self.folder.glob("*.onnx*"), self.folder / MANIFEST])

    def synchronize(self) -> None:  # InferenceSession.run returns when done
        pass

    def flops_record(self, rows: list[dict]) -> dict:
        """Analytic FLOPs of bench rows (``models.whisper.flops.bench_flops``)."""
        from ..models.whisper.flops import bench_flops

        return bench_flops(self.shape, rows)

    def encode(self, features: np.ndarray, frames: list[int] | None = None) -> np.ndarray:
        """Encoder states of ``features [B, n_mels, 3000]``; a length-adaptive export reads only the frames of the
        bucket that holds the longest of ``frames`` (as ``TorchWhisper`` does; ``None``: the full window)."""
        if features.ndim != 3 or features.shape[1] != self.n_mels:
            raise ConfigError(f"features must be [batch, {self.n_mels}, frames], got {list(features.shape)}")
        if self.length_buckets is not None:
            features = cut_features(features, frames, self.length_buckets)
        (hidden,) = self._encoder.run(None, {"input_features": np.ascontiguousarray(features, dtype=np.float32)})
        self.last_positions = int(hidden.shape[1])
        return hidden

    def _logits(self, logits: np.ndarray) -> torch.Tensor:
        if self._output_vocab is not None:
            logits = scatter_logits(logits, self._output_vocab, self.vocab_size)
        return torch.from_numpy(logits)

    def _stepper(self, encoded: np.ndarray):
        def step(ids: torch.Tensor, cache: GraphCache) -> torch.Tensor:
            rows = ids.cpu().numpy()
            if cache.position == 0:  # the prompt: once per item, then repeated for its beams
                first = self._prefill.run(None, {"input_ids": np.ascontiguousarray(rows[:: cache.group]),
                                                 "encoder_hidden": encoded})
                logits, self_kv = first[0], first[1 : 1 + self._n_self]
                if cache.group > 1:
                    logits = np.repeat(logits, cache.group, axis=0)
                    self_kv = [np.repeat(a, cache.group, axis=0) for a in self_kv]
                cache.self_kv, cache.cross_kv = self_kv, first[1 + self._n_self :]
                cache.position = rows.shape[1]
                return self._logits(logits)
            if cache.position >= self.max_positions:
                raise ConfigError(f"decoding reached the model's {self.max_positions} positions")
            feed = {"input_ids": rows, "position": np.array([cache.position], dtype=np.int64)}
            feed.update(zip(self._past_names, cache.self_kv + cache.cross_kv))
            out = self._step.run(None, feed)
            cache.self_kv = out[1:]
            cache.position += 1
            return self._logits(out[0])

        return step

    def detect_language(self, encoded: np.ndarray) -> list[str]:
        """The most likely language token after ``<|startoftranscript|>``, per item."""
        ids = torch.full((encoded.shape[0], 1), self.vocab.sot, dtype=torch.long)
        logits = self._stepper(encoded)(ids, GraphCache(group=1))
        codes = list(self.vocab.lang_to_id)
        best = logits[:, [self.vocab.lang_to_id[c] for c in codes]].argmax(dim=-1).tolist()
        return [codes[i] for i in best]

    def decode(self, encoded: np.ndarray, languages, tasks, options: DecodeOptions) -> Decoded:
        langs, prompts = decoding_prompts(self, encoded, languages, tasks, options)
        k = options.beam_size
        step = self._stepper(encoded)
        # shallow fusion as in the PyTorch backend: the same search with the LM's term (greedy: one beam)
        fusion = options.lm.whisper_scorer(options.lm_weight, options.lm_bonus, self.vocab.eot) if options.fusion \
            else None
        if k == 1 and fusion is None:
            tokens, stats = greedy_search(step, lambda: GraphCache(group=1), prompts, self.vocab,
                                          options.max_new_tokens)
        else:
            tokens, stats = beam_search(step, lambda: GraphCache(group=k), reorder_cache, prompts, self.vocab, k,
                                        options.max_new_tokens, options.length_penalty, fusion=fusion)
        return Decoded(tokens, langs, stats)

    def decode_text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

