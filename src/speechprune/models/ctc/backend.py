"""The CTC family's decoding in PyTorch: the shared log-mel features in (only each clip's real frames are read),
characters out by greedy or prefix beam search, at full depth or exiting at any layer. ``CTCDecoding`` is what
every CTC backend shares (the ONNX one, ``evaluate.ctc_backend.OnnxCTC``, encodes through ONNX Runtime)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ...data.features import FeatureFrontend
from ..decoding import Decoded, DecodeOptions, DecodeStats, state_digest
from .checkpoint import load_ctc
from .config import CTCConfig
from .network import CTCModel
from .vocab import CharVocab, greedy_ctc, prefix_beam_search


class CTCDecoding:
    """What every CTC backend shares: the config and vocabulary, CTC search, FLOPs per clip; subclasses encode."""

    token_limited = False  # see evaluate.backends.Backend
    family = "ctc"

    def __init__(self, config: CTCConfig, name: str, exit_layer: int | None = None):
        self.config = config
        self.name = name
        self.vocab = CharVocab(config.vocab)
        self.n_mels = config.n_mels
        self.exit_layer = exit_layer
        self.disk_bytes: int | None = None
        self.numerics = {"all": {"dtype": "float32", "why": "the CTC backends run float32"}}

    def frontend(self) -> FeatureFrontend:
        """The shared log-mel features; a clip's length is its real frames, all the model reads."""
        return FeatureFrontend(self.n_mels)

    @staticmethod
    def _real(features: np.ndarray, frames: list[int] | None) -> tuple[np.ndarray, list[int]]:
        """The features cut to the longest item's real frames, and each item's frames (all of them when None)."""
        n, _, t = features.shape
        frames = [t] * n if frames is None else list(frames)
        return np.ascontiguousarray(features[:, :, : max(frames)], dtype=np.float32), frames

    def clip_flops(self, frames: int) -> int:
        """Analytic FLOPs of one clip of ``frames`` frames read to this backend's exit layer."""
        from .flops import encoder_flops

        return encoder_flops(self.config, frames, self.exit_layer)["total"]

    def flops_record(self, rows: list[dict]) -> dict:
        """Analytic FLOPs of bench rows: the median clip's encoder (the model reads only each clip's ``frames``);
        no decoder."""
        import statistics

        per = [self.clip_flops(r["frames"]) for r in rows]
        return {"flops_encoder": statistics.median(per), "flops_encoder_breakdown": None,
                "flops_decoder_first_step": 0, "flops_decoder_per_token": 0,
                "flops_per_utterance_median": statistics.median(per)}

    def decode(self, encoded, languages, tasks, options: DecodeOptions) -> Decoded:
        """Characters per item: greedy (``beam_size`` 1) or prefix beam search; the whole search counts as the
        decoder's first step (there is no per-token decoder), the fused LM's steps in it as ``lm_s``."""
        log_probs, lengths = encoded
        lm_start = options.lm.seconds if options.fusion else 0.0
        t0 = time.perf_counter()
        if options.fusion:  # shallow fusion with a character LM (greedy: the prefix search with one beam)
            tokens = [prefix_beam_search(lp, int(n), options.beam_size,
                                         fusion=options.lm.char_scorer(options.lm_weight, options.lm_bonus,
                                                                       self.vocab.chars))
                      for lp, n in zip(log_probs, lengths)]
        elif options.beam_size > 1:
            tokens = [prefix_beam_search(lp, int(n), options.beam_size) for lp, n in zip(log_probs, lengths)]
        else:
            tokens = greedy_ctc(log_probs, lengths)
        return Decoded(tokens, ["en"] * len(tokens), DecodeStats(
            first_step_s=time.perf_counter() - t0, lm_s=options.lm.seconds - lm_start if options.fusion else 0.0))

    def decode_text(self, tokens: list[int]) -> str:
        return self.vocab.decode(tokens)


class CTCBackend(CTCDecoding):
    """A CTC model in PyTorch, at full depth or exiting at ``exit_layer``."""

    def __init__(self, model: CTCModel, device: str = "cpu", name: str = "ctc", exit_layer: int | None = None):
        if exit_layer is not None and not 1 <= exit_layer <= model.depth:
            raise ValueError(f"exit layer {exit_layer} is outside this model's 1..{model.depth} layers")
        super().__init__(model.config, name, exit_layer)
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.params = sum(p.numel() for p in model.parameters())

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", name: str = "ctc",
                    exit_layer: int | None = None) -> "CTCBackend":
        be = cls(load_ctc(folder, device=device), device=device, name=name, exit_layer=exit_layer)
        be.disk_bytes = sum(p.stat().st_size for p in Path(folder).glob("model.safetensors"))
        return be

    def with_model(self, model: CTCModel, name: str | None = None) -> "CTCBackend":
        """A backend for ``model`` (a pruned or damaged copy of this one's) that decodes as this one does."""
        return CTCBackend(model, device=str(self.device), name=name or self.name, exit_layer=self.exit_layer)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fingerprint(self) -> str:
        return state_digest(self.model, f"exit={self.exit_layer}")

    @torch.inference_mode()
    def encode(self, features: np.ndarray, frames: list[int] | None = None):
        """``(log_probs [N, T', V], lengths [N])`` from features ``[N, n_mels, T]`` of which item i's first
        ``frames[i]`` are real (all ``T`` when None)."""
        feats, frames = self._real(features, frames)
        out = self.model(torch.as_tensor(feats, device=self.device), torch.as_tensor(frames, device=self.device),
                         exit_layer=self.exit_layer)
        return out.log_probs, out.lengths
