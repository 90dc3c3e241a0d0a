"""``Wav2Vec2Backend``: a Hugging Face ``Wav2Vec2ForCTC`` (dense, pruned, factorized or sparse) as a decoding
backend. It reads the normalized 16 kHz waveform (``data.features.WaveformFrontend``, as the folder's
``preprocessor_config.json`` says), not log-mel features, through the family's one forward (``.forward``: how a
batch is read), and searches its CTC posteriors greedily or by prefix beam search (``.vocab``: the tokenizer's pad
token is the blank)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ...data.features import WaveformFrontend
from ...io import tree_size_bytes
from ..decoding import Decoded, DecodeOptions, DecodeStats, state_digest
from .flops import clip_flops
from .forward import forward_states
from .load import load_tokenizer, load_wav2vec2, read_frontend
from .vocab import TokenizerVocab


class Wav2Vec2Backend:
    """A ``Wav2Vec2ForCTC`` with its tokenizer and front end, on any torch device, in float32."""

    token_limited = False  # see evaluate.backends.Backend
    family = "wav2vec2"

    def __init__(self, model, tokenizer, frontend: WaveformFrontend, device: str | torch.device = "cpu",
                 name: str = "wav2vec2"):
        self.name = name
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.vocab = TokenizerVocab(tokenizer)
        self._frontend = frontend
        self.exit_layer = None
        self.params = sum(p.numel() for p in model.parameters())
        self.disk_bytes: int | None = None  # set by from_folder: the weight files' size
        self.numerics = {"all": {"dtype": "float32", "why": "the wav2vec2 backend runs float32"}}

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", name: str = "wav2vec2") -> "Wav2Vec2Backend":
        model = load_wav2vec2(folder, device=device)
        tokenizer = load_tokenizer(folder, model.lm_head.out_features, model.config.pad_token_id)
        be = cls(model, tokenizer, read_frontend(folder), device=device, name=name)
        be.disk_bytes = tree_size_bytes(Path(folder).glob("*.safetensors"))
        return be

    def with_model(self, model, name: str | None = None) -> "Wav2Vec2Backend":
        """A backend for ``model`` (a pruned or damaged copy of this one's) that reads and decodes as this one does."""
        return Wav2Vec2Backend(model, self.tokenizer, self._frontend, device=self.device, name=name or self.name)

    def frontend(self) -> WaveformFrontend:
        """The normalized waveform (``preprocessor_config.json``'s ``do_normalize``); a clip's length is its
        samples."""
        return self._frontend

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fingerprint(self) -> str:
        return state_digest(self.model, "wav2vec2")

    def clip_flops(self, samples: int) -> int:
        """Analytic FLOPs of one clip of ``samples`` samples (``.flops``, counted on the live modules)."""
        return clip_flops(self.model, samples)["total"]

    def flops_record(self, rows: list[dict]) -> dict:
        """Analytic FLOPs of bench rows: the median clip's (the model reads only the clip: ``samples``); no
        decoder."""
        per = [self.clip_flops(int(r["samples"]) if "samples" in r else round(r["duration_s"] * 16000))
               for r in rows]
        return {"flops_encoder": statistics.median(per), "flops_encoder_breakdown": None,
                "flops_decoder_first_step": 0, "flops_decoder_per_token": 0,
                "flops_per_utterance_median": statistics.median(per)}

    @torch.inference_mode()
    def encode(self, features: np.ndarray, frames: list[int] | None = None):
        """``(log_probs [N, T', V], lengths [N])`` of waveforms ``[N, S]`` from ``frontend()`` of which item i's first
        ``frames[i]`` samples are real (all ``S`` when None)."""
        waves = np.ascontiguousarray(features, dtype=np.float32)
        samples = [waves.shape[1]] * waves.shape[0] if frames is None else [int(n) for n in frames]
        waves = torch.as_tensor(waves[:, : max(samples)], device=self.device)
        states = forward_states(self.model, waves, samples)
        return torch.log_softmax(states.logits.float(), dim=-1), states.lengths

    def decode(self, encoded, languages, tasks, options: DecodeOptions) -> Decoded:
        """Token ids per item: greedy (``beam_size`` 1) or prefix beam search; the whole search counts as the
        decoder's first step (there is no per-token decoder)."""
        log_probs, lengths = encoded
        t0 = time.perf_counter()
        tokens = self.vocab.search(log_probs, lengths, options.beam_size)
        langs = [lang or options.language or "en" for lang in languages]  # no detection: as given, else English
        return Decoded(tokens, langs, DecodeStats(first_step_s=time.perf_counter() - t0))

    def decode_text(self, tokens: list[int]) -> str:
        return self.vocab.decode(tokens)
