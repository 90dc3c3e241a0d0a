"""Inference backends behind one small interface: features in, encoder output, then tokens.

The PyTorch backend of a model comes from its family (``ModelFamily.backend``: ``TorchWhisper`` runs a dense or
pruned Hugging Face Whisper model with the search loops of :mod:`speechprune.models.whisper.decoding`,
``CTCBackend`` a CTC model). ``FasterWhisper`` runs CTranslate2 files through
faster-whisper's engine, the peer every speed claim is measured against; ``OpenVinoWhisper``
(:mod:`.openvino_backend`) OpenVINO GenAI's Whisper pipeline, the second peer (Intel's runtime, from raw audio).
``load_backend`` picks one for a model name or folder (the ONNX backends are :mod:`.onnx_backend` and
:mod:`.ctc_backend`). Each says which front end it reads
(``frontend()``, :mod:`speechprune.data.features`): Whisper's and the CTC family's the same log-mel features
(``FeatureFrontend``), wav2vec2's the normalized waveform (``WaveformFrontend``).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..data.features import FeatureFrontend
from ..errors import ConfigError
from ..io import tree_size_bytes
from ..models.decoding import Decoded, DecodeOptions, DecodeStats
from ..models.structure import EncoderDecoderShape
from ..models.whisper.decoding import WhisperVocab, decoding_prompts

BACKENDS = ("torch", "faster-whisper", "onnx", "openvino")
CT2_COMPUTE_TYPES = ("int8", "float32", "int8_float32", "float16", "int8_float16")
EXPORT_RECORD = "speechprune_export.json"  # written into CTranslate2 and Hugging Face exports by speechprune.export


class Backend(Protocol):
    name: str
    vocab: WhisperVocab  # Whisper's backends; the CTC families have their own vocabularies
    # whether ``options.max_new_tokens`` caps a hypothesis (Whisper's searches): a capped one is a runaway; a CTC
    # search reads every frame and has no cap, so a long transcript is just long
    token_limited: bool

    def frontend(self) -> Any:
        """The front end this backend reads (``data.features``: ``FeatureFrontend(n_mels)`` for Whisper and the CTC
        family, ``WaveformFrontend`` for wav2vec2): ``frontend(audios)`` is what ``encode`` takes,
        ``frontend.lengths(audios)`` its ``frames``. Equal front ends compute the same array."""
        ...

    def encode(self, features: np.ndarray, frames: list[int] | None = None) -> Any:
        """``features`` from this backend's front end (log-mel ``[N, n_mels, 3000]``, a waveform ``[N, samples]``);
        ``frames``: each item's real length in its units (a backend that reads only those, as the CTC families do,
        needs them; Whisper's pay the whole window)."""

    def decode(self, encoded: Any, languages: list[str | None], tasks: list[str | None], options: DecodeOptions) -> Decoded: ...

    def synchronize(self) -> None: ...

    def decode_text(self, tokens: list[int]) -> str: ...

    def flops_record(self, rows: list[dict]) -> dict:
        """Analytic FLOPs of latency-bench rows (``frames``, ``prompt_len``, ``n_tokens``, ``positions``)."""
        ...


def files_digest(paths) -> str:
    """A digest of files' names and bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def _ct2_max_length(new_tokens: int) -> int:
    """CTranslate2's Whisper ``max_length`` yields at most ``max_length // 2`` new tokens (measured on 4.8.5:
    2 gives one token, 4 gives two; faster-whisper's 448 gives the reference implementation's 224)."""
    return min(2 * new_tokens, 448)


class FasterWhisper:
    """CTranslate2 Whisper files run by faster-whisper's engine (``faster_whisper.WhisperModel``)."""

    token_limited = True  # see evaluate.backends.Backend
    name = "faster-whisper"

    def __init__(self, ct2_dir: str | Path, vocab: WhisperVocab, tokenizer, shape: EncoderDecoderShape, params: int,
                 compute_type: str = "int8", threads: int = 0, device: str = "cpu",
                 length_buckets: tuple[int, ...] | None = None):
        from faster_whisper import WhisperModel

        if compute_type not in CT2_COMPUTE_TYPES:
            raise ConfigError(f"unknown compute type {compute_type!r}; choose from {', '.join(CT2_COMPUTE_TYPES)}")
        self.compute_type = compute_type
        self.numerics = {"all": {"dtype": compute_type, "why": "faster-whisper's compute type, as asked"}}
        self.fw = WhisperModel(str(ct2_dir), device=device, compute_type=compute_type, cpu_threads=threads)
        self.engine = self.fw.model  # ctranslate2.models.Whisper
        self.n_mels = int(self.engine.n_mels)
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.name = f"faster-whisper-{compute_type}"
        self.shape, self.params = shape, params
        self._weight_files = list(Path(ct2_dir).glob("model.bin*"))
        self.disk_bytes = tree_size_bytes(self._weight_files)  # as stored (fp16 for the bundled files)
        # a length-adaptive export: CTranslate2's encoder reads any number of frames (its position table is sliced)
        # and its decoder cross-attends to what it gets, so the export reads each batch at its bucket, as torch does
        self.length_buckets = length_buckets
        self.last_positions: int | None = None

    def frontend(self) -> FeatureFrontend:
        """The shared log-mel features (not faster-whisper's own front end: see ``data.features``)."""
        return FeatureFrontend(self.n_mels)

    def fingerprint(self) -> str:
        """A digest of the CTranslate2 weight files and the compute type they run in."""
        return f"{self.compute_type}:{files_digest(self._weight_files)}"

    def synchronize(self) -> None:  # CTranslate2 calls return when done
        pass

    def flops_record(self, rows: list[dict]) -> dict:
        """Analytic FLOPs of bench rows (``models.whisper.flops.bench_flops``)."""
        from ..models.whisper.flops import bench_flops

        return bench_flops(self.shape, rows)

    def encode(self, features: np.ndarray, frames: list[int] | None = None):
        """The engine's encoder output (on its device) for ``features [B, n_mels, 3000]``; a length-adaptive export
        reads the frames of the bucket that holds the longest of ``frames``."""
        import ctranslate2

        from ..models.whisper.lengths import cut_features

        if self.length_buckets is not None:
            features = cut_features(features, frames, self.length_buckets)
        out = self.engine.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), to_cpu=False)
        self.last_positions = int(out.shape[1])
        return out

    def detect_language(self, encoded) -> list[str]:
        return [r[0][0].strip("<|>") for r in self.engine.detect_language(encoded)]

    def decode(self, encoded, languages, tasks, options: DecodeOptions, time_first_step: bool = False) -> Decoded:
        langs, prompts = decoding_prompts(self, encoded, languages, tasks, options)
        kw = dict(beam_size=options.beam_size, patience=1, suppress_blank=True, suppress_tokens=[-1],
                  length_penalty=1.0 if options.length_penalty is None else options.length_penalty)
        stats = DecodeStats()
        if time_first_step:  # one step alone, to split first-step cost from per-token cost like TorchWhisper
            t0 = time.perf_counter()
            self.engine.generate(encoded, prompts, max_length=_ct2_max_length(1), **kw)
            stats.first_step_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        results = self.engine.generate(encoded, prompts, max_length=_ct2_max_length(options.max_new_tokens), **kw)
        total = time.perf_counter() - t0
        tokens = [list(r.sequences_ids[0]) for r in results]
        steps = max(len(t) for t in tokens) + 1  # + the end-of-text step
        if time_first_step:
            stats.later_steps = steps - 1
            stats.later_steps_s = max(total - stats.first_step_s, 0.0)
        else:
            stats.first_step_s, stats.later_steps_s, stats.later_steps = total, 0.0, 0
        return Decoded(tokens, langs, stats)

    def decode_text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()


def load_backend(model: str, backend: str = "torch", compute_type: str = "int8", threads: int = 0,
                 device: str = "cpu", exit_layer: int | None = None, name: str | None = None,
                 numerics: str = "float32", gates: str | Path | None = None) -> Backend:
    """A backend for a bundled model name or a local folder: a Hugging Face Whisper or ``Wav2Vec2ForCTC`` folder
    (dense or pruned) or a CTC model folder (``speechprune train``; ``exit_layer`` reads it at that depth) for
    ``torch`` (the folder's family's backend, ``ModelFamily.backend``), a folder written
    by ``speechprune export --format onnx`` for ``onnx``; ``faster-whisper`` runs the original CTranslate2 files of
    a bundled model, or a folder written by ``--format ct2``; ``openvino`` a bundled or dense Whisper converted
    once into the cache (``compute_type`` ``int8``: int8 weights, float32 where nncf is missing; or ``float32``). ``name``: what tables and benches call it (default:
    the backend's own name). ``numerics`` (torch): ``float32``, ``auto`` (each part in the dtype this CPU runs
    fastest, accuracy checked: ``models.precision``) or a forced dtype; the backend's ``numerics`` says what ran.
    ``gates``: a folder of trained context-aware gates (``speechprune train`` with ``family: gates``) that the torch
    backend of a Whisper model decodes with (``evaluate.gated_backend``)."""
    if numerics != "float32" and backend != "torch":
        raise ConfigError(f"--numerics picks the dtype of the torch backend; {backend} has its own (an ONNX export's "
                          "int8 weights, faster-whisper's compute type, OpenVINO's int8 weights)", model)
    if gates is not None and (backend != "torch" or numerics != "float32" or exit_layer is not None):
        raise ConfigError("--gates runs a Whisper model on the torch backend in float32", model)
    be = _load_backend(model, backend, compute_type, threads, device, exit_layer, numerics)
    if gates is not None:
        from .gated_backend import gated_backend

        be = gated_backend(be, gates, model)
    if name is not None:
        be.name = name
    return be


def _load_backend(model: str, backend: str, compute_type: str, threads: int, device: str,
                  exit_layer: int | None, numerics: str) -> Backend:
    from ..models.family import family_for_folder
    from ..models.registry import BUNDLED_MODELS, ct2_source_dir, resolve_model

    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if exit_layer is not None and backend != "torch":
        raise ConfigError(f"--exit-layer reads a model at a smaller depth in PyTorch, not on the {backend} backend",
                          model)
    if backend == "onnx":
        from .onnx_backend import OnnxWhisper, export_family

        family = export_family(model)
        if family == "ctc":
            from .ctc_backend import OnnxCTC

            return OnnxCTC(model, threads=threads or None, device=device)
        if family == "wav2vec2":
            from .ctc_backend import OnnxWav2Vec2

            return OnnxWav2Vec2(model, threads=threads or None, device=device)
        return OnnxWhisper.from_folder(model, threads=threads or None, device=device)
    if backend == "openvino":
        from .openvino_backend import load_openvino

        return load_openvino(model, threads=threads, precision=compute_type, device=device)
    if backend == "faster-whisper" and model not in BUNDLED_MODELS and (Path(model) / "model.bin").is_file():
        return _exported_ct2(Path(model), compute_type, threads, device)
    folder = resolve_model(model)
    family = family_for_folder(folder)
    if backend == "torch":
        return family.backend(folder, device=device, exit_layer=exit_layer, numerics=numerics)
    if family.name != "whisper":
        raise ConfigError(f"a {family.name} model runs on the torch or onnx (an export) backend, not {backend}", model)
    if model not in BUNDLED_MODELS:
        raise ConfigError(f"--backend faster-whisper needs a bundled model name ({', '.join(BUNDLED_MODELS)})")
    from transformers import WhisperConfig, WhisperTokenizerFast

    from ..models.whisper.shape import whisper_shape_from_config

    tokenizer = WhisperTokenizerFast.from_pretrained(folder)
    shape = whisper_shape_from_config(WhisperConfig.from_pretrained(folder))
    params = _safetensors_params(folder)
    return FasterWhisper(ct2_source_dir(model), WhisperVocab.from_folder(folder), tokenizer, shape, params,
                         compute_type=compute_type, threads=threads, device=device)


def _exported_ct2(folder: Path, compute_type: str, threads: int, device: str) -> "FasterWhisper":
    """A folder written by ``export_ct2``: its record holds the Hugging Face config and the pruned structure, which
    the shape (FLOPs) and parameter count follow; ``generation_config.json`` the special tokens."""
    import json

    from transformers import WhisperConfig, WhisperTokenizerFast

    from ..models.units import STRUCTURE_KEY
    from ..models.whisper.lengths import length_buckets
    from ..models.whisper.shape import whisper_shape_from_config

    try:
        record = json.loads((folder / EXPORT_RECORD).read_text(encoding="utf-8"))
        config = WhisperConfig.from_dict(record["hf_config"])
        setattr(config, STRUCTURE_KEY, record["structure"])
        tokenizer = WhisperTokenizerFast.from_pretrained(folder, local_files_only=True)
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"not a CTranslate2 folder written by speechprune export ({type(e).__name__})",
                          folder) from None
    shape = whisper_shape_from_config(config)
    return FasterWhisper(folder, WhisperVocab.from_folder(folder), tokenizer, shape, record.get("params", 0),
                         compute_type=compute_type, threads=threads, device=device,
                         length_buckets=length_buckets(config))


def _safetensors_params(folder: Path) -> int:
    """Parameter count from the safetensors headers of a folder (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for f in Path(folder).glob("*.safetensors"):
        with safe_open(f, framework="np") as st:
            for k in st.keys():
                total += int(np.prod(st.get_slice(k).get_shape()))
    return total
