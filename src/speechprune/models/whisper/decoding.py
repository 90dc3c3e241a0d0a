"""Whisper decoding with a key/value cache: batched greedy and beam search over one shared prompt scheme
(``decoding_prompts``: every Whisper backend, PyTorch, ONNX Runtime or CTranslate2, decodes the same prompts).

The loops here drive any Whisper-shaped PyTorch model through two callables (``step`` below), so the same
search code serves dense and pruned models. Token rules follow the reference implementation and
CTranslate2: ``suppress_tokens`` at every step, ``begin_suppress_tokens`` at the first generated step,
``<|notimestamps|>`` in the prompt, stop at end-of-text.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from speechprune.errors import ConfigError, ModelError
from speechprune.models.decoding import DecodeOptions, DecodeStats


@dataclass(frozen=True)
class WhisperVocab:
    """The special tokens and suppression lists one Whisper checkpoint decodes with."""

    sot: int
    eot: int
    no_timestamps: int
    suppress: tuple[int, ...]
    begin_suppress: tuple[int, ...]
    lang_to_id: dict[str, int] = field(default_factory=dict)  # "en" -> id of <|en|>
    task_to_id: dict[str, int] = field(default_factory=dict)

    @property
    def multilingual(self) -> bool:
        return bool(self.lang_to_id)

    def prompt(self, language: str | None, task: str | None) -> list[int]:
        """``<|startoftranscript|>[<|lang|><|task|>]<|notimestamps|>``."""
        if not self.multilingual:
            if language not in (None, "en"):
                raise ConfigError(f"this English-only model cannot decode language {language!r}")
            if task == "translate":
                raise ConfigError("this English-only model cannot translate")
            return [self.sot, self.no_timestamps]
        if language is None:
            raise ValueError("a multilingual prompt needs a language (detect it first)")
        if language not in self.lang_to_id:
            raise ConfigError(f"unknown language {language!r} for this model")
        return [self.sot, self.lang_to_id[language], self.task_to_id[task or "transcribe"], self.no_timestamps]

    @classmethod
    def from_folder(cls, folder: str | Path) -> "WhisperVocab":
        """Read from a Hugging Face Whisper folder's ``generation_config.json``."""
        path = Path(folder) / "generation_config.json"
        try:
            g = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ModelError(f"cannot read generation config ({e.__class__.__name__})", path) from None
        lang_to_id = {k.strip("<|>"): v for k, v in (g.get("lang_to_id") or {}).items()}
        task_to_id = dict(g.get("task_to_id") or {})
        if lang_to_id and not task_to_id:
            raise ModelError("multilingual generation config without task_to_id", path)
        return cls(
            sot=int(g["decoder_start_token_id"]),
            eot=int(g["eos_token_id"]),
            no_timestamps=int(g["no_timestamps_token_id"]),
            suppress=tuple(g.get("suppress_tokens") or ()),
            begin_suppress=tuple(g.get("begin_suppress_tokens") or ()),
            lang_to_id=lang_to_id if g.get("is_multilingual", bool(lang_to_id)) else {},
            task_to_id=task_to_id,
        )


class Fusion(Protocol):
    """What beam search asks of shallow fusion (``models.fusion.WhisperScorer``)."""

    def fuse(self, log_probs: torch.Tensor) -> torch.Tensor: ...

    def advance(self, index: torch.Tensor, tokens: torch.Tensor) -> None: ...

    @property
    def seconds(self) -> float: ...  # wall time in the LM's steps so far


# step(input_ids [N, t], cache) -> log-probs or logits [N, V] for the last position; the cache grows in place.
StepFn = Callable[[torch.Tensor, object], torch.Tensor]


@dataclass
class GraphCache:
    """Decoder state between steps of the split decoder graphs (``graph``; ONNX Runtime's numpy
    arrays or torch tensors): self-attention K/V per present block (``[N, H, S, hd]``), cross-attention K/V
    (``[N / group, H, T, hd]``: ``group`` consecutive rows share one), and the next position."""

    group: int
    self_kv: list = field(default_factory=list)
    cross_kv: list = field(default_factory=list)
    position: int = 0


def _rows(a, rows: np.ndarray):
    return a[rows] if isinstance(a, np.ndarray) else a.index_select(0, torch.as_tensor(rows, device=a.device))


def reorder_cache(cache: GraphCache, index: torch.Tensor) -> None:
    """Rows ``index`` of the self-attention cache become the new rows. Cross-attention rows follow only when a row
    moves to another item's group (beam search never does that), which expands them to one per row."""
    idx = index.cpu().numpy()
    cache.self_kv = [_rows(a, idx) for a in cache.self_kv]
    src_items = idx // cache.group
    if not np.array_equal(src_items, np.arange(len(idx)) // cache.group):
        cache.cross_kv = [_rows(a, src_items) for a in cache.cross_kv]
        cache.group = 1


def _suppression_bias(vocab_size: int, ids: tuple[int, ...], device, dtype) -> torch.Tensor:
    bias = torch.zeros(vocab_size, device=device, dtype=dtype)
    ids = [i for i in ids if 0 <= i < vocab_size]
    if ids:
        bias[ids] = float("-inf")
    return bias


def _check_prompts(prompts: list[list[int]]) -> torch.Tensor:
    if not prompts:
        raise ValueError("no prompts")
    if len({len(p) for p in prompts}) != 1:
        raise ValueError("prompts in one batch must have one length")
    return torch.tensor(prompts, dtype=torch.long)


@torch.inference_mode()
def _record_step(stats: DecodeStats, i: int, t0: float, sync: Callable[[], None]) -> float:
    """Wait for the device, then add the time since ``t0`` to step ``i``'s total (the first step's, which holds the
    prompt and cross-attention, or the later steps'); returns the time now."""
    sync()
    now = time.perf_counter()
    if i == 0:
        stats.first_step_s += now - t0
    else:
        stats.later_steps_s += now - t0
        stats.later_steps += 1
    return now


def greedy_search(
    step: StepFn,
    new_cache: Callable[[], object],
    prompts: list[list[int]],
    vocab: WhisperVocab,
    max_new_tokens: int,
    device: torch.device | str = "cpu",
    sync: Callable[[], None] = lambda: None,
) -> tuple[list[list[int]], DecodeStats]:
    """Greedy decoding of a batch. Returns the generated tokens (no prompt, no end-of-text) per item."""
    ids = _check_prompts(prompts).to(device)
    batch = ids.shape[0]
    cache = new_cache()
    stats = DecodeStats()
    out: list[list[int]] = [[] for _ in range(batch)]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    suppress = begin = None
    t0 = time.perf_counter()
    for i in range(max_new_tokens):
        logits = step(ids, cache)
        if suppress is None:
            suppress = _suppression_bias(logits.shape[-1], vocab.suppress, logits.device, logits.dtype)
            begin = _suppression_bias(logits.shape[-1], vocab.begin_suppress, logits.device, logits.dtype)
        logits = logits + suppress + (begin if i == 0 else 0)
        nxt = logits.argmax(dim=-1)
        nxt = torch.where(finished, torch.full_like(nxt, vocab.eot), nxt)
        finished |= nxt == vocab.eot
        for b, tok in enumerate(nxt.tolist()):
            if tok != vocab.eot:
                out[b].append(tok)
        done = bool(finished.all())
        t0 = _record_step(stats, i, t0, sync)
        if done:
            break
        ids = nxt[:, None]
    return out, stats


@torch.inference_mode()
def beam_search(
    step: StepFn,
    new_cache: Callable[[], object],
    reorder: Callable[[object, torch.Tensor], None],
    prompts: list[list[int]],
    vocab: WhisperVocab,
    beam_size: int,
    max_new_tokens: int,
    length_penalty: float | None = None,
    device: torch.device | str = "cpu",
    sync: Callable[[], None] = lambda: None,
    fusion: Fusion | None = None,
) -> tuple[list[list[int]], DecodeStats]:
    """Beam search with patience 1, as in the reference implementation.

    ``step`` sees ``batch * beam_size`` rows (item-major) from the first call on; the caller's encoder output
    must be repeated accordingly. Each beam proposes its ``beam_size + 1`` best continuations; the best
    ``beam_size`` unfinished ones go on, finished ones are collected until an item has ``beam_size`` of them.
    ``fusion`` (shallow fusion, ``models.fusion.WhisperScorer``) adds its LM term to every step's log-probabilities
    and follows the rows as they are reordered; scores, ranking and stopping are otherwise the same.
    """
    prompt = _check_prompts(prompts)
    batch, k = prompt.shape[0], beam_size
    ids = prompt.repeat_interleave(k, dim=0).to(device)
    cache = new_cache()
    stats = DecodeStats()
    # per row: cumulative log-prob; per item: finished (score, tokens)
    scores = torch.zeros(batch * k, device=device)
    seqs: list[list[int]] = [[] for _ in range(batch * k)]
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    item_done = [False] * batch
    suppress = begin = None

    def rank(logprob_sum: float, length: int) -> float:
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        return logprob_sum / max(penalty, 1e-9)

    lm_start = fusion.seconds if fusion is not None else 0.0
    t0 = time.perf_counter()
    for i in range(max_new_tokens):
        logits = step(ids, cache).float()
        if suppress is None:
            suppress = _suppression_bias(logits.shape[-1], vocab.suppress, logits.device, logits.dtype)
            begin = _suppression_bias(logits.shape[-1], vocab.begin_suppress, logits.device, logits.dtype)
        logprobs = torch.log_softmax(logits + suppress + (begin if i == 0 else 0), dim=-1)
        if fusion is not None:
            logprobs = fusion.fuse(logprobs)
        if i == 0:  # all beams of an item are identical: let only the first one propose
            logprobs.view(batch, k, -1)[:, 1:] = float("-inf")
        cand = scores[:, None] + logprobs
        top_scores, top_tokens = cand.view(batch, -1).topk(k + 1, dim=-1)  # over beams x vocab
        top_scores, top_tokens = top_scores.tolist(), top_tokens.tolist()
        vocab_size = logprobs.shape[-1]
        src_rows, new_tokens, new_scores = [], [], []
        for b in range(batch):
            kept = 0
            for s, flat in zip(top_scores[b], top_tokens[b]):
                row, tok = b * k + flat // vocab_size, flat % vocab_size
                if item_done[b] or s == float("-inf"):
                    break
                if tok == vocab.eot:
                    if len(finished[b]) < k:
                        finished[b].append((rank(s, len(seqs[row])), seqs[row]))
                    continue
                if kept < k:
                    src_rows.append(row)
                    new_tokens.append(tok)
                    new_scores.append(s)
                    kept += 1
            # rows of finished items (or items with too few live candidates) keep a dummy continuation
            while kept < k:
                src_rows.append(b * k)
                new_tokens.append(vocab.eot)
                new_scores.append(float("-inf"))
                kept += 1
            if len(finished[b]) >= k:
                item_done[b] = True
        t0 = _record_step(stats, i, t0, sync)  # what follows (reorder, the LM's step) counts to the next step
        if all(item_done):
            break
        index = torch.tensor(src_rows, device=device)
        reorder(cache, index)
        if fusion is not None and i + 1 < max_new_tokens:  # one LM step per decoder step
            fusion.advance(index, torch.tensor(new_tokens))
        seqs = [seqs[r] + [t] for r, t in zip(src_rows, new_tokens)]
        scores = torch.tensor(new_scores, device=device)
        ids = torch.tensor(new_tokens, device=device)[:, None]

    if fusion is not None:
        stats.lm_s = fusion.seconds - lm_start
    out = []
    for b in range(batch):
        if not finished[b]:  # ran out of length: fall back to the live beams
            finished[b] = [
                (rank(float(scores[r]), len(seqs[r])), seqs[r])
                for r in range(b * k, b * k + k)
                if scores[r] > float("-inf")
            ]
        out.append(max(finished[b], key=lambda x: x[0])[1] if finished[b] else [])
    return out, stats


def _languages_for(vocab: WhisperVocab, languages: list[str | None], options: DecodeOptions) -> list[str | None]:
    """Fill in each item's language: its own, else the option's; English-only models are always 'en'."""
    if not vocab.multilingual:
        return ["en" if (lang or options.language) in (None, "en") else (lang or options.language) for lang in languages]
    return [lang or options.language for lang in languages]


def decoding_prompts(backend, encoded, languages, tasks, options: DecodeOptions) -> tuple[list, list[list[int]]]:
    """Each item's language (its own, the option's, or detected by ``backend.detect_language`` on a multilingual
    model) and its decoder prompt; shared by every Whisper backend so they decode the same prompts."""
    langs = _languages_for(backend.vocab, list(languages), options)
    if backend.vocab.multilingual and any(lang is None for lang in langs):
        detected = backend.detect_language(encoded)
        langs = [lang or d for lang, d in zip(langs, detected)]
    return langs, [backend.vocab.prompt(lang, task or options.task) for lang, task in zip(langs, tasks)]
