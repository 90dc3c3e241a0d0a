"""ONNX export of CTC models (``models.ctc``, dense or pruned): one graph, ``features [N, n_mels, T]`` and
``lengths [N]`` in, ``log_probs [N, T', V]`` and ``out_lengths [N]`` out, with dynamic batch and time axes (the
model reads only each clip's frames, so the graph must take any length). The folder holds ``ctc.onnx``, the model's
``speechprune_ctc.json`` (vocabulary, structure) and ``speechprune_onnx.json``; it is written to a temporary sibling,
checked against PyTorch there at a batch and a length other than the traced ones, and renamed into place.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelError
from ..evaluate.onnx_backend import FORMAT, MANIFEST, open_sessions
from ..io import check_output_dir, staged_dir
from ..models.ctc import CONFIG_FILE, load_ctc
from ..numerics import quantization_rtol, reorder_rtol
from .onnx import check_opset, quantize_graphs, trace_to_onnx, versions

GRAPH = "ctc"


class _Graph(torch.nn.Module):
    """``(log_probs, out_lengths)`` of the model: the traced function."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, features, lengths):
        out = self.model(features, lengths)
        return out.log_probs, out.lengths


def export_ctc_onnx(model_dir: str | Path, out_dir: str | Path, *, quantize: bool = False, opset: int = 17,
                    per_channel: bool = True, overwrite: bool = False) -> dict:
    """Export the CTC model in ``model_dir`` to ``out_dir``; returns the manifest with the parity check."""
    source, out = Path(model_dir), Path(out_dir)
    check_opset(opset)
    check_output_dir(out, overwrite, source=source)
    model = load_ctc(source)
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    with staged_dir(out) as tmp:
        feats = torch.randn(2, cfg.n_mels, 160, generator=g)
        trace_to_onnx(_Graph(model).eval(), (feats, torch.tensor([160, 97])), tmp / f"{GRAPH}.onnx",
                      ["features", "lengths"], ["log_probs", "out_lengths"],
                      {"features": {0: "batch", 2: "frames"}, "lengths": {0: "batch"},
                       "log_probs": {0: "batch", 1: "positions"}, "out_lengths": {0: "batch"}}, opset)
        quantization = quantize_graphs(tmp, per_channel, (GRAPH,)) if quantize else None
        shutil.copy2(source / CONFIG_FILE, tmp / CONFIG_FILE)
        (session,) = open_sessions(tmp, threads=None, graphs=(GRAPH,)).values()
        # parity at another batch size and length than the traced ones
        feats = torch.randn(3, cfg.n_mels, 233, generator=g)
        lengths = torch.tensor([233, 120, 41])
        with torch.inference_mode():
            ref = model(feats, lengths)
        lp, ol = session.run(None, {"features": feats.numpy(), "lengths": lengths.numpy()})
        if not np.array_equal(ol, ref.lengths.numpy()):
            raise ModelError(f"exported ONNX graph disagrees with PyTorch on output lengths ({ol} vs {ref.lengths})",
                             source)
        mask = np.arange(lp.shape[1])[None, :] < ol[:, None]
        probs, ref_probs = np.exp(lp)[mask], np.exp(ref.log_probs.numpy())[mask]
        diff = float(np.abs(probs - ref_probs).max())
        bound = (quantization_rtol(quantization["weight_bits"], model.reduction_depth) if quantize else
                 reorder_rtol(torch.float32, 233, model.reduction_depth))
        if diff > bound:
            raise ModelError(f"exported {'int8' if quantize else 'float32'} ONNX graph disagrees with PyTorch "
                             f"(max abs difference of the posteriors {diff:.3g} > {bound:.3g})", source)
        manifest: dict[str, Any] = {
            "format": FORMAT, "family": "ctc", "files": {GRAPH: f"{GRAPH}.onnx"},
            "io": {GRAPH: {"inputs": ["features", "lengths"], "outputs": ["log_probs", "out_lengths"]}},
            "n_mels": cfg.n_mels, "params": sum(p.numel() for p in model.parameters()), "quantized": quantize,
            "quantization": quantization, "opset": opset,
            "source": {"model_dir": str(source.resolve()), "versions": versions()},
            "check": {"posterior_max_abs_diff": diff, "bound": bound, "batch": 3, "frames": 233},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        del session
    return manifest
