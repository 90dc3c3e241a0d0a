"""The CTC families' ONNX Runtime backends: ``OnnxCTC`` (``export.ctc_onnx`` folders; the PyTorch one is
``models.ctc.backend.CTCBackend``) and ``OnnxWav2Vec2`` (``export.wav2vec2_onnx`` folders; the PyTorch one is
``models.wav2vec2.backend.Wav2Vec2Backend``, whose front end, search and FLOPs it shares), reached through
``evaluate.backends.load_backend``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..models.ctc.backend import CTCDecoding
from ..models.wav2vec2.backend import Wav2Vec2Backend
from ..models.wav2vec2.flops import terms_flops
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


# --------------------------------------------------------------------------------------------------------------
# wav2vec2 (``export.wav2vec2_onnx`` folders): the PyTorch backend's front end, search and FLOPs, ONNX Runtime's
# forward


def wav2vec2_output_lengths(convs: list[list[int]], samples) -> np.ndarray:
    """Encoder positions per clip (transformers' ``_get_feat_extract_output_lengths``: no padding in the feature
    encoder, floor division, clamped at 0 at the end as ``models.wav2vec2.forward.output_lengths`` does)."""
    n = np.asarray(samples, dtype=np.int64)
    for k, s, *_ in convs:
        n = (n - k) // s + 1
    return np.maximum(n, 0)


def run_wav2vec2_graph(session, waves: np.ndarray, samples: list[int], reads_batches: bool,
                       convs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """``(log_probs [N, T', V], lengths [N])`` of waveforms ``[N, S]`` through an exported graph, read as
    ``models.wav2vec2.forward.forward_states`` reads them: the padded batch with its mask (``reads_batches``, a
    layer-norm feature encoder) or each clip alone at its own samples, zero-padded to the batch (a group-norm one);
    a clip without a position gives none."""
    waves = np.ascontiguousarray(waves[:, : max(samples)], dtype=np.float32)
    lengths = wav2vec2_output_lengths(convs, samples)
    if reads_batches:
        lp, out = session.run(None, {"waveforms": waves, "lengths": np.asarray(samples, dtype=np.int64)})
        return lp, out
    rows: list[np.ndarray | None] = []
    for i, (n, t) in enumerate(zip(samples, lengths.tolist())):
        rows.append(None if t == 0 else session.run(None, {"waveforms": waves[i : i + 1, :n],
                                                           "lengths": np.array([n], dtype=np.int64)})[0][0])
    vocab = next((r.shape[-1] for r in rows if r is not None), 1)
    lp = np.zeros((len(samples), int(lengths.max()) if len(samples) else 0, vocab), dtype=np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            lp[i, : len(r)] = r
    return lp, lengths


class OnnxWav2Vec2(Wav2Vec2Backend):
    """A ``Wav2Vec2ForCTC`` exported by ``export.wav2vec2_onnx``, run by ONNX Runtime: the PyTorch backend's front
    end (the folder's ``preprocessor_config.json``), tokenizer, CTC search and FLOPs; ONNX Runtime's forward."""

    def __init__(self, folder: str | Path, threads: int | None = None, device: str = "cpu", name: str = "onnx"):
        from ..errors import ModelError
        from ..models.wav2vec2.load import load_tokenizer, read_frontend
        from ..models.wav2vec2.vocab import TokenizerVocab
        from .onnx_backend import export_numerics, open_sessions, read_manifest

        folder = Path(folder)
        self.manifest = read_manifest(folder, family="wav2vec2")
        try:
            self.params = int(self.manifest["params"])
            self.reads_batches = bool(self.manifest["reads_batches"])
            self.flops_terms = dict(self.manifest["flops_terms"])
            self.convs = [[int(v) for v in c] for c in self.flops_terms["convs"]]
            vocab_size, blank = int(self.manifest["vocab_size"]), self.manifest.get("pad_token_id")
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"malformed speechprune_onnx.json ({type(e).__name__}: {e})", folder) from None
        self.name = name
        self.folder = folder
        self.device = torch.device("cpu")
        self.tokenizer = load_tokenizer(folder, vocab_size, blank)
        self.vocab = TokenizerVocab(self.tokenizer)
        self._frontend = read_frontend(folder)
        self.exit_layer = None
        self.numerics = export_numerics(self.manifest)
        (self.session,) = open_sessions(folder, threads, device, graphs=("wav2vec2",)).values()
        self.disk_bytes = (folder / "wav2vec2.onnx").stat().st_size

    def with_model(self, model, name: str | None = None):
        from ..errors import ConfigError

        raise ConfigError("an ONNX export runs its own graph; a PyTorch model runs on the torch backend", self.folder)

    def synchronize(self) -> None:
        pass

    def fingerprint(self) -> str:
        return files_digest([self.folder / "wav2vec2.onnx"])

    def clip_flops(self, samples: int) -> int:
        return terms_flops(self.flops_terms, samples)["total"]

    def encode(self, features: np.ndarray, frames: list[int] | None = None):
        """``(log_probs [N, T', V], lengths [N])`` of waveforms ``[N, S]`` from ``frontend()`` of which item i's first
        ``frames[i]`` samples are real (all ``S`` when None), read as the PyTorch backend reads them."""
        waves = np.asarray(features)
        samples = [waves.shape[1]] * waves.shape[0] if frames is None else [int(n) for n in frames]
        lp, lengths = run_wav2vec2_graph(self.session, waves, samples, self.reads_batches, self.convs)
        return torch.from_numpy(lp), torch.from_numpy(np.asarray(lengths, dtype=np.int64))
