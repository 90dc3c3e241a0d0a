"""Context-aware gates, family-neutral: which of a model's removable modules run for an utterance, predicted from
its language, its task and its pooled speech features (issue 20, item 2).

- ``GateConfig``: the gated modules (adapter keys such as ``encoder.3.ffn``), the languages and tasks the predictor
  knows, its sizes, the sparsity target and the temperature schedule; unknown keys and bad values are one-line
  ``ConfigError`` s at construction.
- Pure math: ``pool_features`` (mean log-mel over an item's real frames), ``gumbel_keep`` (straight-through
  Gumbel-softmax: hard 0/1 values, the soft sample's gradient), ``hard_keep`` (eval: argmax, no noise),
  ``temperature`` (the annealing schedule, step -> tau), ``skip_share`` and ``sparsity_loss``.
- ``GatePredictor``: a small MLP from (language embedding, task embedding, pooled features) to one (skip, keep)
  logit pair per gated module.

A gate value is 1 for KEEP (the module runs) and 0 for SKIP; sparsity is the SKIP share. How a family runs a model
with gates (and skips what is gated off) lives in the family's package (``models.whisper.gates``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError

TASKS: tuple[str, ...] = ("transcribe", "translate")
SKIP, KEEP = 0, 1  # positions in a module's logit pair


def _one_line(e: ValidationError) -> str:
    err = sorted(e.errors(), key=lambda x: x["type"] != "extra_forbidden")[0]
    where = ".".join(str(p) for p in err["loc"]) or "config"
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}"


class GateConfig(BaseModel):
    """What a gate predictor gates and knows. ``sparsity`` is the target SKIP share in (0, 1) (0.3: skip 30 % of the
    modules on average); ``alpha`` weighs ``sparsity_loss``. The temperature falls from ``tau_start`` to
    ``tau_end`` over ``anneal_steps`` steps (``temperature``). ``init_keep``: the keep probability every gate starts
    at (the output bias), so training starts near the dense model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    modules: tuple[str, ...]
    languages: tuple[str, ...]
    tasks: tuple[str, ...] = TASKS
    n_features: int = Field(default=80, ge=1)  # log-mel bins pooled over time
    language_dim: int = Field(default=16, ge=1)
    task_dim: int = Field(default=4, ge=1)
    hidden: int = Field(default=64, ge=1)
    init_keep: float = Field(default=0.9, gt=0, lt=1)
    sparsity: float = 0.3
    alpha: float = Field(default=1.0, ge=0)
    tau_start: float = Field(default=5.0, gt=0)
    tau_end: float = Field(default=0.5, gt=0)
    anneal_steps: int = Field(default=1000, ge=1)

    def __init__(self, **data):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(f"bad gate config: {_one_line(e)}") from None

    @model_validator(mode="after")
    def _check(self) -> "GateConfig":
        check_target(self.sparsity)
        for name in ("modules", "languages", "tasks"):
            values = getattr(self, name)
            if not values:
                raise ValueError(f"{name} is empty")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} repeats an entry")
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task {unknown[0]!r}; choose from {', '.join(TASKS)}")
        if self.tau_end > self.tau_start:
            raise ValueError(f"tau_end {self.tau_end} is above tau_start {self.tau_start}: the temperature anneals down")
        return self


def check_target(s: float) -> float:
    """``s`` if it is a sparsity target strictly inside (0, 1), else a one-line ``ConfigError``."""
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0.0 < float(s) < 1.0 or math.isnan(s):
        raise ConfigError(f"sparsity target must be inside (0, 1), got {s!r}")
    return float(s)


# ----- pure math


def pool_features(features: torch.Tensor) -> torch.Tensor:
    """``[B, n_mels, frames] -> [B, n_mels]``: the mean log-mel frame over each item's real frames. Padding of the
    30 s window sits at the item's floor in every bin (Whisper's log-mel clamps at max - 8), so frames whose every
    bin is at the floor are left out; an item with no other frame (silence) is averaged over all of them."""
    floor = features.amin(dim=(1, 2), keepdim=True)
    real = ~(features == floor).all(dim=1, keepdim=True)  # [B, 1, frames]
    real = torch.where(real.any(dim=2, keepdim=True), real, torch.ones_like(real))
    w = real.to(features.dtype)
    return (features * w).sum(dim=2) / w.sum(dim=2)


def gumbel_keep(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Straight-through Gumbel-softmax over ``logits [..., 2]`` (skip, keep): the hard sample's keep value (exactly
    0.0 or 1.0) in the forward pass, the gradient of the soft sample ``softmax((logits + gumbel) / tau)``. ``[...]``."""
    if tau <= 0:
        raise ConfigError(f"temperature must be > 0, got {tau}")
    tiny = torch.finfo(logits.dtype).tiny
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device="cpu").to(logits.device)
    gumbel = -torch.log((-torch.log(u.clamp_min(tiny))).clamp_min(tiny))  # -log(Exp(1)), u = 0 kept finite
    soft = torch.softmax((logits + gumbel) / tau, dim=-1)[..., KEEP]
    hard = (soft > 0.5).to(soft.dtype)  # the argmax of two
    return hard + (soft - soft.detach())  # exactly ``hard`` in value: x - x is 0 in floating point


def hard_keep(logits: torch.Tensor) -> torch.Tensor:
    """Eval gates: the argmax of each ``(skip, keep)`` pair, no noise (keep on a tie). ``[...]``, 0.0 or 1.0."""
    return (logits[..., KEEP] >= logits[..., SKIP]).to(logits.dtype)


def temperature(step: int, tau_start: float, tau_end: float, steps: int) -> float:
    """The Gumbel temperature at ``step``: geometric from ``tau_start`` (step 0) to ``tau_end`` (step ``steps`` and
    after). Non-increasing in ``step`` when ``tau_end <= tau_start``."""
    frac = min(max(step, 0), steps) / steps
    return tau_start * (tau_end / tau_start) ** frac


def skip_share(keep: torch.Tensor) -> torch.Tensor:
    """The mean SKIP share ``g`` of gates ``keep [B, M]`` (or ``[M]``): ``1 - mean(keep)``, differentiable."""
    return 1.0 - keep.mean()


def sparsity_loss(share: torch.Tensor, target: float, alpha: float) -> torch.Tensor:
    """``alpha * (|g - s| + (g - s)^2)`` with ``g`` the skip share and ``s`` the target skip share in (0, 1): zero at
    the target, growing on both sides (the absolute term keeps a gradient near it)."""
    d = share - check_target(target)
    return alpha * (d.abs() + d * d)


# ----- the predictor


class GatePredictor(nn.Module):
    """``(languages, tasks, features [B, n_mels, frames]) -> logits [B, M, 2]`` (skip, keep per gated module):
    ``Linear(GELU(Linear([lang_emb; task_emb; LayerNorm(pool_features)])))``. The pooled features go through a
    LayerNorm without affine parameters, so the log-mel scale does not swamp the embeddings."""

    def __init__(self, config: GateConfig):
        super().__init__()
        self.config = config
        self.language_index = {code: i for i, code in enumerate(config.languages)}
        self.task_index = {task: i for i, task in enumerate(config.tasks)}
        self.languages = nn.Embedding(len(config.languages), config.language_dim)
        self.tasks = nn.Embedding(len(config.tasks), config.task_dim)
        self.norm = nn.LayerNorm(config.n_features, elementwise_affine=False)
        self.hidden = nn.Linear(config.language_dim + config.task_dim + config.n_features, config.hidden)
        self.out = nn.Linear(config.hidden, 2 * len(config.modules))
        with torch.no_grad():
            nn.init.normal_(self.out.weight, std=0.01)
            bias = self.out.bias.view(-1, 2)
            bias[:, SKIP] = 0.0
            bias[:, KEEP] = math.log(config.init_keep / (1 - config.init_keep))

    @property
    def modules_gated(self) -> tuple[str, ...]:
        return self.config.modules

    def _ids(self, values: Sequence[str], index: dict[str, int], what: str) -> torch.Tensor:
        bad = [v for v in values if v not in index]
        if bad:
            known = list(index)
            shown = ", ".join(known[:12]) + (f" ... ({len(known)} in all)" if len(known) > 12 else "")
            raise ConfigError(f"unknown {what} {bad[0]!r} for these gates; known: {shown}")
        return torch.tensor([index[v] for v in values], dtype=torch.long, device=self.out.weight.device)

    def forward(self, languages: Sequence[str], tasks: Sequence[str], features: torch.Tensor) -> torch.Tensor:
        if isinstance(languages, str) or isinstance(tasks, str):
            raise ConfigError("languages and tasks are one entry per batch item, not a string")
        if not len(languages) == len(tasks) == features.shape[0]:
            raise ConfigError(f"{len(languages)} languages and {len(tasks)} tasks for {features.shape[0]} items")
        if features.dim() != 3 or features.shape[1] != self.config.n_features:
            raise ConfigError(f"features must be [batch, {self.config.n_features}, frames], got {list(features.shape)}")
        lang = self.languages(self._ids(languages, self.language_index, "language"))
        task = self.tasks(self._ids(tasks, self.task_index, "task"))
        pooled = self.norm(pool_features(features.to(self.out.weight.dtype)))
        h = F.gelu(self.hidden(torch.cat([lang, task, pooled], dim=-1)))
        return self.out(h).view(features.shape[0], len(self.config.modules), 2)

    def gates(self, languages: Sequence[str], tasks: Sequence[str], features: torch.Tensor, tau: float | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
        """Keep gates ``[B, M]`` (0.0 / 1.0): in training mode a straight-through Gumbel sample at ``tau``
        (required), in eval mode the argmax (deterministic, ``tau`` ignored)."""
        logits = self(languages, tasks, features)
        if not self.training:
            return hard_keep(logits)
        if tau is None:
            raise ConfigError("training gates need a temperature (gates.temperature(step, ...))")
        return gumbel_keep(logits, tau, generator)


# ----- trained gates on disk (issue 20: ``speechprune train`` with ``family: gates`` writes them, eval reads them)

GATES_WEIGHTS = "gates.safetensors"
GATES_CONFIG = "gates.json"


def context_inputs(predictor: GatePredictor, context: bool, languages: Sequence[str], tasks: Sequence[str],
                   features: torch.Tensor) -> tuple[list[str], list[str], torch.Tensor]:
    """What the predictor reads. With ``context`` the items' own language, task and features; without (the "no
    context" baseline) every item reads the first known language and task and zero features after they are checked,
    so the predictor's output is one learned constant: one gate vector for every input."""
    languages, tasks = list(languages), list(tasks)
    predictor._ids(languages, predictor.language_index, "language")  # unknown ones are refused either way
    predictor._ids(tasks, predictor.task_index, "task")
    if context:
        return languages, tasks, features
    cfg = predictor.config
    n = len(languages)
    return [cfg.languages[0]] * n, [cfg.tasks[0]] * n, features.new_zeros(n, cfg.n_features, 1)


class TrainedGates:
    """A trained predictor read from a gates folder: ``gates(languages, tasks, features)`` in eval mode (argmax)
    under the folder's ``context`` rule; ``meta``: the rest of ``gates.json`` (base model, recipe)."""

    def __init__(self, predictor: GatePredictor, context: bool, meta: dict):
        self.predictor, self.context, self.meta = predictor.eval(), context, meta

    @property
    def config(self) -> GateConfig:
        return self.predictor.config

    @torch.no_grad()
    def gates(self, languages: Sequence[str], tasks: Sequence[str], features: torch.Tensor) -> torch.Tensor:
        return self.predictor.gates(*context_inputs(self.predictor, self.context, languages, tasks, features))

    def digest(self) -> str:
        import hashlib

        h = hashlib.sha256(self.config.model_dump_json().encode() + str(self.context).encode())
        for k, v in sorted(self.predictor.state_dict().items()):
            h.update(k.encode() + v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:20]


def save_gates(folder, predictor: GatePredictor, context: bool, meta: dict) -> None:
    """``folder/gates.safetensors`` (the predictor's tensors) and ``folder/gates.json`` (its ``GateConfig``, the
    ``context`` flag and ``meta``), each written atomically."""
    from pathlib import Path

    from safetensors.torch import save

    from ..io import atomic_write_bytes, atomic_write_json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in predictor.state_dict().items()}
    atomic_write_bytes(folder / GATES_WEIGHTS, save(tensors))
    atomic_write_json(folder / GATES_CONFIG, {**meta, "config": predictor.config.model_dump(mode="json"),
                                              "context": bool(context)})


def load_gates(folder) -> TrainedGates:
    """The trained gates of ``folder`` (JSON and safetensors only: loading never runs code); a one-line
    ``ConfigError`` naming the folder for anything missing or malformed."""
    from pathlib import Path

    from safetensors.torch import load_file

    from ..io import read_json

    folder = Path(folder)
    if not (folder / GATES_CONFIG).is_file() or not (folder / GATES_WEIGHTS).is_file():
        raise ConfigError(f"not a gates folder (no {GATES_CONFIG} and {GATES_WEIGHTS}; speechprune train with "
                          "family: gates writes them)", folder)
    meta = read_json(folder / GATES_CONFIG)
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict) or \
            not isinstance(meta.get("context"), bool):
        raise ConfigError(f"{GATES_CONFIG} holds no gate config and context flag", folder)
    try:
        config = GateConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.pop("config").items()})
    except ConfigError as e:
        raise ConfigError(str(e), folder) from None
    predictor = GatePredictor(config)
    try:
        predictor.load_state_dict(load_file(str(folder / GATES_WEIGHTS)))
    except Exception as e:  # safetensors errors, missing or misshapen tensors
        raise ConfigError(f"{GATES_WEIGHTS} does not fit {GATES_CONFIG} ({type(e).__name__})", folder) from None
    return TrainedGates(predictor, meta.pop("context"), meta)
