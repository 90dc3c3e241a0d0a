"""The CTC family's ONNX Runtime backend (``export.ctc_onnx`` folders); the PyTorch one is
``models.ctc.backend.CTCBackend``, reached through the family seam (``evaluate.backends.load_backend``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models.ctc.backend import CTCDecoding
from .backends import files_digest


class OnnxCTC(CTCDecoding):
    """A CTC model exported by ``export.ctc_onnx``, run by ONNX Runtime."""

    def __init__(self, folder: str | Path, threads: int | None = None, device: str = "cpu", name: str = "onnx"):
        from ..models.ctc import read_config
        from .onnx_backend import export_numerics, open_sessions, read_manifest

        folder = Path(folder)
        self.manifest = read_manifest(folder, family="ctc")
        super().__init__(read_config(folder), name)
        self.numerics = export_numerics(self.manifest)
        (self.session,) = open_sessions(folder, threads, device, graphs=("ctc",)).values()
        self.folder = folder
        self.params = int(self.manifest["params"])
        self.disk_bytes = (folder / "ctc.onnx").stat().st_size

    def synchronize(self) -> None:
        pass

    def fingerprint(self) -> str:
        return files_digest([self.folder / "ctc.onnx"])

    def encode(self, features: np.ndarray, frames: list[int] | None = None):
        feats, frames = self._real(features, frames)
        lp, lengths = self.session.run(None, {"features": feats, "lengths": np.asarray(frames, dtype=np.int64)})
        return torch.from_numpy(lp), torch.from_numpy(lengths)
