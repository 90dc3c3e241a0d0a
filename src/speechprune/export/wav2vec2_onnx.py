"""ONNX export of wav2vec2 models (Hugging Face ``Wav2Vec2ForCTC`` folders, dense, pruned or factorized: whatever
``models.wav2vec2.load_wav2vec2`` loads): one graph, ``waveforms [N, S]`` (the front end's normalized 16 kHz
waveform) and ``lengths [N]`` (real samples) in, ``log_probs [N, T', V]`` and ``out_lengths [N]`` out, with
dynamic batch and samples axes.

A batch is read as ``models.wav2vec2.forward.forward_states`` reads it: a layer-norm feature encoder
(``reads_batches``) reads the padded batch with the attention mask the graph builds from ``lengths``; a group-norm
one (wav2vec2-base) normalizes over the whole waveform, so the graph has no mask and the backend
(``evaluate.ctc_backend.OnnxWav2Vec2``) runs it on each clip alone, at its own samples. The manifest records which
(``reads_batches``), the front end's normalization, the blank, and what the FLOPs count reads
(``flops_terms``); the folder gets the tokenizer and preprocessor files. It is written to a temporary sibling, the
backend's forward is checked against the PyTorch backend's there at a batch and lengths other than the traced ones,
and renamed into place.

CTranslate2 (``--format ct2``) is refused: see ``CT2_REFUSAL``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelError
from ..evaluate.ctc_backend import run_wav2vec2_graph
from ..models.wav2vec2.flops import flops_terms
from ..evaluate.onnx_backend import FORMAT, MANIFEST, open_sessions
from ..io import check_output_dir, staged_dir
from ..models.checkpoint import PROCESSOR_FILES
from ..models.wav2vec2.backend import Wav2Vec2Backend
from ..models.wav2vec2.forward import forward_states, output_lengths, reads_batches, without_augmentation
from ..models.wav2vec2.load import load_tokenizer, load_wav2vec2, read_frontend
from ..numerics import quantization_rtol, reorder_rtol
from .onnx import check_opset, quantize_graphs, trace_to_onnx, versions

GRAPH = "wav2vec2"
# ctranslate2 4.8.5 has a Wav2Vec2 converter, but it does not fit what speechprune exports (checked on tiny models)
CT2_REFUSAL = ("a wav2vec2 model exports to --format onnx only: ctranslate2's Wav2Vec2 converter (4.8.5) takes "
               "layer-norm feature encoders with conv biases only (not wav2vec2-base's group norm), one head "
               "count per model (not pruned layers) and no attention mask or lengths (padded batches)")


class _Graph(torch.nn.Module):
    """``(log_probs, out_lengths)`` of the model, as ``forward_states`` computes them: with the attention mask for a
    layer-norm feature encoder, over the whole waveform for a group-norm one (its backend feeds one clip)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, waveforms, lengths):
        if reads_batches(self.model):
            states = forward_states(self.model, waveforms, lengths)
            logits, out_lengths = states.logits, states.lengths
        else:
            with without_augmentation(self.model):
                hidden = self.model.wav2vec2(waveforms).last_hidden_state
            logits, out_lengths = self.model.lm_head(self.model.dropout(hidden)), output_lengths(self.model, lengths)
        return torch.log_softmax(logits.float(), dim=-1), out_lengths


def reduction_depth(model) -> int:
    """Chained reductions of a forward (``tests/closeness.py``): the convolutions, projection, positional
    convolution, 6 per transformer layer and the head."""
    return len(model.wav2vec2.feature_extractor.conv_layers) + 3 + 6 * len(model.wav2vec2.encoder.layers)


def _longest_reduction(model, positions: int) -> int:
    """The most terms any one sum of the forward adds: over the positions (attention), a linear map's inputs or a
    convolution's window."""
    k = positions
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            k = max(k, m.in_features)
        elif isinstance(m, torch.nn.Conv1d):
            k = max(k, m.kernel_size[0] * m.in_channels // m.groups)
    return k


def _waves(g: torch.Generator, samples: list[int]) -> torch.Tensor:
    """Random normalized waveforms, zero past each item's samples (the front end's padding)."""
    x = torch.randn(len(samples), max(samples), generator=g)
    return x * (torch.arange(x.shape[1])[None, :] < torch.tensor(samples)[:, None])


def export_wav2vec2_onnx(model_dir: str | Path, out_dir: str | Path, *, quantize: bool = False, opset: int = 17,
                         per_channel: bool = True, overwrite: bool = False) -> dict:
    """Export the wav2vec2 model in ``model_dir`` to ``out_dir``; returns the manifest with the parity check."""
    source, out = Path(model_dir), Path(out_dir)
    check_opset(opset)
    check_output_dir(out, overwrite, source=source)
    model = load_wav2vec2(source)
    tokenizer = load_tokenizer(source, model.lm_head.out_features, model.config.pad_token_id)
    frontend = read_frontend(source)
    batches = reads_batches(model)
    terms = flops_terms(model)
    g = torch.Generator().manual_seed(0)
    with staged_dir(out) as tmp:
        traced = [12000, 7000] if batches else [12000]  # a group-norm graph reads one clip at a time
        trace_to_onnx(_Graph(model).eval(), (_waves(g, traced), torch.tensor(traced)), tmp / f"{GRAPH}.onnx",
                      ["waveforms", "lengths"], ["log_probs", "out_lengths"],
                      {"waveforms": {0: "batch", 1: "samples"}, "lengths": {0: "batch"},
                       "log_probs": {0: "batch", 1: "positions"}, "out_lengths": {0: "batch"}}, opset)
        quantization = quantize_graphs(tmp, per_channel, (GRAPH,)) if quantize else None
        for name in PROCESSOR_FILES:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        (session,) = open_sessions(tmp, threads=None, graphs=(GRAPH,)).values()
        # parity of the backend's forward with the PyTorch backend's, at another batch size and lengths than traced
        samples = [15013, 9500, 3210]
        waves = _waves(g, samples)
        ref_lp, ref_len = Wav2Vec2Backend(model, tokenizer, frontend).encode(waves.numpy(), samples)
        lp, ol = run_wav2vec2_graph(session, waves.numpy(), samples, batches, terms["convs"])
        if not np.array_equal(np.asarray(ol), ref_len.numpy()):
            raise ModelError(f"exported ONNX graph disagrees with PyTorch on output lengths ({ol} vs {ref_len})",
                             source)
        mask = np.arange(lp.shape[1])[None, :] < np.asarray(ol)[:, None]
        probs, ref_probs = np.exp(lp)[mask], np.exp(ref_lp.numpy())[mask]
        diff = float(np.abs(probs - ref_probs).max())
        depth = reduction_depth(model)
        bound = (quantization_rtol(quantization["weight_bits"], depth) if quantize else
                 reorder_rtol(torch.float32, _longest_reduction(model, int(ref_len.max())), depth))
        if diff > bound:
            raise ModelError(f"exported {'int8' if quantize else 'float32'} ONNX graph disagrees with PyTorch "
                             f"(max abs difference of the posteriors {diff:.3g} > {bound:.3g})", source)
        manifest: dict[str, Any] = {
            "format": FORMAT, "family": "wav2vec2", "files": {GRAPH: f"{GRAPH}.onnx"},
            "io": {GRAPH: {"inputs": ["waveforms", "lengths"], "outputs": ["log_probs", "out_lengths"]}},
            "reads_batches": batches,
            "frontend": {"kind": "waveform", "normalize": frontend.normalize, "padding_value": frontend.padding_value,
                         "sampling_rate": 16000},
            "vocab_size": int(model.lm_head.out_features), "pad_token_id": int(tokenizer.pad_token_id),
            "word_delimiter": tokenizer.word_delimiter_token,
            "params": sum(p.numel() for p in model.parameters()), "flops_terms": terms,
            "quantized": quantize, "quantization": quantization, "opset": opset,
            "source": {"model_dir": str(source.resolve()), "versions": versions()},
            "check": {"posterior_max_abs_diff": diff, "bound": bound, "batch": len(samples), "samples": samples},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        del session
    return manifest
