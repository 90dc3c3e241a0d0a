"""``TorchWhisper``: a Hugging Face Whisper model (dense or pruned) as a decoding backend, on any torch device, and the
teacher that labels batches for calibration and distillation (``labelled_batches``).

It decodes through the split decoder graphs of :mod:`.graph` with the search loops of :mod:`.decoding`, and takes
the shared log-mel features (:class:`speechprune.data.features.FeatureFrontend`) like every backend of
``speechprune.evaluate.backends``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speechprune.errors import ConfigError
from speechprune.io import tree_size_bytes
from speechprune.models.decoding import Decoded, DecodeOptions, state_digest

from .decoding import (GraphCache, WhisperVocab, _languages_for, beam_search, decoding_prompts, greedy_search,
                       reorder_cache)
from .graph import WhisperEncoderGraph, whisper_graphs
from .lengths import cut_features, length_buckets
from .load import load_whisper
from .shape import whisper_shape


class TorchWhisper:
    """A Hugging Face ``WhisperForConditionalGeneration`` (dense or pruned), on any torch device."""

    token_limited = True  # see evaluate.backends.Backend

    def __init__(self, model, tokenizer, vocab: WhisperVocab, device: str | torch.device = "cpu", name: str = "torch",
                 numerics: str = "float32"):
        self.name = name  # several models can be benchmarked side by side under different names
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.vocab = vocab
        self.device = torch.device(device)
        self.n_mels = int(model.config.num_mel_bins)
        self._encoder = model.get_encoder()
        self.max_positions = int(model.config.max_target_positions)
        self._dtype = next(model.parameters()).dtype
        self.shape = whisper_shape(model)
        # unique parameters (the tied output projection counts once)
        self.params = sum(p.numel() for p in model.parameters())
        self.disk_bytes: int | None = None  # set by from_folder: the weight files' size
        self.last_positions: int | None = None  # encoder positions per item of the last ``encode``
        self._low = None  # a bfloat16 copy of the model for the parts that run in it (``numerics``)
        self.numerics = self._choose_numerics(numerics)

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu", name: str = "torch",
                    numerics: str = "float32") -> "TorchWhisper":
        model, processor = load_whisper(folder, device=device)
        be = cls(model, processor.tokenizer, WhisperVocab.from_folder(folder), device=device, name=name,
                 numerics=numerics)
        be.disk_bytes = tree_size_bytes(Path(folder).glob("*.safetensors"))
        return be

    def frontend(self):
        """The shared log-mel features (``data.features.FeatureFrontend``) over the 30 s window."""
        from speechprune.data.features import FeatureFrontend

        return FeatureFrontend(self.n_mels)

    def with_model(self, model, name: str | None = None) -> "TorchWhisper":
        """A backend for ``model`` (a pruned or damaged copy of this one's) with this one's tokenizer and vocabulary
        (in float32: a copy is scored against its dense original in the reference numerics)."""
        return TorchWhisper(model, self.tokenizer, self.vocab, device=self.device, name=name or self.name)

    def _choose_numerics(self, requested: str) -> dict[str, dict]:
        """The dtype of each part (``models.precision``): the encoder probed with its FFN GEMM over its positions,
        the decoder with one token's vocabulary projection (most of a tiny decoder's time), each checked against
        float32 on one input; ``float32`` (the default) probes nothing. Returns the bench record's ``numerics``."""
        from ..precision import PartChoice, check_error, choose_part, relative_error

        if requested == "float32" or self.device.type != "cpu":
            why = "requested" if requested == "float32" else f"{requested} is chosen on CPUs; this is {self.device}"
            return {part: {"dtype": "float32", "gflops": {}, "why": why} for part in ("encoder", "decoder")}
        s = self.shape
        ffn = max((layer.ffn_dim for layer in s.encoder), default=0) or 4 * s.d_model
        choice = {"encoder": choose_part(s.n_audio_ctx, s.d_model, ffn, requested),
                  "decoder": choose_part(1, s.d_dec, s.vocab_size, requested)}
        if all(c.dtype == "float32" for c in choice.values()):
            return {part: c.record() for part, c in choice.items()}
        import copy

        self._low = copy.deepcopy(self.model).to(torch.bfloat16).eval()
        g = torch.Generator().manual_seed(0)
        feats = (torch.randn(1, self.n_mels, 2 * s.n_audio_ctx, generator=g) * 0.4).clamp(-1.0, 1.5).numpy()
        self.numerics = {part: {"dtype": "float32"} for part in choice}
        ref = self.encode(feats)
        ids = torch.tensor([self.vocab.prompt("en", "transcribe")], device=self.device)
        want = self._stepper(ref)(ids, self._new_cache())
        checked: dict[str, PartChoice] = {}
        for part in ("encoder", "decoder"):
            if choice[part].dtype == "float32":
                checked[part] = choice[part]
                continue
            self.numerics = {p: {"dtype": choice[p].dtype if p == part else "float32"} for p in choice}
            got = self.encode(feats) if part == "encoder" else self._stepper(ref)(ids, self._new_cache())
            checked[part] = check_error(choice[part], relative_error(got, ref if part == "encoder" else want))
        if all(c.dtype == "float32" for c in checked.values()):
            self._low = None
        return {part: c.record() for part, c in checked.items()}

    def _part(self, part: str):
        """The model ``part`` runs in and its dtype (the bfloat16 copy where the numerics chose it)."""
        if self._low is not None and self.numerics[part]["dtype"] == "bfloat16":
            return self._low, torch.bfloat16
        return self.model, self._dtype

    @property
    def length_buckets(self) -> tuple[int, ...] | None:
        """The buckets a length-adaptive model (config.json's ``speechprune_length_buckets``) reads its batches at,
        through the encoder graph; ``None``: the 30 s window through Hugging Face's encoder, as for every stock
        model."""
        return length_buckets(self.model.config)

    def flops_record(self, rows: list[dict]) -> dict:
        """Analytic FLOPs of bench rows (``flops.bench_flops``: the encoder at the positions each clip was read at)."""
        from .flops import bench_flops

        return bench_flops(self.shape, rows)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def fingerprint(self) -> str:
        """What an evaluation run is pinned to: :func:`state_digest` of the model (and its length buckets)."""
        buckets = self.length_buckets
        extra = "" if buckets is None else f"length buckets {list(buckets)}"
        low = {p: c["dtype"] for p, c in self.numerics.items() if c["dtype"] != "float32"}
        return state_digest(self.model, extra + (f" numerics {low}" if low else ""))

    @torch.inference_mode()
    def encode(self, features: np.ndarray, frames: list[int] | None = None) -> torch.Tensor:
        """Encoder states of ``features [B, n_mels, 3000]``; a length-adaptive model reads only the frames of the
        bucket that holds the longest of ``frames`` (each window's real frames; ``None``: the full window)."""
        buckets = self.length_buckets
        model, dtype = self._part("encoder")
        if buckets is not None:
            x = torch.from_numpy(np.ascontiguousarray(cut_features(features, frames, buckets)))
            out = WhisperEncoderGraph(model)(x.to(self.device, dtype))
        else:
            x = torch.from_numpy(features).to(self.device, dtype)
            out = model.get_encoder()(input_features=x).last_hidden_state
        self.last_positions = int(out.shape[1])
        return out.to(self._dtype)

    def _stepper(self, enc: torch.Tensor):
        """One search step through the split decoder graphs (``graph``: plain torch over this model's
        own parameters, the same code the ONNX export traces, so PyTorch and ONNX decode alike by construction)
        with a ``GraphCache``: a prompt pass, then one token per call. ``enc`` holds one row per utterance; the
        cache's ``group`` rows (beams) share it, so beam search keeps one cross-attention cache per utterance.
        tiny.en, 2 threads: 8.7 ms per token (transformers' decoder forward with its cache: 9.2 ms), of which the
        fp32 51864-way output projection alone takes 5.0 ms (80 MB of weights read per token)."""
        model, dtype = self._part("decoder")
        graphs = whisper_graphs(model)
        prefill, step_graph, n_self = graphs.prefill, graphs.step, len(graphs.io.self_cache)
        enc = enc.to(dtype)

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
        # shallow fusion (greedy with an LM: the beam search with one beam); weight and bonus 0: the plain search
        fusion = options.lm.whisper_scorer(options.lm_weight, options.lm_bonus, self.vocab.eot) if options.fusion \
            else None
        if options.beam_size == 1 and fusion is None:
            tokens, stats = greedy_search(
                self._stepper(encoded), self._new_cache, prompts, self.vocab, options.max_new_tokens,
                device=self.device, sync=self.synchronize,
            )
        else:
            k = options.beam_size
            tokens, stats = beam_search(
                self._stepper(encoded), lambda: self._new_cache(k), reorder_cache, prompts, self.vocab, k,
                options.max_new_tokens, options.length_penalty, device=self.device, sync=self.synchronize,
                fusion=fusion,
            )
        return Decoded(tokens, langs, stats)

    def decode_text(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True).strip()

    def labelled_batches(self, utterances, batch_size: int, options: DecodeOptions = DecodeOptions(),
                         pseudo_labels: bool = True, teacher_logits: bool = False, teacher_hidden: bool = False,
                         progress: bool = False, frames: bool = False) -> list[dict]:
        """Teacher-forcing batches ``{input_features, decoder_input_ids, labels}`` for calibration and training.

        With ``pseudo_labels`` the targets are this model's own greedy transcripts (the dense model labels its
        student's data); else the utterances' reference texts, tokenized. With ``teacher_logits`` each batch also
        gets this model's logits at the label positions (``[n_labels, vocab]``, fp16, for distillation), computed
        from the encoder output the labels were decoded from, and that encoder output (``teacher_encoder``, fp16).
        With ``teacher_hidden`` also the output of every encoder layer but the last (``teacher_hidden``,
        ``[layers - 1, batch, frames, d_model]``, fp16; the last is ``teacher_encoder``). With ``frames`` also each clip's
        real log-mel frames (``frames``, ``[batch]``: a length-adaptive student reads its batch at their bucket). The
        teacher always reads the full 30 s window. Unreadable audio is skipped. Labels are -100 on the prompt and on
        padding."""
        from tqdm import tqdm

        from speechprune.data.audio import readable_clips
        from speechprune.data.features import WINDOW_SECONDS, FeatureFrontend, real_frames

        frontend = FeatureFrontend(self.n_mels)
        batches = []
        starts = range(0, len(utterances), batch_size)
        for i in tqdm(starts, desc="label", unit="batch", disable=not progress, dynamic_ncols=True):
            utts, audios = readable_clips(utterances[i : i + batch_size], WINDOW_SECONDS)
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
            if frames:
                batch["frames"] = torch.tensor([real_frames(len(a)) for a in audios], dtype=torch.long)
            batches.append(batch)
        return batches

    def reference_batches(self, utterances, batch_size: int) -> list[dict]:
        """Teacher-forcing batches whose labels are the utterances' reference texts (``labelled_batches`` without
        pseudo labels): what a client fine-tunes on. Clips without text are skipped."""
        from speechprune.errors import ManifestError

        batches = self.labelled_batches([u for u in utterances if u.text.strip()], batch_size, pseudo_labels=False)
        if not batches:
            raise ManifestError("none of the clips can be fine-tuned on (unreadable, over 30 s or without text)")
        return batches
