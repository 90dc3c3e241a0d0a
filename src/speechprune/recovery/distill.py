"""Recovery by distillation from the dense teacher: KL on logits, the family's task loss on the teacher's labels,
and optionally the encoder's last and inner layer outputs.

Batches come from the dense teacher itself (the family's labeller, ``ModelFamily.labeller(...).labelled_batches(...,
teacher_logits=True)``: Whisper's teacher-forcing dicts, CTC's frames with character targets): its greedy
transcripts as labels and its logits (fp16) computed once and reused every epoch, so a recovery step costs one
student forward and backward. The family says what is compared (``ModelFamily.distill_outputs``: Whisper's label
positions, CTC's real frames); the losses are this module's.
Device-agnostic: the student's device is used for everything. A long recovery checkpoints itself (student weights,
optimizer moments, step, losses: one safetensors file, written atomically) and a rerun of the same recovery resumes
where it stopped, visiting the same batches in the same order.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import ConfigError
from ..models.family import family_for
from ..scale.distributed import data_parallel
from .config import Recovery

log = logging.getLogger(__name__)


def kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(teacher_T || student_T)`` averaged over positions (``[n, vocab]`` each). A pure function."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits.float() / t, dim=-1),
                    log_target=True, reduction="batchmean") * t * t


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                      temperature: float, kl_weight: float, ce_weight: float) -> torch.Tensor:
    """``kl_weight * T^2 * KL(teacher_T || student_T) + ce_weight * CE(student, labels)`` over label positions
    (``student_logits``, ``teacher_logits``: ``[n, vocab]``; ``labels``: ``[n]``). A pure function."""
    return (kl_weight * kl_loss(student_logits, teacher_logits, temperature)
            + ce_weight * F.cross_entropy(student_logits, labels))


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """Mean squared error between two hidden-state tensors, relative to the teacher's mean square (scale-free:
    0 = identical, 1 = as far as predicting zeros). A pure function."""
    t = teacher_hidden.float()
    return ((student_hidden - t) ** 2).mean() / (t**2).mean().clamp_min(1e-12)


def layerwise_loss(student_states, teacher_states: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden_state_loss`` over layers: the student's inner encoder layer outputs against the teacher's
    (``teacher_states``: ``[layers, batch, frames, d]``). The depths must match (pruning that removes encoder layers
    cannot use this term)."""
    if len(student_states) != teacher_states.shape[0]:
        raise ValueError(f"hidden-state distillation needs the teacher's encoder depth: the student has "
                         f"{len(student_states) + 1} layers, the teacher {teacher_states.shape[0] + 1}")
    t = teacher_states.to(student_states[0].device)
    return sum(hidden_state_loss(s, t[i]) for i, s in enumerate(student_states)) / len(student_states)


def by_length(utterances: list) -> list:
    """``utterances`` ordered by duration (the manifest's, else the audio header's; unreadable ones first, the
    labeller skips them), ties in their given order: batches of neighbours then share a length bucket."""
    from ..data.audio import audio_duration
    from ..errors import AudioError

    def seconds(u) -> float:
        if u.duration is not None:
            return float(u.duration)
        try:
            return audio_duration(u.audio)
        except AudioError:
            return 0.0

    return sorted(utterances, key=seconds)


def recovery_batches(teacher, cfg: Recovery, utterances: list | None = None, progress: bool = True) -> list[dict]:
    """The teacher-labelled batches a recovery by ``cfg`` reads: the teacher's (the family's labeller,
    ``models.family.Labeller``) transcripts as labels, its logits, and the encoder states the hidden-state term needs; over ``cfg.data`` (at most
    ``cfg.max_utterances``, interleaved if ``cfg.interleave``) unless ``utterances`` are given; augmented by
    ``cfg.augment`` and packed into windows of ``cfg.pack_seconds`` if set (their audio lives only while it is
    labelled). Under ``cfg.length_adaptive`` the clips are batched in order of length and each batch records its
    clips' frames (the student reads it at their bucket); packed windows come as batches of their own after the
    single clips instead of replacing them."""
    import tempfile

    from ..data.augment import augment_utterances
    from ..data.datasets import training_utterances
    from ..data.pack import pack_utterances

    if utterances is None:
        utts = training_utterances(cfg.data, cfg.max_utterances, interleave=cfg.interleave)
    else:
        utts = utterances
    adaptive = cfg.length_adaptive is not None
    audio_only = [k for k, on in (("augment", cfg.augment), ("pack_seconds", cfg.pack_seconds),
                                  ("length_adaptive", adaptive)) if on]
    if audio_only and any(isinstance(u, str) for u in utts):
        raise ConfigError(f"recovery: {', '.join(audio_only)} act on audio; this model's recovery data is text")

    def label(clips: list) -> list[dict]:
        return teacher.labelled_batches(clips, cfg.batch_size, teacher_logits=True,
                                        teacher_hidden=bool(cfg.hidden_weight), progress=progress, frames=adaptive)

    with tempfile.TemporaryDirectory(prefix="speechprune-pack-") as tmp:
        if cfg.augment is not None:
            utts = augment_utterances(utts, cfg.augment, Path(tmp) / "augmented", seed=cfg.seed)
        if not adaptive:
            if cfg.pack_seconds:
                utts = pack_utterances(utts, cfg.pack_seconds, Path(tmp) / "packed")
            return label(utts)
        batches = label(by_length(utts))
        if cfg.pack_seconds:
            batches += label(pack_utterances(utts, cfg.pack_seconds, Path(tmp) / "packed"))
        return batches


def trainable_parameters(model: torch.nn.Module, stacks: list[str] | None,
                         embeddings: bool = True) -> list[torch.nn.Parameter]:
    """The parameters recovery updates: every trainable one, or only those of ``stacks``, and without the embedding
    tables unless ``embeddings`` (both through the family's adapter, which alone knows where a stack and its
    embeddings live); the others are frozen (``requires_grad`` off)."""
    if stacks is None and embeddings:
        return [p for p in model.parameters() if p.requires_grad]
    from ..models.adapters import adapter_for

    adapter = adapter_for(model)
    keep = {id(p) for p in (model.parameters() if stacks is None else
                            (p for s in stacks for p in adapter.stack_module(model, s).parameters()))}
    if not embeddings:
        keep -= {id(p) for site in adapter.weight_sites(model) if site.component == "embed"
                 for p in getattr(site.parent, site.attr).parameters()}
    params = []
    for p in model.parameters():
        if id(p) in keep and p.requires_grad:
            params.append(p)
        else:
            p.requires_grad_(False)
    return params


def batch_order(n: int, seed: int, start: int = 0) -> Iterator[int]:
    """Batch indices for steps ``start, start + 1, ...``: a fresh shuffle of ``range(n)`` per epoch from one generator
    seeded with ``seed``. A pure function of its arguments, so a resumed recovery visits what an unbroken one would."""
    gen = torch.Generator().manual_seed(seed)
    step = 0
    while True:
        for i in torch.randperm(n, generator=gen).tolist():
            if step >= start:
                yield i
            step += 1


def recovery_fingerprint(student: torch.nn.Module, batches: list[dict], cfg: Recovery) -> str:
    """What a recovery checkpoint must match to be resumed: the settings, the number of batches and their tensors'
    shapes, and the student's parameter names and shapes."""
    h = hashlib.sha256(cfg.model_dump_json(exclude={"checkpoint_seconds"}).encode())
    h.update(json.dumps([[(k, list(v.shape)) for k, v in sorted(b.items())] for b in batches]).encode())
    h.update(json.dumps([(k, list(v.shape)) for k, v in student.state_dict().items()]).encode())
    return h.hexdigest()[:32]


def save_recovery_state(path: Path, student: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    """The student's weights and the optimizer's state in one safetensors file (``meta`` and the optimizer's
    param groups as JSON in its header), written atomically."""
    from safetensors.torch import save

    from ..io import atomic_write_bytes

    tensors = {f"model.{k}": v.detach().to("cpu", copy=True).contiguous() for k, v in student.state_dict().items()}
    state = opt.state_dict()
    for i, st in state["state"].items():
        for name, v in st.items():
            tensors[f"opt.{i}.{name}"] = v.detach().to("cpu", copy=True).contiguous()
    header = json.dumps({**meta, "param_groups": state["param_groups"]})
    atomic_write_bytes(path, save(tensors, metadata={"recovery": header}))


def load_recovery_state(path: Path, student: torch.nn.Module, opt: torch.optim.Optimizer,
                        fingerprint: str) -> dict | None:
    """Restore a checkpoint written by ``save_recovery_state`` into ``student`` and ``opt``; its metadata, or None
    (nothing restored, a warning logged) when there is none or it is unreadable. A checkpoint of another recovery
    (another recipe's settings, data or model in the same folder) is a one-line ``ConfigError``, and nothing is
    written: starting over would overwrite that run's work."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["recovery"])
        tensors = load_file(str(path))
    except Exception as e:  # a torn or foreign file: start over rather than fail a long run
        log.warning("recovery checkpoint %s unreadable (%s); starting the recovery over", path, e.__class__.__name__)
        return None
    if meta.get("fingerprint") != fingerprint:
        raise ConfigError("is the checkpoint of another recovery (its settings, data, teacher labels or model "
                          "differ); remove it to start over, or choose another --out", path)
    student.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def distill(student: torch.nn.Module, batches: list[dict], cfg: Recovery, progress: bool = True,
            after_step: Callable[[], None] | None = None, checkpoint: str | Path | None = None,
            checkpoint_seconds: float | None = None) -> dict:
    """Fine-tune ``student`` in place for ``cfg.steps`` optimizer steps over ``batches`` (cycled, shuffled per
    epoch with ``cfg.seed``); ``batches`` must carry ``teacher_logits`` (and ``teacher_encoder`` when
    ``cfg.encoder_weight``: the student's encoder output is pulled towards the teacher's, a dense signal over every
    frame where the logits give one per label; and ``teacher_hidden`` when ``cfg.hidden_weight``: the same for every
    inner encoder layer's output). ``cfg.train`` limits the update to those stacks, ``cfg.train_embeddings`` false
    leaves the embeddings out (see ``trainable_parameters``). ``cfg.length_adaptive`` marks the student
    length-adaptive first (the family's ``set_length_buckets``): its forward then reads each batch at its bucket
    (``batches`` from ``recovery_batches`` under the same setting carry the clips' frames).
    ``after_step`` runs after every optimizer step (unstructured pruning re-applies its fixed masks there). With
    ``checkpoint`` (a file path) the state is saved there every ``checkpoint_seconds`` (default
    ``cfg.checkpoint_seconds``) and once at the end, and a matching checkpoint found there at the start is resumed.
    Each step reads ``cfg.accumulate`` batches (the global batch); under torchrun the processes split them and sum
    their gradients (``scale.distributed``), and only rank 0 writes the checkpoint. Returns loss statistics and the
    loss per step (``losses``)."""
    if cfg.steps == 0 or not batches:
        return {"steps": 0}
    dp = data_parallel(str(next(student.parameters()).device))
    dp.shares(cfg.accumulate)  # a world size that does not divide the global batch fails before any work
    checkpoint_seconds = cfg.checkpoint_seconds if checkpoint_seconds is None else checkpoint_seconds
    family = family_for(student)
    if cfg.length_adaptive is not None:  # the student reads each batch at its bucket from now on, and is saved so
        family.set_length_buckets(student, cfg.length_adaptive.buckets)
    frozen = {id(p) for p in student.parameters() if not p.requires_grad}
    params = trainable_parameters(student, cfg.train, cfg.train_embeddings)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    fingerprint, meta = "", None
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        fingerprint = recovery_fingerprint(student, batches, cfg)
        meta = load_recovery_state(checkpoint, student, opt, fingerprint)
    start = meta["step"] if meta else 0
    losses: list[float] = meta["losses"] if meta else []
    elapsed = meta["seconds"] if meta else 0.0
    if meta:
        log.info("resuming recovery at step %d of %d from %s", start, cfg.steps, checkpoint)
    warmup = max(1, cfg.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)),
        last_epoch=start - 1)

    def save(step: int) -> None:
        save_recovery_state(checkpoint, student, opt, {"fingerprint": fingerprint, "step": step, "losses": losses,
                                                       "seconds": elapsed + time.perf_counter() - t0})

    student.train()
    t0 = last_save = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc="recover", unit="step", disable=not progress or not dp.main,
               dynamic_ncols=True,
               initial=start, total=cfg.steps)
    order = batch_order(len(batches), cfg.seed, start * cfg.accumulate)
    for step in bar:
        global_batch = [next(order) for _ in range(cfg.accumulate)]
        opt.zero_grad(set_to_none=True)
        # this process's share of the global batch; the gradients and the loss of all of it, on every process
        total = dp.backward(params, cfg.accumulate,
                            lambda j: recovery_loss(family, student, batches[global_batch[j]], cfg))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if after_step is not None:
            after_step()
        sched.step()
        losses.append(total)
        if checkpoint is not None and dp.main and (time.perf_counter() - last_save >= checkpoint_seconds
                                                   or step + 1 == cfg.steps):
            save(step + 1)
            last_save = time.perf_counter()
    student.eval()
    opt.zero_grad(set_to_none=True)
    for p in student.parameters():  # give back what this call froze
        if id(p) not in frozen:
            p.requires_grad_(True)
    first = sum(losses[: max(1, len(losses) // 10)]) / max(1, len(losses) // 10)
    last = sum(losses[-max(1, len(losses) // 10):]) / max(1, len(losses) // 10)
    return {"steps": cfg.steps, "loss_first": first, "loss_last": last,
            "seconds": elapsed + time.perf_counter() - t0, **({"resumed_at": start} if start else {}),
            **({"processes": dp.world} if dp.world > 1 else {}), "losses": [float(f"{x:.7g}") for x in losses]}


def recovery_loss(family, student: torch.nn.Module, batch: dict, cfg: Recovery) -> torch.Tensor:
    """The distillation loss of ``student`` on one labelled batch (see ``distill``)."""
    out = family.distill_outputs(student, batch, layers=bool(cfg.hidden_weight))
    loss = cfg.ce_weight * out.task_loss
    if out.teacher_logits is not None:  # an LM's text batches carry none: its next tokens are the labels
        loss = loss + cfg.kl_weight * kl_loss(out.student_logits, out.teacher_logits, cfg.temperature)
    if cfg.encoder_weight:
        loss = loss + cfg.encoder_weight * hidden_state_loss(out.student_final, out.teacher_final)
    if cfg.hidden_weight:
        loss = loss + cfg.hidden_weight * layerwise_loss(out.student_layers, out.teacher_layers)
    return loss
