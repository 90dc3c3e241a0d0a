"""Training a language model from a recipe (``family: lm``): next-token cross-entropy on lines of text, AdamW with
warm-up and cosine or linear decay; resumable.

``OUT/checkpoint.safetensors`` (weights, optimizer, step, losses) is written atomically every ``checkpoint_every``
steps; a rerun of the same recipe resumes from it and ends where an unbroken run would: the batches are fixed by
the data, their order is a pure function of the seed and the step (``recovery.distill.batch_order``), dropout is
reseeded from the step. ``OUT/log.jsonl`` gets the loss every 10 steps and the dev perplexity every ``eval_every``
steps; ``OUT/model/`` the final model (with its tokenizer), ``OUT/step-N/`` the models of ``save_steps``,
``OUT/train.json`` the record.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.text import CORPORA, spread, text_lines
from ..errors import ConfigError
from ..evaluate.perplexity import perplexity_metrics, score_sequences
from ..io import append_jsonl, atomic_write_json, read_jsonl_tolerant
from ..models.ctc.config import ENGLISH_CHARS
from ..models.lm import (CharTokens, LMConfig, LMModel, WhisperTokens, folder_tokenizer, is_lm_folder, load_lm,
                         load_tokenizer, recognizer_identity, save_lm)
from ..models.lm.batches import Sequences, collate, encode_lines, length_batches
from ..models.lm.flops import mean_token_flops
from ..recovery.distill import batch_order, save_recovery_state
from ..scale.distributed import data_parallel
from .recipe import LMTrainRecipe, recipe_json
from .resume import resume


def training_text(recipe: LMTrainRecipe, progress: bool = True) -> tuple[list[str], list[str], dict]:
    """The training lines (``text``'s train split, then ``add_train``; ``max_lines`` of them drawn with the seed),
    the dev lines (``valid_lines`` spread over the dev text) and how many lines each spec gave."""
    d = recipe.data
    sets = {d.text: text_lines(d.text, "train", d.form, training=True, progress=progress)}
    for spec in d.add_train:
        sets[spec] = text_lines(spec, None, d.form, training=True, progress=progress)
    train = [s for lines in sets.values() for s in lines]
    if d.max_lines and d.max_lines < len(train):
        keep = sorted(random.Random(recipe.seed).sample(range(len(train)), d.max_lines))
        train = [train[i] for i in keep]
    valid_spec = d.valid or d.text
    valid_split = "dev" if d.valid is None or valid_spec in CORPORA else None
    valid = spread(text_lines(valid_spec, valid_split, d.form, training=True, progress=progress), d.valid_lines)
    return train, valid, {"train": {k: len(v) for k, v in sets.items()}, "valid": {valid_spec: len(valid)}}


def _kept_ids(seqs: Sequences, n_vocab: int, min_count: int, eot: int) -> np.ndarray:
    counts = np.bincount(seqs.rows, minlength=n_vocab)
    counts[eot] = max(counts[eot], min_count)  # the line boundary always has a row
    return np.flatnonzero(counts >= min_count)


def _remap(seqs: Sequences, whisper_ids: np.ndarray, n_vocab: int) -> Sequences:
    """Whisper ids as a kept model's rows (the ids it has no row for as its last row, counted in ``oov``)."""
    table = np.full(n_vocab, len(whisper_ids), dtype=np.int64)
    table[whisper_ids] = np.arange(len(whisper_ids))
    rows = table[seqs.rows]
    return Sequences(rows, seqs.starts, seqs.lengths, int((rows == len(whisper_ids)).sum()), seqs.truncated,
                     seqs.words)


def build_model(recipe: LMTrainRecipe, train: list[str], valid: list[str], source=None):
    """``(model, tokenizer or None, train sequences, dev sequences)``: a new model sized by ``recipe.model`` (a kept
    vocabulary counted on ``train``) or the LM of ``model.init``."""
    spec = recipe.model
    if spec.init is not None:
        if not is_lm_folder(spec.init):
            raise ConfigError(f"bad recipe: model.init: {spec.init} is not an LM folder", source)
        model = load_lm(spec.init)
        if model.config.tokens != spec.tokens:
            raise ConfigError(f"bad recipe: model.tokens: {spec.init} reads {model.config.tokens} tokens", source)
        if model.config.text != recipe.data.form:
            raise ConfigError(f"bad recipe: data.form: {spec.init} was trained on {model.config.text} text", source)
        tokenizer = folder_tokenizer(spec.init, model.config)
        if tokenizer is None:
            tokens = CharTokens(model.config.chars)
        else:
            tokens = WhisperTokens(tokenizer, model.whisper_ids.tolist() if model.config.kept else None)
        ctx = model.config.context
        return model, tokenizer, encode_lines(tokens, train, ctx), encode_lines(tokens, valid, ctx)
    common = dict(text=recipe.data.form, d_model=spec.d_model, n_layers=spec.n_layers, n_heads=spec.n_heads,
                  ffn_dim=spec.ffn_dim, context=spec.context, positions=spec.positions, dropout=spec.dropout)
    if spec.tokens == "chars":
        cfg = LMConfig(tokens="chars", chars=ENGLISH_CHARS, vocab_size=len(ENGLISH_CHARS) + 1, **common)
        tokens = CharTokens(ENGLISH_CHARS)
        torch.manual_seed(recipe.seed)
        return LMModel(cfg), None, encode_lines(tokens, train, spec.context), encode_lines(tokens, valid, spec.context)
    from ..models.registry import resolve_model

    folder = resolve_model(spec.tokenizer)
    identity = recognizer_identity(folder)
    tokenizer = load_tokenizer(folder)
    whole = WhisperTokens(tokenizer)  # Whisper ids as rows; remapped below when only the seen ones are kept
    seqs, dev = encode_lines(whole, train, spec.context), encode_lines(whole, valid, spec.context)
    if not spec.keep_seen_tokens:
        cfg = LMConfig(tokens="whisper", tokenizer=identity, vocab_size=identity.n_vocab, **common)
        torch.manual_seed(recipe.seed)
        return LMModel(cfg), tokenizer, seqs, dev
    kept = _kept_ids(seqs, identity.n_vocab, spec.keep_min_count, whole.eot)
    cfg = LMConfig(tokens="whisper", tokenizer=identity, vocab_size=len(kept) + 1, kept=True,
                   unseen_log_prob=spec.unseen_log_prob, **common)
    torch.manual_seed(recipe.seed)
    model = LMModel(cfg)
    model.whisper_ids.copy_(torch.from_numpy(kept))
    return model, tokenizer, _remap(seqs, kept, identity.n_vocab), _remap(dev, kept, identity.n_vocab)


def _fingerprint(recipe: LMTrainRecipe, model: LMModel, seqs: Sequences) -> str:
    h = hashlib.sha256(recipe_json(recipe).encode())
    h.update(json.dumps([len(seqs), int(seqs.lengths.sum())]).encode())
    h.update(hashlib.sha256(seqs.rows.tobytes()).digest())
    h.update(json.dumps([(k, list(v.shape)) for k, v in model.state_dict().items()]).encode())
    return h.hexdigest()[:32]


def lr_at(recipe: LMTrainRecipe, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine or linear decay from ``lr`` to ``min_lr * lr``."""
    if recipe.warmup and step < recipe.warmup:
        return recipe.lr * (step + 1) / recipe.warmup
    span = max(1, recipe.steps - recipe.warmup)
    frac = min(1.0, (step - recipe.warmup) / span)
    shape = 0.5 * (1 + math.cos(math.pi * frac)) if recipe.schedule == "cosine" else 1 - frac
    return recipe.lr * (recipe.min_lr + (1 - recipe.min_lr) * shape)


def train_lm(recipe: LMTrainRecipe, out: str | Path, device: str = "cpu", progress: bool = True,
             source: str | Path | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, valid, counts = training_text(recipe, progress)
    model, tokenizer, seqs, dev = build_model(recipe, train, valid, source)
    model.to(device)
    chars = model.config.tokens == "chars"
    batches = length_batches(seqs, recipe.batch_tokens)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay, betas=(0.9, 0.95))
    fingerprint = _fingerprint(recipe, model, seqs)
    ckpt, start, losses = resume(out, model, opt, fingerprint)
    t0 = time.perf_counter()
    dp = data_parallel(device)
    dp.shares(recipe.accumulate)  # a world size that does not divide the global batch fails before any work
    order = batch_order(len(batches), recipe.seed, start * recipe.accumulate)
    ppl = None
    model.train()
    bar = tqdm(range(start, recipe.steps), desc="train lm", disable=not progress or not dp.main, initial=start,
               total=recipe.steps)
    for step in bar:
        idx = [next(order) for _ in range(recipe.accumulate)]
        for g in opt.param_groups:
            g["lr"] = lr_at(recipe, step)

        def loss_of(j: int) -> torch.Tensor:
            batch = collate(seqs, batches[idx[j]], 0, device)
            # dropout: a pure function of the step and the batch's place in it, on any process
            torch.manual_seed(recipe.seed * 1_000_003 + step * recipe.accumulate + j)
            return model(batch["ids"], batch["targets"]).loss

        opt.zero_grad(set_to_none=True)
        losses.append(dp.backward(list(model.parameters()), recipe.accumulate, loss_of))
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        done = step + 1
        if not dp.main:  # under torchrun one process evaluates and writes
            continue
        if done % 10 == 0:
            append_jsonl(out / "log.jsonl", {"step": done, "loss": float(np.mean(losses[-10:])),
                                             "lr": lr_at(recipe, step)})
        if done % recipe.eval_every == 0 or done == recipe.steps:
            m = perplexity_metrics(score_sequences(model, dev, recipe.batch_tokens * 2, device), dev, chars)
            ppl = m["ppl"]
            append_jsonl(out / "log.jsonl", {"step": done, "valid": m})
        bar.set_postfix(loss=f"{losses[-1]:.3f}", dev_ppl="-" if ppl is None else f"{ppl:.1f}")
        if done in recipe.save_steps:
            save_lm(model, out / f"step-{done}", tokenizer, overwrite=True)
        if done % recipe.checkpoint_every == 0 or done == recipe.steps:
            save_recovery_state(ckpt, model, opt, {"fingerprint": fingerprint, "step": done, "losses": losses})
    model.eval()
    if not dp.main:
        return {}
    save_lm(model, out / "model", tokenizer, overwrite=True)
    evals = [r for r in read_jsonl_tolerant(out / "log.jsonl") if "valid" in r]
    cfg = model.config
    record = {"recipe": recipe.model_dump(), "config": cfg.model_dump(exclude={"structure"}),
              "params": sum(p.numel() for p in model.parameters()), "flops_per_token": mean_token_flops(cfg),
              "data": {"lines": counts, "train_lines": len(seqs), "train_tokens": seqs.targets,
                       "train_words": seqs.words, "train_oov": seqs.oov, "truncated_lines": seqs.truncated,
                       "batches": len(batches), "epochs": recipe.steps / len(batches),
                       "valid_lines": len(dev), "valid_tokens": dev.targets},
              "valid": evals[-1]["valid"] if evals else None, "final_loss": float(np.mean(losses[-20:])),
              "minutes_this_run": (time.perf_counter() - t0) / 60, "threads": torch.get_num_threads(),
              "device": device, "model": str(out / "model")}
    atomic_write_json(out / "train.json", record)
    return record
