"""Inference backends behind one small interface: features in, encoder output, then tokens.

``TorchWhisper`` runs a (dense or pruned) Hugging Face Whisper model with the search loops of
:mod:`.decoding`. ``FasterWhisper`` runs CTranslate2 files through faster-whisper's engine, the peer every
speed claim is measured against. Both take the same log-mel features (:class:`speechprune.data.features.FeatureFrontend`).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import ConfigError
from ..io import tree_size_bytes
from ..models.structure import EncoderDecoderShape
from ..models.whisper_graph import whisper_graphs
from .decoding import (DecodeOptions, DecodeStats, GraphCache, WhisperVocab, beam_search, greedy_search,
                       reorder_cache)

BACKENDS = ("torch", "faster-whisper", "onnx")
CT2_COMPUTE_TYPES = ("int8", "float32", "int8_float32", "float16", "int8_float16")
EXPORT_RECORD = "speechprune_export.json"  # written into CTranslate2 and Hugging Face exports by speechprune.export


@dataclass
class Decoded:
    tokens: list[list[int]]  # generated tokens per item, without prompt and end-of-text
    languages: list[str | None]
    stats: DecodeStats


class Backend(Protocol):
    name: str
    n_mels: int
    vocab: WhisperVocab

    def encode(self, features: np.ndarray, frames: list[int] | None = None) -> Any:
        """``features`` ``[N, n_mels, 3000]`` from the shared front end; ``frames``: each item's real frames (a
        backend that reads only those, as the CTC family does, needs them; Whisper's pay the whole window)."""

    def decode(self, encoded: Any, languages: list[str | None], tasks: list[str | None], options: DecodeOptions) -> Decoded: ...

    def synchronize(self) -> None: ...

    def decode_text(self, tokens: list[int]) -> str: ...


def _languages_for(vocab: WhisperVocab, languages: list[str | None], options: DecodeOptions) -> list[str | None]:
    """Fill in each item's language: its own, else the option's; English-only models are always 'en'."""
    if not vocab.multilingual:
        return ["en" if (lang or options.language) in (None, "en") else (lang or options.language) for lang in languages]
    return [lang or options.language for lang in languages]


def decoding_prompts(backend, encoded, languages, tasks, options: DecodeOptions) -> tuple[list, list[list[int]]]:
    """Each item's language (its own, the option's, or detected by ``backend.detect_language`` on a multilingual
    model) and its decoder prompt; shared by every backend so they decode the same prompts."""
    langs = _languages_for(backend.vocab, list(languages), options)
    if backend.vocab.multilingual and any(lang is None for lang in langs):
        detected = backend.detect_language(encoded)
        langs = [lang or d for lang, d in zip(langs, detected)]
    return langs, [backend.vocab.prompt(lang, task or options.task) for lang, task in zip(langs, tasks)]


def files_digest(paths) -> str:
    """A digest of files' names and bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        h.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


def state_digest(model: torch.nn.Module, salt: str = "") -> str:
    """A digest of a model's tensors (names, dtypes, shapes, values), and of ``salt`` (how it is run)."""
    h = hashlib.sha256(salt.encode())
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


class TorchWhisper:
    """A Hugging Face ``WhisperForConditionalGeneration`` (dense or pruned), on any torch device."""

    def __init__(self, model, tokenizer, vocab: WhisperVocab, device: str | torch.device = "cpu", name: str = "torch"):
        self.name = name  # several models can be benchmarked side by side under different names
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.device = torch.device(device)
        self.n_mels = int(model.config.num_mel_bins)
        self._encoder = model.get_encoder()
        self.max_positions = int(model.config.max_target_positions)
        self._dtype = next(model.parameters()).dtype
        from ..models.whisper import whisper_shape

        self.shape = whisper_shape(model)
        # unique parameters (the tied output projection counts once)
        self.params = sum(p.numel() for p in model.parameters())
        self.disk_bytes: int | None = None  # set by from_folder: the weight files' size

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", name: str = "torch") -> "TorchWhisper":
        from ..models.whisper import load_whisper

        model, processor = load_whisper(folder, device=device)
        be = cls(model, processor.tokenizer, WhisperVocab.from_folder(folder), device=device, name=name)
        be.disk_bytes = tree_size_bytes(Path(folder).glob("*.safetensors"))
        return be

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fingerprint(self) -> str:
        """What an evaluation run is pinned to: :func:`state_digest` of the model."""
        return state_digest(self.model)

    @torch.inference_mode()
    def encode(self, features: np.ndarray, frames: list[int] | None = None) -> torch.Tensor:
        x = torch.from_numpy(features).to(self.device, self._dtype)
        return self._encoder(input_features=x).last_hidden_state

    def _stepper(self, enc: torch.Tensor):
        """One search step through the split decoder graphs (``models.whisper_graph``: plain torch over this model's
        own parameters, the same code the ONNX export traces, so PyTorch and ONNX decode alike by construction)
        with a ``GraphCache``: a prompt pass, then one token per call. ``enc`` holds one row per utterance; the
        cache's ``group`` rows (beams) share it, so beam search keeps one cross-attention cache per utterance.
        tiny.en, 2 threads: 8.7 ms per token (transformers' decoder forward with its cache: 9.2 ms), of which the
        fp32 51864-way output projection alone takes 5.0 ms (80 MB of weights read per token)."""
        graphs = whisper_graphs(self.model)
        prefill, step_graph, n_self = graphs.prefill, graphs.step, len(graphs.io.self_cache)

        @torch.inference_mode()
        def step(ids: torch.Tensor, cache: GraphCache) -> torch.Tensor:
            if cache.position == 0:  # the prompt: once per item, then repeated for its beams
                out = prefill(ids[:: cache.group], enc)
                logits, self_kv = out[0], list(out[1 : 1 + n_self])
                if cache.group > 1:
                    logits = logits.repeat_interleave(cache.group, dim=0)
                    self_kv = [a.repeat_interleave(cache.group, dim=0) for a in self_kv]
                cache.self_kv, cache.cross_kv, cache.position = self_kv, list(out[1 + n_self :]), ids.shape[1]
                return logits.float()
            if cache.position >= self.max_positions:
                raise ConfigError(f"decoding reached the model's {self.max_positions} positions")
            position = torch.tensor([cache.position], dtype=torch.long, device=ids.device)
            out = step_graph(ids, position, *cache.self_kv, *cache.cross_kv)
            cache.self_kv, cache.position = list(out[1:]), cache.position + 1
            return out[0].float()

        return step

    @staticmethod
    def _new_cache(group: int = 1) -> GraphCache:
        return GraphCache(group=group)

    @torch.inference_mode()
    def detect_language(self, enc: torch.Tensor) -> list[str]:
        """The most likely language token after ``<|startoftranscript|>``, per item."""
        ids = torch.full((enc.shape[0], 1), self.vocab.sot, dtype=torch.long, device=self.device)
        logits = self._stepper(enc)(ids, self._new_cache())
        codes = list(self.vocab.lang_to_id)
        lang_ids = torch.tensor([self.vocab.lang_to_id[c] for c in codes], device=logits.device)
        best = logits[:, lang_ids].argmax(dim=-1).tolist()
        return [codes[i] for i in best]

    def decode(self, encoded: torch.Tensor, languages, tasks, options: DecodeOptions) -> Decoded:
        langs, prompts = decoding_prompts(self, encoded, languages, tasks, options)
        if options.beam_size == 1:
            tokens, stats = greedy_search(
                self._stepper(encoded), self._new_cache, prompts, self.vocab, options.max_new_tokens,
                device=self.device, sync=self.synchronize,
            )
        else:
            k = options.beam_size
            tokens, stats = beam_search(
                self._stepper(encoded), lambda: self._new_cache(k), reorder_cache, prompts, self.vocab, k,
                options.max_new_tokens, options.length_penalty, device=self.device, sync=self.synchronize,
            )
        return Decoded(tokens, langs, stats)

    def decode_text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def labelled_batches(self, utterances, batch_size: int, options: DecodeOptions = DecodeOptions(),
                         pseudo_labels: bool = True, teacher_logits: bool = False, teacher_hidden: bool = False,
                         progress: bool = False) -> list[dict]:
        """Teacher-forcing batches ``{input_features, decoder_input_ids, labels}`` for calibration and training.

        With ``pseudo_labels`` the targets are this model's own greedy transcripts (the dense model labels its
        student's data); else the utterances' reference texts, tokenized. With ``teacher_logits`` each batch also
        gets this model's logits at the label positions (``[n_labels, vocab]``, fp16, for distillation), computed
        from the encoder output the labels were decoded from, and that encoder output (``teacher_encoder``, fp16).
        With ``teacher_hidden`` also the output of every encoder layer but the last (``teacher_hidden``,
        ``[layers - 1, batch, frames, d_model]``, fp16; the last is ``teacher_encoder``). Unreadable audio is skipped. Labels are -100 on the prompt and on padding."""
        from tqdm import tqdm

        from ..data.audio import load_audio
        from ..errors import AudioError
        from ..data.features import WINDOW_SECONDS, FeatureFrontend

        frontend = FeatureFrontend(self.n_mels)
        batches = []
        starts = range(0, len(utterances), batch_size)
        for i in tqdm(starts, desc="label", unit="batch", disable=not progress, dynamic_ncols=True):
            utts, audios = [], []
            for u in utterances[i : i + batch_size]:
                try:
                    audios.append(load_audio(u.audio, max_seconds=WINDOW_SECONDS))
                    utts.append(u)
                except AudioError:
                    continue
            if not utts:
                continue
            feats = frontend(audios)
            hidden = None
            if teacher_hidden:
                with torch.inference_mode():
                    x = torch.from_numpy(feats).to(self.device, self._dtype)
                    states = self._encoder(input_features=x, output_hidden_states=True).hidden_states
                enc, hidden = states[-1], torch.stack(states[1:-1]).half().cpu()  # states[i]: layer i's input
            else:
                enc = self.encode(feats) if pseudo_labels or teacher_logits else None
            if pseudo_labels:
                dec = self.decode(enc, [u.language for u in utts], [u.task for u in utts], options)
                targets, langs = dec.tokens, dec.languages
            else:
                targets = [self.tokenizer.encode(" " + u.text.strip(), add_special_tokens=False) for u in utts]
                langs = _languages_for(self.vocab, [u.language for u in utts], options)
            prompts = [self.vocab.prompt(lang, u.task or options.task) for lang, u in zip(langs, utts)]
            seqs = [p + t[: options.max_new_tokens] + [self.vocab.eot] for p, t in zip(prompts, targets)]
            width = max(map(len, seqs)) - 1
            ids = torch.full((len(seqs), width), self.vocab.eot, dtype=torch.long)
            labels = torch.full((len(seqs), width), -100, dtype=torch.long)
            for b, (p, seq) in enumerate(zip(prompts, seqs)):
                ids[b, : len(seq) - 1] = torch.tensor(seq[:-1])
                labels[b, len(p) - 1 : len(seq) - 1] = torch.tensor(seq[len(p):])
            batch = {"input_features": torch.from_numpy(feats), "decoder_input_ids": ids, "labels": labels}
            if teacher_logits:
                with torch.inference_mode():
                    logits = self.model(encoder_outputs=(enc,), decoder_input_ids=ids.to(self.device)).logits
                batch["teacher_logits"] = logits[labels.to(self.device) != -100].half().cpu()
                batch["teacher_encoder"] = enc.half().cpu()
            if hidden is not None:
                batch["teacher_hidden"] = hidden
            batches.append(batch)
        return batches


def _ct2_max_length(new_tokens: int) -> int:
    """CTranslate2's Whisper ``max_length`` yields at most ``max_length // 2`` new tokens (measured on 4.8.5:
    2 gives one token, 4 gives two; faster-whisper's 448 gives the reference implementation's 224)."""
    return min(2 * new_tokens, 448)


class FasterWhisper:
    """CTranslate2 Whisper files run by faster-whisper's engine (``faster_whisper.WhisperModel``)."""

    name = "faster-whisper"

    def __init__(self, ct2_dir: str | Path, vocab: WhisperVocab, tokenizer, shape: EncoderDecoderShape, params: int,
                 compute_type: str = "int8", threads: int = 0, device: str = "cpu"):
        from faster_whisper import WhisperModel

        if compute_type not in CT2_COMPUTE_TYPES:
            raise ConfigError(f"unknown compute type {compute_type!r}; choose from {', '.join(CT2_COMPUTE_TYPES)}")
        self.compute_type = compute_type
        self.fw = WhisperModel(str(ct2_dir), device=device, compute_type=compute_type, cpu_threads=threads)
        self.engine = self.fw.model  # ctranslate2.models.Whisper
        self.n_mels = int(self.engine.n_mels)
        self.vocab = vocab
        self.tokenizer = tokenizer
        self.name = f"faster-whisper-{compute_type}"
        self.shape, self.params = shape, params
        self._weight_files = list(Path(ct2_dir).glob("model.bin*"))
        self.disk_bytes = tree_size_bytes(self._weight_files)  # as stored (fp16 for the bundled files)

    def fingerprint(self) -> str:
        """A digest of the CTranslate2 weight files and the compute type they run in."""
        return f"{self.compute_type}:{files_digest(self._weight_files)}"

    def synchronize(self) -> None:  # CTranslate2 calls return when done
        pass

    def encode(self, features: np.ndarray, frames: list[int] | None = None):
        import ctranslate2

        return self.engine.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), to_cpu=False)

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
                 device: str = "cpu", exit_layer: int | None = None) -> Backend:
    """A backend for a bundled model name or a local folder: a Hugging Face Whisper folder (dense or pruned) or a
    CTC model folder (``speechprune train``; ``exit_layer`` reads it at that depth) for ``torch``, a folder written
    by ``speechprune export --format onnx`` for ``onnx``; ``faster-whisper`` runs the original CTranslate2 files of
    a bundled model, or a folder written by ``--format ct2``."""
    from ..models.ctc import is_ctc_folder
    from ..models.registry import BUNDLED_MODELS, ct2_source_dir, resolve_model

    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    ctc = is_ctc_folder(model) and backend != "onnx"  # an ONNX export of a CTC model carries its config too
    if exit_layer is not None and not ctc:
        raise ConfigError("--exit-layer reads a CTC model (speechprune train) at a smaller depth; this is not one", model)
    if ctc:
        if backend != "torch":
            raise ConfigError(f"a CTC model runs on the torch or onnx (an export) backend, not {backend}", model)
        from .ctc_backend import CTCBackend

        try:
            return CTCBackend.from_folder(model, device=device, exit_layer=exit_layer)
        except ValueError as e:
            raise ConfigError(str(e), model) from None
    if backend == "onnx":
        from .onnx_backend import OnnxWhisper, export_family

        if export_family(model) == "ctc":
            from .ctc_backend import OnnxCTC

            return OnnxCTC(model, threads=threads or None, device=device)
        return OnnxWhisper.from_folder(model, threads=threads or None, device=device)
    if backend == "faster-whisper" and model not in BUNDLED_MODELS and (Path(model) / "model.bin").is_file():
        return _exported_ct2(Path(model), compute_type, threads, device)
    hf_dir = resolve_model(model)
    if backend == "torch":
        return TorchWhisper.from_folder(hf_dir, device=device)
    if model not in BUNDLED_MODELS:
        raise ConfigError(f"--backend faster-whisper needs a bundled model name ({', '.join(BUNDLED_MODELS)})")
    from transformers import WhisperTokenizerFast

    from transformers import WhisperConfig

    from ..models.whisper import whisper_shape_from_config

    tokenizer = WhisperTokenizerFast.from_pretrained(hf_dir)
    shape = whisper_shape_from_config(WhisperConfig.from_pretrained(hf_dir))
    params = _safetensors_params(hf_dir)
    return FasterWhisper(ct2_source_dir(model), WhisperVocab.from_folder(hf_dir), tokenizer, shape, params,
                         compute_type=compute_type, threads=threads, device=device)


def _exported_ct2(folder: Path, compute_type: str, threads: int, device: str) -> "FasterWhisper":
    """A folder written by ``export_ct2``: its record holds the Hugging Face config and the pruned structure, which
    the shape (FLOPs) and parameter count follow; ``generation_config.json`` the special tokens."""
    import json

    from transformers import WhisperConfig, WhisperTokenizerFast

    from ..models.units import STRUCTURE_KEY
    from ..models.whisper import whisper_shape_from_config

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
                         compute_type=compute_type, threads=threads, device=device)


def _safetensors_params(folder: Path) -> int:
    """Parameter count from the safetensors headers of a folder (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for f in Path(folder).glob("*.safetensors"):
        with safe_open(f, framework="np") as st:
            for k in st.keys():
                total += int(np.prod(st.get_slice(k).get_shape()))
    return total
