"""Training a CTC model from a recipe: CTC on the references (normalized like the scoring), intermediate CTC
through the shared head, LayerDrop, AdamW with warmup and linear decay; resumable.

``OUT/checkpoint.safetensors`` (weights, optimizer, step, losses) is written atomically every
``checkpoint_every`` steps; a rerun of the same recipe resumes from it and ends where an unbroken run would: the
batch order is a pure function of the seed and the step (``recovery.distill.batch_order``) and the random state of
dropout and LayerDrop is reseeded from the step. ``OUT/log.jsonl`` gets the loss every 10 steps and the held-out
WER/CER every ``eval_every`` steps (at every exit when intermediate CTC is on); ``OUT/model/`` the final model with
the weights it started from (``init.safetensors``), ``OUT/step-N/`` the models of ``save_steps``, ``OUT/train.json``
the record.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data.audio import SAMPLE_RATE
from ..data.datasets import training_utterances
from ..data.features import HOP_SAMPLES
from ..errors import ConfigError
from ..evaluate.metrics import char_errors, word_errors
from ..io import append_jsonl, atomic_write_json, read_jsonl_tolerant
from ..models.ctc import (CharVocab, CTCConfig, CTCModel, from_whisper, greedy_ctc, is_ctc_folder, layerdrop_rates,
                          load_ctc, save_ctc)
from ..models.ctc.adapter import CTCAdapter
from ..models.ctc.batches import Example, collate, prepare_examples
from ..models.ctc.network import ctc_loss
from ..recovery.distill import batch_order, save_recovery_state
from ..scale.distributed import data_parallel
from .recipe import TrainRecipe, recipe_json
from .resume import resume

def build_model(recipe: TrainRecipe, source: str | Path | None = None) -> CTCModel:
    """The untrained model of ``recipe.model`` (a Whisper encoder with a new head, or fresh weights; seeded)."""
    spec = recipe.model
    if spec.init is not None and is_ctc_folder(spec.init):
        model = load_ctc(spec.init)
        if model.config.encoder != spec.encoder:
            raise ConfigError(f"bad recipe: model.encoder: {spec.init} holds a {model.config.encoder} encoder", source)
        if spec.n_layers is not None:
            if not 1 <= spec.n_layers <= model.depth:
                raise ConfigError(f"bad recipe: model.n_layers: {spec.n_layers} is outside the model's 1..{model.depth}",
                                  source)
            CTCAdapter().remove_layers(model, "encoder", list(range(spec.n_layers, model.depth)))
    elif spec.init is not None:
        from ..models.registry import resolve_model

        model = from_whisper(resolve_model(spec.init), n_layers=spec.n_layers, dropout=spec.dropout, seed=recipe.seed)
    else:
        cfg = CTCConfig(encoder=spec.encoder, d_model=spec.d_model, n_layers=spec.n_layers or 8, n_heads=spec.n_heads,
                        ffn_dim=spec.ffn_dim, conv_kernel=spec.conv_kernel, conv_norm=spec.conv_norm,
                        conv_groups=spec.conv_groups, dropout=spec.dropout)
        torch.manual_seed(recipe.seed)
        model = CTCModel(cfg)
    if recipe.intermediate is not None and max(recipe.intermediate.layers) >= model.depth:
        raise ConfigError(f"bad recipe: intermediate.layers: layer {max(recipe.intermediate.layers)} is not below the "
                          f"model's {model.depth} layers", source)
    return model


def training_loss(model: CTCModel, batch: dict, recipe: TrainRecipe) -> tuple[torch.Tensor, dict[str, float]]:
    """CTC of the last layer, mixed with the mean CTC of the intermediate exits when the recipe asks for them."""
    inter = recipe.intermediate
    taps = tuple(inter.layers) if inter else ()
    drop = layerdrop_rates(model.depth, recipe.layerdrop.rate, recipe.layerdrop.schedule) if recipe.layerdrop else None
    enc = model.encode(batch["features"], batch["lengths"], taps=taps, layerdrop=drop)
    final = ctc_loss(model.log_probs(enc.hidden), enc.lengths, batch["targets"], batch["target_lengths"])
    if not inter:
        return final, {"ctc": final.item()}
    mids = [ctc_loss(model.log_probs(enc.taps[k]), enc.lengths, batch["targets"], batch["target_lengths"])
            for k in inter.layers]
    mid = torch.stack(mids).mean()
    return (1 - inter.weight) * final + inter.weight * mid, {"ctc": final.item(), "inter_ctc": mid.item()}


@torch.inference_mode()
def score_exits(model: CTCModel, examples: list[Example], vocab: CharVocab, exits: list[int], device,
                batch_size: int = 16) -> dict[int, dict]:
    """Greedy WER and CER of ``examples`` at each exit layer."""
    was = model.training
    model.eval()
    hyps: dict[int, list[str]] = {k: [] for k in exits}
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        batch = collate(chunk, device)
        enc = model.encode(batch["features"], batch["lengths"], taps=tuple(exits))
        for k in exits:
            ids = greedy_ctc(model.log_probs(enc.taps[k]), enc.lengths)
            hyps[k] += [vocab.decode(x) for x in ids]
    model.train(was)
    refs = [e.text for e in examples]
    return {k: {"wer": word_errors(refs, h).rate, "cer": char_errors(refs, h).rate} for k, h in hyps.items()}


def _fingerprint(recipe: TrainRecipe, model: CTCModel, examples: list[Example]) -> str:
    h = hashlib.sha256(recipe_json(recipe).encode())
    h.update(json.dumps([e.id for e in examples]).encode())
    h.update(json.dumps([(k, list(v.shape)) for k, v in model.state_dict().items()]).encode())
    return h.hexdigest()[:32]


def _lr(recipe: TrainRecipe, step: int) -> float:
    warm = min(1.0, (step + 1) / recipe.warmup) if recipe.warmup else 1.0
    return recipe.lr * warm * max(0.0, 1.0 - step / recipe.steps)


def train_ctc(recipe: TrainRecipe, out: str | Path, device: str = "cpu", progress: bool = True,
              source: str | Path | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(recipe, source).to(device)
    init_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    vocab = CharVocab(model.config.vocab)

    utts = training_utterances(recipe.data, recipe.max_utterances, interleave=recipe.interleave)
    examples, skipped = prepare_examples(utts, vocab, model.config.n_mels, model.stem.receptive_field, progress)
    if len(examples) <= recipe.valid_utterances:
        raise ConfigError(f"bad recipe: data: {len(examples)} usable clips, not more than valid_utterances "
                          f"({recipe.valid_utterances}); skipped: {({k: len(v) for k, v in skipped.items()})}", source)
    valid, train = examples[: recipe.valid_utterances], examples[recipe.valid_utterances :]
    # batches of similar lengths (fixed once; their order is shuffled): little padding to pay for
    train = sorted(train, key=lambda e: (e.features.shape[1], e.id))
    n_batches = math.ceil(len(train) / recipe.batch_size)
    exits = sorted({*(recipe.intermediate.layers if recipe.intermediate else ()), model.depth})

    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    fingerprint = _fingerprint(recipe, model, examples)
    ckpt, start, losses = resume(out, model, opt, fingerprint)
    t0 = time.perf_counter()
    dp = data_parallel(device)
    dp.shares(recipe.accumulate)  # a world size that does not divide the global batch fails before any work
    order = batch_order(n_batches, recipe.seed, start * recipe.accumulate)
    model.train()
    bar = tqdm(range(start, recipe.steps), desc="train", disable=not progress or not dp.main, initial=start,
               total=recipe.steps)
    for step in bar:
        idx = [next(order) for _ in range(recipe.accumulate)]
        for g in opt.param_groups:
            g["lr"] = _lr(recipe, step)
        parts: dict[str, float] = {}

        def loss_of(j: int) -> torch.Tensor:
            batch = collate(train[idx[j] * recipe.batch_size : (idx[j] + 1) * recipe.batch_size], device)
            # dropout and LayerDrop: a pure function of the step and the batch's place in it, on any process
            torch.manual_seed(recipe.seed * 1_000_003 + step * recipe.accumulate + j)
            loss, p = training_loss(model, batch, recipe)
            parts.update(p)
            return loss

        opt.zero_grad(set_to_none=True)
        losses.append(dp.backward(list(model.parameters()), recipe.accumulate, loss_of))
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        done = step + 1
        if not dp.main:  # under torchrun one process evaluates and writes
            continue
        if done % 10 == 0:
            append_jsonl(out / "log.jsonl", {"step": done, "loss": float(np.mean(losses[-10:])), **parts})
        if done % recipe.eval_every == 0 or done == recipe.steps:
            scores = score_exits(model, valid, vocab, exits, device)
            append_jsonl(out / "log.jsonl", {"step": done, "valid": {str(k): v for k, v in scores.items()}})
        if done in recipe.save_steps:
            save_ctc(model, out / f"step-{done}", init_state=init_state, overwrite=True)
        if done % recipe.checkpoint_every == 0 or done == recipe.steps:
            save_recovery_state(ckpt, model, opt, {"fingerprint": fingerprint, "step": done, "losses": losses})
    model.eval()
    if not dp.main:
        return {}
    save_ctc(model, out / "model", init_state=init_state, overwrite=True)
    evals = [r for r in read_jsonl_tolerant(out / "log.jsonl") if "valid" in r]
    record = {"recipe": recipe.model_dump(), "config": model.config.model_dump(),
              "params": sum(p.numel() for p in model.parameters()),
              "data": {"specs": recipe.data, "clips": len(utts), "train": len(train), "valid": len(valid),
                       "train_seconds": sum(e.features.shape[1] for e in train) * HOP_SAMPLES / SAMPLE_RATE,
                       "skipped": {k: {"count": len(v), "examples": v[:5]} for k, v in skipped.items()}},
             "valid": evals[-1]["valid"] if evals else None, "final_loss": float(np.mean(losses[-20:])),
             "minutes_this_run": (time.perf_counter() - t0) / 60, "threads": torch.get_num_threads(),
             "device": device, "model": str(out / "model")}
    atomic_write_json(out / "train.json", record)
    return record
