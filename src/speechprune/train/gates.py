"""Training context-aware gates on a Whisper model from a recipe (``family: gates``, issue 20 item 2; the
``context: false`` baseline of item 4), and deploying one context's gates as a static pruned model (item 3).

Loss: the teacher-forced cross-entropy of the gated model (``models.whisper.gates.GatedWhisper``, every block run
and multiplied by its 0/1 gate so a skipped block's gate still gets a gradient) on the references (transcribe: the
transcript; translate: the English reference after the translate prompt, ``WhisperVocab.prompt``), plus
``sparsity_loss`` of the batch's skip share toward the target. Gates are straight-through Gumbel samples at the
annealed temperature. The model is frozen unless the recipe says otherwise.

Resumable like the other trainers: ``OUT/checkpoint.safetensors`` (the predictor, or predictor and model, the
optimizer, the step) every ``checkpoint_every`` steps; the batch order is ``batch_order(seed, step)`` and each
step's Gumbel noise comes from a generator seeded with the step, so a resumed run ends where an unbroken one would.
``OUT/log.jsonl``: one line per step (loss, cross-entropy, skip share, temperature, skip share per language/task).
At the end ``OUT/gates.safetensors`` + ``OUT/gates.json`` (``models.gates.save_gates``), ``OUT/model/`` when the
model trained too, and ``OUT/train.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from ..data.audio import load_audio, readable_clips
from ..data.datasets import training_utterances
from ..data.features import WINDOW_SECONDS, FeatureFrontend
from ..errors import ConfigError
from ..io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl_tolerant
from ..models.gates import (TrainedGates, context_inputs, load_gates, save_gates, skip_share, sparsity_loss,
                            temperature)
from ..models.whisper.decoding import WhisperVocab
from ..models.whisper.gates import (GatedWhisper, check_gates_fit, deploy_static, keep_map,
                                    whisper_gate_config)
from ..recovery.distill import batch_order, save_recovery_state
from .recipe import GateTrainRecipe
from .resume import LOG, resume


@dataclass(frozen=True)
class GateExample:
    id: str
    audio: Path
    language: str
    task: str
    prompt: tuple[int, ...]
    target: tuple[int, ...]  # reference tokens, without prompt and end-of-text

    @property
    def context(self) -> str:
        return f"{self.language}/{self.task}"


def gate_examples(utts, vocab: WhisperVocab, tokenizer, max_tokens: int, source=None) -> list[GateExample]:
    """One example per utterance: its language (required on a multilingual model) and task, its prompt and the
    tokens of its reference (the English translation for ``translate``). A one-line ``ConfigError`` names the first
    utterance without a language, with an empty reference, or in a language the model does not know."""
    out = []
    for u in utts:
        task = u.task or "transcribe"
        language = u.language or (None if vocab.multilingual else "en")
        if language is None:
            raise ConfigError(f"utterance {u.id!r} has no language: gate training needs each one's", source)
        text = u.translation if task == "translate" else u.text
        if not (text or "").strip():
            side = "English translation" if task == "translate" else "transcript"
            raise ConfigError(f"utterance {u.id!r} ({language}/{task}) has an empty {side}", source)
        try:
            prompt = vocab.prompt(language, task)
        except ConfigError as e:
            raise ConfigError(f"utterance {u.id!r}: {e}", source) from None
        target = tokenizer.encode(" " + text.strip(), add_special_tokens=False)[:max_tokens]
        out.append(GateExample(u.id, Path(u.audio), language, task, tuple(prompt), tuple(target)))
    return out


def collate(examples: list[GateExample], frontend: FeatureFrontend, eot: int, device) -> dict | None:
    """``features [B, n_mels, 3000]``, decoder ``ids`` and ``labels`` (-100 on prompt and padding) of the examples
    whose audio reads; None when none does."""
    kept, audios = readable_clips(examples, WINDOW_SECONDS)
    if not kept:
        return None
    seqs = [list(e.prompt) + list(e.target) + [eot] for e in kept]
    width = max(map(len, seqs)) - 1
    ids = torch.full((len(seqs), width), eot, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for b, (e, seq) in enumerate(zip(kept, seqs)):
        ids[b, : len(seq) - 1] = torch.tensor(seq[:-1])
        labels[b, len(e.prompt) - 1 : len(seq) - 1] = torch.tensor(seq[len(e.prompt):])
    return {"features": torch.from_numpy(frontend(audios)).to(device), "ids": ids.to(device),
            "labels": labels.to(device), "languages": [e.language for e in kept], "tasks": [e.task for e in kept],
            "contexts": [e.context for e in kept]}


def build_gated(recipe: GateTrainRecipe, device: str = "cpu"):
    """``(GatedWhisper, processor, vocab, model folder)``: the recipe's model with a fresh predictor (seeded)."""
    from ..models.registry import resolve_model
    from ..models.whisper.load import load_whisper

    folder = resolve_model(recipe.model)
    model, processor = load_whisper(folder, device=device)
    vocab = WhisperVocab.from_folder(folder)
    config = whisper_gate_config(model, vocab, sparsity=recipe.sparsity, alpha=recipe.alpha,
                                 tau_start=recipe.tau_start, tau_end=recipe.tau_end,
                                 anneal_steps=recipe.anneal_steps or recipe.steps, init_keep=recipe.init_keep,
                                 hidden=recipe.hidden)
    torch.manual_seed(recipe.seed)
    gated = GatedWhisper(model, config).to(device)
    model.eval()
    model.requires_grad_(not recipe.freeze_model)
    return gated, processor, vocab, folder


def _fingerprint(recipe: GateTrainRecipe, trainable: torch.nn.Module, examples: list[GateExample]) -> str:
    h = hashlib.sha256(recipe.model_dump_json().encode())
    h.update(json.dumps([[e.id, e.context, len(e.target)] for e in examples]).encode())
    h.update(json.dumps([(k, list(v.shape)) for k, v in trainable.state_dict().items()]).encode())
    return h.hexdigest()[:32]


def _by_context(keep: torch.Tensor, contexts: list[str]) -> dict[str, float]:
    rows: dict[str, list[int]] = {}
    for i, c in enumerate(contexts):
        rows.setdefault(c, []).append(i)
    return {c: float(1.0 - keep.detach()[idx].mean()) for c, idx in sorted(rows.items())}


def train_gates(recipe: GateTrainRecipe, out: str | Path, device: str = "cpu", progress: bool = True,
                source: str | Path | None = None) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    gated, processor, vocab, folder = build_gated(recipe, device)
    predictor = gated.predictor
    utts = training_utterances(recipe.data, recipe.max_utterances, interleave=recipe.interleave)
    examples = gate_examples(utts, vocab, processor.tokenizer, recipe.max_target_tokens, source)
    if not examples:
        raise ConfigError("bad recipe: data: no utterances", source)
    predictor._ids([e.language for e in examples], predictor.language_index, "language")
    frontend = FeatureFrontend(int(gated.model.config.num_mel_bins))
    n_batches = math.ceil(len(examples) / recipe.batch_size)

    trainable = predictor if recipe.freeze_model else gated
    groups = [{"params": list(predictor.parameters()), "lr": recipe.lr}]
    if not recipe.freeze_model:
        groups.append({"params": list(gated.model.parameters()), "lr": recipe.model_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    fingerprint = _fingerprint(recipe, trainable, examples)
    ckpt, start, losses = resume(out, trainable, opt, fingerprint)
    if start:  # the log keeps the steps the checkpoint holds
        kept = [r for r in read_jsonl_tolerant(out / LOG) if r.get("step", 0) <= start]
        atomic_write_text(out / LOG, "".join(json.dumps(r) + "\n" for r in kept))
    t0 = time.perf_counter()
    order = batch_order(n_batches, recipe.seed, start)
    predictor.train()
    params = [p for g in groups for p in g["params"]]
    bar = tqdm(range(start, recipe.steps), desc="train gates", disable=not progress, initial=start,
               total=recipe.steps)
    anneal = recipe.anneal_steps or recipe.steps
    for step in bar:
        idx = next(order)
        batch = collate(examples[idx * recipe.batch_size: (idx + 1) * recipe.batch_size], frontend, vocab.eot, device)
        if batch is None:
            raise ConfigError(f"no audio in batch {idx} could be read", source)
        tau = temperature(step, recipe.tau_start, recipe.tau_end, anneal)
        gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
        langs, tasks, feats = context_inputs(predictor, recipe.context, batch["languages"], batch["tasks"],
                                             batch["features"])
        keep = predictor.gates(langs, tasks, feats, tau=tau, generator=gen)
        logits = gated(batch["features"], batch["ids"], keep)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)
        share = skip_share(keep)
        sl = sparsity_loss(share, recipe.sparsity, recipe.alpha)
        loss = ce + sl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        losses.append(loss.item())
        done = step + 1
        append_jsonl(out / LOG, {"step": done, "loss": loss.item(), "ce": ce.item(), "sparsity_loss": sl.item(),
                                 "skip": share.item(), "tau": tau, "by_context": _by_context(keep, batch["contexts"])})
        bar.set_postfix(loss=f"{losses[-1]:.3f}", skip=f"{share.item():.2f}")
        if done % recipe.checkpoint_every == 0 or done == recipe.steps:
            save_recovery_state(ckpt, trainable, opt, {"fingerprint": fingerprint, "step": done, "losses": losses})
    predictor.eval()
    model_ref = recipe.model
    if not recipe.freeze_model:
        from ..models.checkpoint import save_pruned

        save_pruned(gated.model, processor, out / "model", overwrite=True)
        model_ref = str((out / "model").resolve())
    save_gates(out, predictor, recipe.context, {"model": model_ref, "base_model": recipe.model,
                                                "recipe": recipe.model_dump(mode="json")})
    log = [r for r in read_jsonl_tolerant(out / LOG) if "step" in r]
    tail = log[-20:]
    contexts = sorted({c for r in tail for c in r["by_context"]})
    counts: dict[str, int] = {}
    for e in examples:
        counts[e.context] = counts.get(e.context, 0) + 1
    record = {"recipe": recipe.model_dump(mode="json"), "modules": list(predictor.config.modules),
              "model": model_ref, "context": recipe.context, "frozen": recipe.freeze_model,
              "data": {"specs": recipe.data, "utterances": len(examples), "by_context": counts, "batches": n_batches},
              "steps": log, "final_loss": float(np.mean(losses[-20:])),
              "skip_share": float(np.mean([r["skip"] for r in tail])) if tail else None,
              "skip_by_context": {c: float(np.mean([r["by_context"][c] for r in tail if c in r["by_context"]]))
                                  for c in contexts},
              "minutes_this_run": (time.perf_counter() - t0) / 60, "threads": torch.get_num_threads(),
              "device": device, "gates": str(out)}
    atomic_write_json(out / "train.json", record)
    return record


# ----- static deployment of one context's gates


def context_gate_vector(trained: TrainedGates, language: str, task: str, features: torch.Tensor | None) -> torch.Tensor:
    """The eval-mode gate vector ``[M]`` of (``language``, ``task``). Gates trained without context need no audio;
    with context they are read over ``features [B, n_mels, frames]`` and refused (one line) when they differ
    between clips (then the context needs the gated model, not a static one)."""
    if features is None:
        if trained.context:
            raise ConfigError("these gates read the audio: give clips of this language and task (--data) to check "
                              "that their gates do not depend on it")
        features = torch.zeros(1, trained.config.n_features, 1)
    n = features.shape[0]
    keep = trained.gates([language] * n, [task] * n, features)
    differ = int((keep != keep[:1]).any(dim=1).sum())
    if differ:
        raise ConfigError(f"gates for ({language}, {task}) depend on the audio: {differ} of {n} clips differ from "
                          "the first; use the gated model (eval --gates)")
    return keep[0]


def deploy_trained_gates(model: str, gates: str | Path, language: str, task: str, out: str | Path,
                         data: list[str] | None = None, limit: int = 32, overwrite: bool = False) -> dict:
    """A physically pruned copy of ``model`` for one (language, task) of the trained ``gates``
    (``models.whisper.gates.deploy_static``) saved like any pruned model; ``data``: training specs (dev only)
    whose first ``limit`` clips of that context check that context-aware gates do not depend on the audio."""
    from ..models.checkpoint import save_pruned
    from ..models.registry import resolve_model
    from ..models.whisper.load import load_whisper

    folder = resolve_model(model)
    trained = load_gates(gates)
    net, processor = load_whisper(folder)
    check_gates_fit(trained, net, gates, model)
    features = None
    if data:
        utts = [u for u in training_utterances(data) if (u.language or "en") == language and
                (u.task or "transcribe") == task][:limit]
        if not utts:
            raise ConfigError(f"no clips of ({language}, {task}) in {', '.join(data)}")
        frontend = FeatureFrontend(int(net.config.num_mel_bins))
        features = torch.from_numpy(frontend([load_audio(u.audio, max_seconds=WINDOW_SECONDS) for u in utts]))
    keep = context_gate_vector(trained, language, task, features)
    gates_on = keep_map(trained.config.modules, keep)
    pruned = deploy_static(net, keep)
    save_pruned(pruned, processor, out, overwrite=overwrite)
    record = {"model": model, "gates": str(gates), "language": language, "task": task, "context": trained.context,
              "checked_clips": 0 if features is None else int(features.shape[0]),
              "skip_share": 1.0 - sum(gates_on.values()) / len(gates_on),
              "skipped": [m for m, on in gates_on.items() if not on]}
    atomic_write_json(Path(out) / "speechprune_gates.json", record)
    return record

