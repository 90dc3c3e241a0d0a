"""Saving and loading LMs: ``speechprune_lm.json`` (the config, validated) + ``model.safetensors`` (with a kept
model's ``whisper_ids``), and a Whisper-token LM's tokenizer files. Loading never runs code; failures are one-line
``ModelError``s naming the file."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from ...errors import ModelError
from ...io import check_output_dir, read_json, staged_dir
from .config import CONFIG_FILE, WEIGHTS_FILE, LMConfig
from .network import LMModel
from .tokens import Tokens, load_tokenizer, tokenizer_identity, tokens_for


def is_lm_folder(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG_FILE).is_file()


def read_config(folder: str | Path) -> LMConfig:
    path = Path(folder) / CONFIG_FILE
    raw = read_json(path, f"not an LM folder (no {CONFIG_FILE})", folder)
    try:
        return LMConfig.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "config"
        raise ModelError(f"bad LM config: {where}: {err['msg']}", path) from None


def _check_tokenizer(config: LMConfig, tokenizer, where: str | Path) -> None:
    found = tokenizer_identity(tokenizer, config.tokenizer.n_vocab)
    if found != config.tokenizer:
        want = config.tokenizer
        raise ModelError(f"the tokenizer files are not the one {CONFIG_FILE} names (sha256 {found.sha256[:12]}, "
                         f"{found.size} tokens; expected {want.sha256[:12]}, {want.size})", where)


def _checked_tokenizer(cfg: LMConfig, tokenizer, where: str | Path):
    if cfg.tokens == "whisper":
        if tokenizer is None:
            raise ModelError("a Whisper-token LM is saved with its tokenizer", where)
        _check_tokenizer(cfg, tokenizer, where)
    return tokenizer


def _write_files(cfg: LMConfig, tokenizer, folder: Path) -> None:
    (folder / CONFIG_FILE).write_text(cfg.model_dump_json(indent=1) + "\n", encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))


def _saved_config(model: LMModel) -> LMConfig:
    """The config to save: its factorized sites read off the modules (a stale value never survives a save)."""
    from ..lowrank import lowrank_ranks

    return model.config.model_copy(update={"lowrank": lowrank_ranks(model) or None})


def write_config(model: LMModel, folder: str | Path, tokenizer=None) -> None:
    """Everything of an LM folder but its weights into the existing ``folder``: ``speechprune_lm.json`` and, for
    Whisper tokens, ``tokenizer``'s files (it must be the one the config names)."""
    _write_files(_saved_config(model), _checked_tokenizer(model.config, tokenizer, folder), Path(folder))


def save_lm(model: LMModel, out_dir: str | Path, tokenizer=None, *, overwrite: bool = False) -> Path:
    """Write the model (and, for Whisper tokens, ``tokenizer``, which must be the one its config names) atomically."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    check_output_dir(out, overwrite)
    cfg: LMConfig = model.config
    tokenizer = _checked_tokenizer(cfg, tokenizer, out)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with staged_dir(out) as tmp:
        _write_files(_saved_config(model), tokenizer, tmp)
        save_file(state, str(tmp / WEIGHTS_FILE))
    return out


def load_lm(folder: str | Path, device: str = "cpu") -> LMModel:
    """The (dense, pruned, factorized or sparse) LM in ``folder``, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError("model folder does not exist", folder)
    from ..sparse import SPARSE_FILE, read_sparse_state

    cfg = read_config(folder)
    model = LMModel(cfg)
    if cfg.lowrank:
        from ..lowrank import apply_lowrank

        try:
            apply_lowrank(model, cfg.lowrank)
        except ModelError as e:
            raise ModelError(str(e), folder / CONFIG_FILE) from None
    path = folder / WEIGHTS_FILE
    if not path.is_file() and (folder / SPARSE_FILE).is_file():  # models.sparse's compressed format
        path = folder / SPARSE_FILE
        state = read_sparse_state(path)
    elif not path.is_file():
        raise ModelError(f"{WEIGHTS_FILE} is missing", folder)
    else:
        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:
            raise ModelError(f"cannot read weights: {type(e).__name__}", path) from None
    own = model.state_dict()
    bad = sorted(set(own) ^ set(state)) or [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise ModelError(f"weights do not fit the config: {bad[:3]}", path)
    model.load_state_dict(state, assign=bool(cfg.lowrank))  # assign: factorized sites are built on the meta device
    return model.to(device).eval()


def folder_tokenizer(folder: str | Path, config: LMConfig | None = None):
    """A Whisper-token LM folder's tokenizer, checked against its config (None for a character LM)."""
    config = config or read_config(folder)
    if config.tokens != "whisper":
        return None
    tokenizer = load_tokenizer(folder)
    _check_tokenizer(config, tokenizer, Path(folder) / CONFIG_FILE)
    return tokenizer


def folder_tokens(folder: str | Path, model: LMModel) -> Tokens:
    """How the LM in ``folder`` reads text."""
    return tokens_for(model, folder_tokenizer(folder, model.config))

