"""Perplexity of a language model on text (``speechprune eval LM_FOLDER TEXT``): every line scored from its start,
as fusion into a search reads the LM.

``ppl`` is ``exp`` of the mean negative log-likelihood over the scored tokens (each line's tokens and its end), with
a Whisper id the LM keeps no row for scored at its stated floor (``unseen_log_prob``: what ``whisper_log_probs``
gives fusion); ``ppl_seen`` leaves those out; ``ppl_word`` spreads the same total over the words (and line ends),
so LMs over other tokens compare. ``oov_share``: the text's tokens the LM has no row for (Whisper ids at the floor;
characters outside a character LM's vocabulary, dropped before scoring).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..io import atomic_write_json
from ..models.lm.batches import Sequences, collate, encode_lines, length_batches


def unseen_row(model) -> int | None:
    """The row a kept-vocabulary LM reads unseen Whisper ids as (None: every id has its own)."""
    return model.config.vocab_size - 1 if model.config.kept else None


@torch.inference_mode()
def score_sequences(model, seqs: Sequences, batch_tokens: int = 8192, device="cpu", progress: bool = False) -> dict:
    """``nll`` (total, unseen ids at the floor), ``nll_seen`` and ``tokens``/``seen`` scored, and ``seconds`` of
    forward passes."""
    was = model.training
    model.eval()
    unseen = unseen_row(model)
    floor = -model.config.unseen_log_prob
    nll = nll_seen = 0.0
    n = n_seen = 0
    seconds = 0.0
    for batch in tqdm(length_batches(seqs, batch_tokens), desc="perplexity", disable=not progress):
        b = collate(seqs, batch, 0, device)
        t0 = time.perf_counter()
        out = model(b["ids"], b["targets"])
        seconds += time.perf_counter() - t0
        scored = b["targets"] != -100
        at_floor = b["targets"] == unseen if unseen is not None else torch.zeros_like(scored)
        seen = scored & ~at_floor
        part = float(out.nll.double()[seen].sum())
        nll_seen, n_seen = nll_seen + part, n_seen + int(seen.sum())
        nll, n = nll + part + floor * int(at_floor.sum()), n + int(scored.sum())
    model.train(was)
    return {"nll": nll, "tokens": n, "nll_seen": nll_seen, "seen": n_seen, "seconds": seconds}


def perplexity_metrics(scores: dict, seqs: Sequences, chars: bool) -> dict:
    """The metrics of ``score_sequences``'s totals (see the module docstring)."""
    n, seen = scores["tokens"], scores["seen"]
    at_floor = n - seen
    oov = seqs.oov if chars else at_floor
    text_tokens = n + seqs.oov if chars else n
    return {
        "ppl": math.exp(scores["nll"] / n) if n else None,
        "ppl_seen": math.exp(scores["nll_seen"] / seen) if seen else None,
        "ppl_word": math.exp(scores["nll"] / (seqs.words + len(seqs))) if len(seqs) else None,
        "nll_per_token": scores["nll"] / n if n else None,
        "lines": len(seqs), "tokens": n, "words": seqs.words, "oov": oov,
        "oov_share": oov / text_tokens if text_tokens else 0.0,
        "truncated_lines": seqs.truncated,
        "tokens_per_second": n / scores["seconds"] if scores["seconds"] > 0 else None,
    }


def evaluate_perplexity(folder: str | Path, text: str, split: str | None = None, out: str | Path | None = None,
                        batch_tokens: int = 8192, limit: int | None = None, device: str = "cpu",
                        form: str | None = None, progress: bool = True) -> dict:
    """Perplexity of the LM in ``folder`` on ``text`` (a corpus name: its ``split``, default test; an audio set's
    transcripts; a text file; ``limit``: that many lines spread over it), in the form of text it was trained on
    unless ``form``; written to ``out/metrics.json`` when ``out`` is given."""
    from ..data.text import spread, text_lines
    from ..models.lm import folder_tokens, load_lm

    model = load_lm(folder, device=device)
    tokens = folder_tokens(folder, model)
    form = form or model.config.text
    lines = spread(text_lines(text, split, form=form, progress=progress), limit)
    seqs = encode_lines(tokens, lines, model.config.context)
    scores = score_sequences(model, seqs, batch_tokens, device, progress)
    metrics = {**perplexity_metrics(scores, seqs, model.config.tokens == "chars"),
               "settings": {"model": str(folder), "text": text, "split": split, "form": form, "limit": limit,
                            "tokens": model.config.tokens, "unseen_log_prob": model.config.unseen_log_prob
                            if model.config.kept else None, "context": model.config.context,
                            "threads": torch.get_num_threads(), "device": device}}
    if out is not None:
        atomic_write_json(Path(out) / "metrics.json", metrics)
    return metrics
