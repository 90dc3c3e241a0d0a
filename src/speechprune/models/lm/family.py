"""The LM family behind the seam every stage calls (``models.family.ModelFamily``): its folders, its size and FLOP
record, and text as its calibration and recovery data (``training_data``, ``labeller``, ``distill_outputs``: so
``prune``, ``sparsify`` and ``lowrank`` run on an LM folder with recipes that name text). An LM reads text, not audio:
what the seam offers for audio only (decoding backends, reference scoring, length buckets) is a one-line
``ConfigError``."""

from __future__ import annotations

from pathlib import Path

from ...errors import ConfigError
from ..family import DistillOutputs
from .batches import LMLabeller
from .checkpoint import folder_tokenizer, folder_tokens, is_lm_folder, load_lm, read_config, save_lm
from .flops import mean_token_flops
from .network import LMModel
from .tokens import tokens_for


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
        from ..lowrank import lowrank_ranks

        cfg = model.config.model_copy(update={"lowrank": lowrank_ranks(model) or None})  # as the model is now
        return {"params": sum(p.numel() for p in model.parameters()), "flops_encoder": 0,
                "flops_decoder_per_token": mean_token_flops(cfg),
                "flops_reference_context": model.config.context}

    def backend(self, folder, device="cpu", name=None, exit_layer=None, numerics="float32"):
        _no_audio("decoding backend")

    def labeller(self, model: LMModel, source: str | Path | None = None) -> LMLabeller:
        """``model`` reading lines as batches (``batches.LMLabeller``) with the tokens of ``source`` (its folder)."""
        if model.config.tokens == "whisper" and (source is None or not is_lm_folder(source)):
            raise ConfigError("a Whisper-token LM reads text with the tokenizer of the LM folder it came from")
        return LMLabeller(model, folder_tokens(source, model) if source is not None else tokens_for(model))

    def training_data(self, model: LMModel, specs: list[str], limit: int | None = None,
                      interleave: bool = False) -> list[str]:
        """Lines of text in the form ``model`` was trained on: a corpus split (``english-text:train``), an audio
        set's transcripts (``asterisk:dev``) or a manifest's texts; each set ``limit`` lines spread over it (a corpus
        is in source order), then ``limit`` in all (in turn with ``interleave``). Audio without text is refused."""
        from ...data.datasets import interleaved, parse_training_spec
        from ...data.text import spread, text_lines

        sets = []
        for spec in specs:
            t = parse_training_spec(spec)
            if t.kind in ("synthetic", "unlabelled"):
                raise ConfigError(f"{spec!r}: speech without text; a language model calibrates and recovers on "
                                  "text (english-text:train, asterisk:dev transcripts or a manifest's texts)")
            lines = (text_lines(t.name, t.split, form=model.config.text, training=True, progress=False)
                     if t.kind == "text" else text_lines(spec, form=model.config.text, training=True))
            sets.append(spread(lines, limit))
        out = interleaved(sets) if interleave else [s for lines in sets for s in lines]
        return out[:limit] if limit else out

    def distill_outputs(self, student: LMModel, batch: dict, layers: bool) -> DistillOutputs:
        """The next-token loss on the batch's text (no teacher logits: see ``LMLabeller``)."""
        if layers:
            raise ConfigError("recovery: hidden_weight acts on a speech encoder; an LM recovers on its text")
        device = next(student.parameters()).device
        return DistillOutputs(task_loss=student(batch["ids"].to(device), batch["targets"].to(device)).loss)

    def reference_scorer(self, backend, utterances, batch_size=8, max_new_tokens=None, cache_layers=True,
                         progress=False):
        _no_audio("scoring against audio references")

    def set_length_buckets(self, model, buckets) -> None:
        _no_audio("length buckets")

    def save_config(self, model: LMModel, source, folder: str | Path) -> None:
        """``speechprune_lm.json`` and, for Whisper tokens, the tokenizer of ``source`` (the LM folder it came
        from)."""
        from .checkpoint import write_config

        tokenizer = None
        if model.config.tokens == "whisper":
            if source is None or not is_lm_folder(source):
                raise ConfigError("saving a Whisper-token LM needs the LM folder it came from (its tokenizer)", folder)
            tokenizer = folder_tokenizer(source, read_config(source))
        write_config(model, folder, tokenizer)

    def fresh(self, model: LMModel, seed: int) -> LMModel:
        """``LMModel`` built from ``model``'s config (which holds its per-layer widths) under the seed."""
        import torch

        p = next(model.parameters())
        torch.manual_seed(seed)
        with torch.device(p.device):
            fresh = LMModel(model.config).to(p.dtype)
        return fresh.eval()

    def initial_weights(self, folder: str | Path, device: str = "cpu") -> None:
        """None: an LM folder keeps no initial weights."""
        return None


FAMILY = LMFamily()
