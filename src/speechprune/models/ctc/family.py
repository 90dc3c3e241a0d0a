"""The CTC family behind the one seam every stage calls (``models.family.ModelFamily``): its folders, its size
and FLOP record, its teacher-labelled batches and what distillation compares."""

from __future__ import annotations

from pathlib import Path

import torch

from ..family import AudioData, DistillOutputs
from ..lowrank import LowRankLinear
from .batches import CTCLabeller
from .checkpoint import initial_state, is_ctc_folder, load_ctc, save_ctc, write_config
from .config import INIT_FILE
from .flops import encoder_flops, positions
from .network import CTCModel, ctc_loss

REFERENCE_FRAMES = 3000  # FLOPs are recorded for a 30 s clip, the window Whisper always pays


def _lowrank_correction(model: CTCModel, frames: int) -> int:
    """FLOPs saved by factorized linears at ``frames`` (the analytic count assumes dense projections)."""
    t = positions(model.config, frames)
    return sum(2 * t * (m.rank * (m.in_features + m.out_features) - m.in_features * m.out_features)
               for m in model.modules() if isinstance(m, LowRankLinear))


class CTCFamily(AudioData):
    name = "ctc"

    def owns(self, folder: str | Path) -> bool:
        return is_ctc_folder(folder)

    def load(self, folder: str | Path, device: str = "cpu") -> CTCModel:
        return load_ctc(folder, device=device)

    def save(self, model: CTCModel, source: str | Path | None, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``model`` to ``out``, keeping the weights ``source``'s training started from (ablations and
        weight-change signatures read them)."""
        init = initial_state(source) if source is not None and is_ctc_folder(source) else None
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        if init is not None and {k: v.shape for k, v in init.items()} != shapes:
            init = None  # a pruned model: the dense initialization no longer fits its tensors
        return save_ctc(model, out, init_state=init, overwrite=overwrite)

    def backend(self, folder: str | Path, device: str = "cpu", name: str | None = None,
                exit_layer: int | None = None, numerics: str = "float32"):
        """A ``CTCBackend`` (greedy or prefix beam search), at full depth or exiting at ``exit_layer``, in float32
        (``auto`` is float32 here: its numerics are not probed yet)."""
        from ...errors import ConfigError
        from .backend import CTCBackend

        if numerics not in ("float32", "auto"):
            raise ConfigError(f"a CTC model runs in float32 (numerics auto or float32), not {numerics}", folder)
        try:
            return CTCBackend.from_folder(folder, device=device, name=name or "ctc", exit_layer=exit_layer)
        except ValueError as e:
            raise ConfigError(str(e), folder) from None

    def shape_record(self, model: CTCModel) -> dict:
        flops = encoder_flops(model.config, REFERENCE_FRAMES)
        return {"params": sum(p.numel() for p in model.parameters()),
                "flops_encoder": flops["total"] + _lowrank_correction(model, REFERENCE_FRAMES),
                "flops_reference_frames": REFERENCE_FRAMES}

    def labeller(self, model: CTCModel, source: str | Path | None = None) -> CTCLabeller:
        return CTCLabeller(model)

    def reference_scorer(self, backend, utterances: list, batch_size: int = 8, max_new_tokens: int | None = None,
                         cache_layers: bool = True, progress: bool = False):
        """A ``scoring.CTCScorer``: CTC loss per reference character, greedy hypotheses. One forward per score, so
        nothing is cached (``cache_layers``) and a search over every frame has no token cap (``max_new_tokens``)."""
        from .scoring import CTCScorer

        return CTCScorer(backend, utterances, batch_size, progress=progress)

    def distill_outputs(self, student: CTCModel, batch: dict, layers: bool) -> DistillOutputs:
        """The student's logits and layer outputs against the teacher's at every real frame, and the CTC loss on
        the teacher's greedy labels (the family's task loss)."""
        device = next(student.parameters()).device
        feats, lengths = batch["features"].to(device), batch["lengths"].to(device)
        inner = tuple(range(1, student.depth)) if layers else ()
        enc = student.encode(feats, lengths, taps=inner)
        logits = student.head(student.layer_norm(enc.hidden))
        real = torch.arange(logits.shape[1], device=device)[None, :] < enc.lengths[:, None]
        task = ctc_loss(torch.log_softmax(logits.float(), dim=-1), enc.lengths, batch["targets"].to(device),
                        batch["target_lengths"].to(device))
        out = DistillOutputs(student_logits=logits[real], teacher_logits=batch["teacher_logits"].to(device)[real],
                             task_loss=task)
        if "teacher_encoder" in batch:
            out.student_final = enc.hidden[real]
            out.teacher_final = batch["teacher_encoder"].to(device)[real]
        if layers:
            out.student_layers = [enc.taps[k][real] for k in inner]
            out.teacher_layers = batch["teacher_hidden"].to(device)[:, real]
        return out

    def set_length_buckets(self, model: CTCModel, buckets) -> None:
        from ...errors import ConfigError

        raise ConfigError("recovery.length_adaptive: a CTC model already reads each clip's own frames; length "
                          "buckets are for Whisper's 30 s window")

    def save_config(self, model: CTCModel, source, folder: str | Path) -> None:
        """``speechprune_ctc.json`` (a CTC folder needs nothing from ``source``)."""
        write_config(model, folder)

    def fresh(self, model: CTCModel, seed: int) -> CTCModel:
        """``CTCModel`` built from ``model``'s config, which holds its per-layer widths (factorized sites are not
        rebuilt: a fresh model is dense)."""
        p = next(model.parameters())
        torch.manual_seed(seed)
        with torch.device(p.device):
            fresh = CTCModel(model.config.model_copy(update={"lowrank": None})).to(p.dtype)
        return fresh.eval()

    def initial_weights(self, folder: str | Path, device: str = "cpu") -> CTCModel | None:
        """The model with ``init.safetensors`` (kept by training and by ``save`` from a folder that kept it)."""
        if not (Path(folder) / INIT_FILE).is_file():
            return None
        return load_ctc(folder, device=device, initial=True)


FAMILY = CTCFamily()
