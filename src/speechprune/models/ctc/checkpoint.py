"""Saving and loading CTC models: ``speechprune_ctc.json`` (the config, validated) + ``model.safetensors``, and
``init.safetensors`` (the weights training started from) when kept. Loading never runs code; failures are
one-line ``ModelError``s naming the file. ``from_whisper`` builds a Whisper-encoder CTC model from a Whisper folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError

from ...errors import ModelError
from ...io import check_output_dir, read_json, staged_dir
from .config import CONFIG_FILE, ENGLISH_CHARS, INIT_FILE, WEIGHTS_FILE, CTCConfig
from .network import CTCModel


def is_ctc_folder(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def read_config(folder: str | Path) -> CTCConfig:
    path = Path(folder) / CONFIG_FILE
    raw = read_json(path, f"not a CTC model folder (no {CONFIG_FILE})", folder)
    try:
        return CTCConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        raise ModelError(f"bad CTC config: {where}: {err['msg']}", path) from None


def _state(model: CTCModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def write_config(model: CTCModel, folder: str | Path) -> None:
    """``folder/speechprune_ctc.json``: the model's config, its factorized sites read off the modules (so a stale
    config value never survives a save)."""
    from ..lowrank import lowrank_ranks

    config = model.config.model_copy(update={"lowrank": lowrank_ranks(model) or None})
    (Path(folder) / CONFIG_FILE).write_text(config.model_dump_json(indent=1) + "\n", encoding="utf-8")


def save_ctc(model: CTCModel, out_dir: str | Path, *, init_state: dict[str, torch.Tensor] | None = None,
             overwrite: bool = False) -> Path:
    """Write the model (and the weights it was trained from, when given) atomically to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    check_output_dir(out, overwrite)
    with staged_dir(out) as tmp:
        write_config(model, tmp)
        save_file(_state(model), str(tmp / WEIGHTS_FILE))
        if init_state is not None:
            save_file({k: v.contiguous().cpu() for k, v in init_state.items()}, str(tmp / INIT_FILE))
    return out


def _load_state(model: CTCModel, path: Path) -> None:
    from safetensors.torch import load_file

    from ..sparse import SPARSE_FILE, read_sparse_state

    if path.name == SPARSE_FILE:  # the compressed format of models.sparse: dense tensors rebuilt exactly
        state = read_sparse_state(path)
    else:
        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:
            raise ModelError(f"cannot read weights: {type(e).__name__}", path) from e
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state)) or [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise ModelError(f"weights do not fit the config: {bad[:3]} (the config names another model or "
                         f"vocabulary of {len(model.config.vocab) + 1} classes)", path)
    model.load_state_dict(state, assign=True)  # assign: factorized sites are built on the meta device


def load_ctc(folder: str | Path, device: str = "cpu", initial: bool = False) -> CTCModel:
    """The model in ``folder`` (plain or compressed sparse weights) in eval mode (``initial``: with the weights its
    training started from)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError("model folder does not exist", folder)
    cfg = read_config(folder)
    model = CTCModel(cfg)
    if cfg.lowrank and not initial:
        from ..lowrank import apply_lowrank

        try:
            apply_lowrank(model, cfg.lowrank)
        except ModelError as e:
            raise ModelError(str(e), folder / CONFIG_FILE) from None
    from ..sparse import SPARSE_FILE

    path = folder / (INIT_FILE if initial else WEIGHTS_FILE)
    if not initial and not path.is_file() and (folder / SPARSE_FILE).is_file():
        path = folder / SPARSE_FILE
    if not path.is_file():
        raise ModelError(f"{path.name} is missing", folder)
    _load_state(model, path)
    return model.to(device).eval()


def initial_state(folder: str | Path) -> dict[str, torch.Tensor] | None:
    from safetensors.torch import load_file

    path = Path(folder) / INIT_FILE
    return load_file(str(path)) if path.is_file() else None


WHISPER_NAMES = (("conv1.", "stem.conv1."), ("conv2.", "stem.conv2."), ("embed_positions.", "stem.embed_positions."))


def whisper_encoder_state(encoder_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``WhisperEncoder`` state dict under this family's names (stem under ``stem.``, FFNs under ``ffn.``)."""
    out = {}
    for name, t in encoder_state.items():
        for old, new in WHISPER_NAMES:
            if name.startswith(old):
                name = new + name[len(old):]
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "layers" and parts[2] in ("fc1", "fc2"):
            name = f"layers.{parts[1]}.ffn.{parts[2]}.{parts[3]}"
        out[name] = t
    return out


def from_whisper(folder: str | Path, vocab: tuple[str, ...] = ENGLISH_CHARS, n_layers: int | None = None,
                 dropout: float = 0.1, seed: int = 0) -> CTCModel:
    """A Whisper-encoder CTC model: the encoder of the Whisper folder (all its layers, or the first ``n_layers``),
    a new character head (seeded)."""
    from transformers import WhisperForConditionalGeneration

    from ..units import LOWRANK_KEY, STRUCTURE_KEY
    from ..whisper import is_whisper_folder

    if not is_whisper_folder(folder):
        raise ModelError("not a Whisper model folder (no config.json with model_type 'whisper')", folder)
    raw = read_json(Path(folder) / "config.json")
    if STRUCTURE_KEY in raw or LOWRANK_KEY in raw:
        raise ModelError("a pruned Whisper folder cannot seed a CTC model yet; use the dense one", folder)
    try:
        whisper = WhisperForConditionalGeneration.from_pretrained(folder, local_files_only=True,
                                                                  trust_remote_code=False)
    except Exception as e:  # transformers raises OSError, ValueError, safetensors errors...
        raise ModelError(f"cannot load Whisper model: {type(e).__name__}", folder) from e
    wc = whisper.config
    depth = n_layers or wc.encoder_layers
    if not 1 <= depth <= wc.encoder_layers:
        raise ModelError(f"n_layers {depth} is outside the encoder's 1..{wc.encoder_layers}", folder)
    cfg = CTCConfig(encoder="whisper", n_mels=wc.num_mel_bins, d_model=wc.d_model, n_layers=depth,
                    n_heads=wc.encoder_attention_heads, ffn_dim=wc.encoder_ffn_dim,
                    max_positions=wc.max_source_positions, dropout=dropout, vocab=vocab)
    torch.manual_seed(seed)
    model = CTCModel(cfg)
    enc = {k: v for k, v in whisper.model.encoder.state_dict().items()
           if not k.startswith("layers.") or int(k.split(".")[1]) < depth}
    state = whisper_encoder_state(enc)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise ModelError(f"the Whisper encoder does not map onto the CTC model: {(unexpected or missing)[:3]}", folder)
    return model
