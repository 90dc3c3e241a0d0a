"""Analytic FLOPs of a CTC model at a clip's real length (pure functions of the config): the stem, each layer
run (up to an exit layer), the head. Counted as 2 x multiply-adds of the matrix products and convolutions, the
way ``torch.utils.flop_counter`` counts them (norms, activations and softmax are left out)."""

from __future__ import annotations

from .config import CTCConfig


def _widths(cfg: CTCConfig, layer: int) -> dict[str, int]:
    s = cfg.structure or {}

    def get(key: str, default: int) -> int:
        return int(s[key][layer]) if key in s else default

    return {"heads": get("heads", cfg.n_heads), "ffn": get("ffn", cfg.ffn_dim),
            "ffn_macaron": get("ffn_macaron", cfg.ffn_dim) if cfg.encoder == "conformer" else 0,
            "conv": get("conv", cfg.d_model) if cfg.encoder == "conformer" else 0}


def positions(cfg: CTCConfig, frames: int) -> int:
    """Encoder positions for ``frames`` input frames."""
    if cfg.encoder == "whisper":
        return (frames + 1) // 2
    return max(0, ((frames - 1) // 2 - 1) // 2)


def stem_flops(cfg: CTCConfig, frames: int) -> int:
    d, t = cfg.d_model, positions(cfg, frames)
    if cfg.encoder == "whisper":
        return 2 * (frames * cfg.n_mels * d * 3 + t * d * d * 3)
    f1 = (cfg.n_mels - 1) // 2
    f2 = (f1 - 1) // 2
    t1 = (frames - 1) // 2
    return 2 * (t1 * f1 * d * 9 + t * f2 * d * d * 9 + t * (d * f2) * d)


def attention_product_flops(cfg: CTCConfig, layer: int, frames: int) -> int:
    """Scores and weighted values of one layer's self-attention (quadratic in the positions)."""
    t = positions(cfg, frames)
    return 2 * 2 * t * t * _widths(cfg, layer)["heads"] * cfg.head_dim


def layer_flops(cfg: CTCConfig, layer: int, frames: int) -> int:
    d, t, hd = cfg.d_model, positions(cfg, frames), cfg.head_dim
    w = _widths(cfg, layer)
    projections = 4 * t * d * w["heads"] * hd
    ffn = 2 * t * d * w["ffn"] + 2 * t * d * w["ffn_macaron"]
    c = w["conv"]
    conv = t * d * 2 * c + t * c * cfg.conv_kernel + t * c * d if c else 0
    if c and cfg.conv_norm == "group":
        conv += 4 * c * cfg.conv_groups  # the group sums and their spread back (mean, then variance)
    return 2 * (projections + ffn + conv) + attention_product_flops(cfg, layer, frames)


def encoder_flops(cfg: CTCConfig, frames: int, exit_layer: int | None = None) -> dict[str, int]:
    """``{"stem", "layers", "head", "total"}`` for one clip of ``frames`` frames read to ``exit_layer``."""
    depth = cfg.n_layers if exit_layer is None else exit_layer
    t = positions(cfg, frames)
    out = {"stem": stem_flops(cfg, frames), "layers": sum(layer_flops(cfg, i, frames) for i in range(depth)),
           "head": 2 * t * cfg.d_model * (len(cfg.vocab) + 1)}
    out["total"] = sum(out.values())
    out["attention_products"] = sum(attention_product_flops(cfg, i, frames) for i in range(depth))  # in "layers"
    return out
