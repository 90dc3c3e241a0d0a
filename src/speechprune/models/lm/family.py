"""The LM family behind the seam every stage calls (``models.family.ModelFamily``): its folders and its size and
FLOP record. An LM reads text, not audio: what the seam offers for audio (labelling, decoding backends, reference
scoring, length buckets, distillation on audio batches) is a one-line ``ConfigError``."""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from .checkpoint import folder_tokenizer, is_lm_folder, load_lm, read_config, save_lm
from .flops import mean_token_flops
from .network import LMModel


def _no_audio(what: str):
    raise ConfigError(f"{what}: a language model reads text, not audio")


class LMFamily:
    name = "lm"

    def owns(self, folder: str | Path) -> bool:
        return is_lm_folder(folder)

    def load(self, folder: str | Path, device: str = "cpu") -> LMModel:
        return load_lm(folder, device=device)

    def save(self, model: LMModel, source: str | Path | None, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``model`` to ``out`` with the tokenizer of ``source`` (the LM folder it came from; Whisper tokens)."""
        tokenizer = None
        if model.config.tokens == "whisper":
            if source is None or not is_lm_folder(source):
                raise ConfigError("saving a Whisper-token LM needs the LM folder it came from (its tokenizer)", out)
            tokenizer = folder_tokenizer(source, read_config(source))
        return save_lm(model, out, tokenizer, overwrite=overwrite)

    def shape_record(self, model: LMModel) -> dict:
        """``params`` and ``flops_decoder_per_token``: one step's FLOPs averaged over a full context window (no
        encoder: ``flops_encoder`` 0)."""
        return {"params": sum(p.numel() for p in model.parameters()), "flops_encoder": 0,
                "flops_decoder_per_token": mean_token_flops(model.config),
                "flops_reference_context": model.config.context}

    def backend(self, folder, device="cpu", name=None, exit_layer=None, numerics="float32"):
        _no_audio("decoding backend")

    def labeller(self, model, source=None):
        _no_audio("labelling audio")

    def distill_outputs(self, student, batch, layers):
        _no_audio("distillation on audio batches")

    def reference_scorer(self, backend, utterances, batch_size=8, max_new_tokens=None, cache_layers=True,
                         progress=False):
        _no_audio("scoring against audio references")

    def set_length_buckets(self, model, buckets) -> None:
        _no_audio("length buckets")


FAMILY = LMFamily()
