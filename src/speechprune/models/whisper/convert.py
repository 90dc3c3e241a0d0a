"""CTranslate2 -> Hugging Face conversion of Whisper, and the reverse name mapping for the CTranslate2 export.

Conversion of a CTranslate2 ``WhisperSpec`` model (as shipped in the bundled weight packages) into a Hugging Face
``WhisperForConditionalGeneration`` folder (``convert_ct2_to_hf``), with its config, generation config and processor
built from the CT2 tensor shapes, ``config.json`` and ``tokenizer.json``; ``whisper_ct2_variables`` maps a live
model back to CT2 names.

The CT2 -> HF mapping (see ``/work/shared/ASSETS.md``): the fused self-attention ``linear_0`` splits into q/k/v
rows, the fused cross-attention ``linear_1`` into k/v rows; the key bias is dropped (Whisper's ``k_proj`` has none;
a constant key bias cannot change the softmax anyway); the output projection is tied to the token embeddings.
No scale is folded into any weight.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from speechprune.errors import ModelError
from speechprune.io import read_json
from speechprune.models.ct2 import Ct2Model, read_ct2

CT2_GELU = 3  # ctranslate2 ActivationType.GELU
# openai/whisper's rule (and ctranslate2's): multilingual checkpoints have the 51865-token vocabulary or larger.
MULTILINGUAL_MIN_VOCAB = 51865
MAX_LENGTH = 448
AUX_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
_TASKS = ("translate", "transcribe")
_NON_LANGUAGE_SPECIALS = {
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nocaptions|>",
    "<|notimestamps|>",
}
_LANGUAGE_TOKEN = re.compile(r"^<\|[a-z]{2,3}(?:_[A-Za-z]+)?\|>$")


# --------------------------------------------------------------------------------------------------------------
# CT2 -> HF state dict


def _count_layers(ct2: Ct2Model, stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in ct2.variables if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise ModelError(f"CTranslate2 model has non-contiguous {stack} layers: {sorted(indices)}")
    return len(indices)


def _f32(array: np.ndarray) -> np.ndarray:
    return np.array(array, dtype=np.float32, order="C", copy=True)  # writable, detached from the file bytes


def ct2_to_hf_state_dict(ct2: Ct2Model) -> dict[str, np.ndarray]:
    """Map a CT2 ``WhisperSpec`` to ``WhisperForConditionalGeneration`` parameter names, as float32 arrays.

    ``proj_out.weight`` is left out: it is tied to ``model.decoder.embed_tokens.weight``.
    """
    if ct2.spec != "WhisperSpec":
        raise ModelError(f"expected a CTranslate2 WhisperSpec model, got {ct2.spec!r}")
    for stack in ("encoder", "decoder"):
        if f"{stack}/pre_norm" in ct2.variables and not ct2.scalar(f"{stack}/pre_norm"):
            raise ModelError(f"CTranslate2 {stack} is post-norm; Whisper is pre-norm")
    if "decoder/activation" in ct2.variables and ct2.scalar("decoder/activation") != CT2_GELU:
        raise ModelError(f"CTranslate2 decoder activation is {ct2.scalar('decoder/activation')}, Whisper uses GELU")
    if "decoder/scale_embeddings" in ct2.variables and ct2.scalar("decoder/scale_embeddings"):
        raise ModelError("CTranslate2 decoder scales its embeddings; Whisper does not")

    g = ct2.get
    d = g("encoder/conv2/bias").shape[0]
    sd: dict[str, np.ndarray] = {}

    def put(hf: str, ct: str, rows: slice | None = None) -> None:
        value = g(ct)
        sd[hf] = _f32(value if rows is None else value[rows])

    def norm(hf: str, ct: str) -> None:
        put(f"{hf}.weight", f"{ct}/gamma")
        put(f"{hf}.bias", f"{ct}/beta")

    def linear(hf: str, ct: str, rows: slice | None = None, bias: bool = True) -> None:
        put(f"{hf}.weight", f"{ct}/weight", rows)
        if bias:
            put(f"{hf}.bias", f"{ct}/bias", rows)

    q, k, v = slice(0, d), slice(d, 2 * d), slice(2 * d, 3 * d)
    for n in (1, 2):
        put(f"model.encoder.conv{n}.weight", f"encoder/conv{n}/weight")
        put(f"model.encoder.conv{n}.bias", f"encoder/conv{n}/bias")
    put("model.encoder.embed_positions.weight", "encoder/position_encodings/encodings")
    put("model.decoder.embed_positions.weight", "decoder/position_encodings/encodings")
    put("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")

    for stack in ("encoder", "decoder"):
        for i in range(_count_layers(ct2, stack)):
            hf, ct = f"model.{stack}.layers.{i}", f"{stack}/layer_{i}"
            sa = f"{ct}/self_attention"
            if g(f"{sa}/linear_0/weight").shape[0] != 3 * d:
                raise ModelError(f"CTranslate2 {sa}/linear_0 is not a fused q/k/v projection of width {3 * d}")
            norm(f"{hf}.self_attn_layer_norm", f"{sa}/layer_norm")
            linear(f"{hf}.self_attn.q_proj", f"{sa}/linear_0", q)
            linear(f"{hf}.self_attn.k_proj", f"{sa}/linear_0", k, bias=False)
            linear(f"{hf}.self_attn.v_proj", f"{sa}/linear_0", v)
            linear(f"{hf}.self_attn.out_proj", f"{sa}/linear_1")
            if stack == "decoder":
                ca = f"{ct}/attention"
                norm(f"{hf}.encoder_attn_layer_norm", f"{ca}/layer_norm")
                linear(f"{hf}.encoder_attn.q_proj", f"{ca}/linear_0")
                linear(f"{hf}.encoder_attn.k_proj", f"{ca}/linear_1", slice(0, d), bias=False)
                linear(f"{hf}.encoder_attn.v_proj", f"{ca}/linear_1", slice(d, 2 * d))
                linear(f"{hf}.encoder_attn.out_proj", f"{ca}/linear_2")
            norm(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
            linear(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            linear(f"{hf}.fc2", f"{ct}/ffn/linear_1")
        norm(f"model.{stack}.layer_norm", f"{stack}/layer_norm")

    projection = "decoder/projection/weight"
    if projection in ct2.variables or projection in ct2.aliases:
        if ct2.aliases.get(projection) != "decoder/embeddings/weight" and not np.array_equal(
            g(projection), g("decoder/embeddings/weight")
        ):
            raise ModelError("CTranslate2 output projection is not tied to the token embeddings (Whisper ties them)")
    return sd


def whisper_ct2_variables(model) -> dict[str, np.ndarray]:
    """The weights of a live ``WhisperForConditionalGeneration`` (dense or pruned) under CTranslate2 ``WhisperSpec``
    names, as float32 arrays: the inverse of ``ct2_to_hf_state_dict``, laid out as ctranslate2's own
    ``WhisperLoader`` does (fused q/k/v rows, a zero key bias).

    Pruned blocks keep their pruned widths; removed blocks (``None``) are simply absent: what CTranslate2 cannot
    express is the exporter's business, this is only the name mapping. Raises ``ModelError`` for a config that
    CT2's ``WhisperSpec`` fixes differently (non-GELU activation, scaled embeddings).
    """
    import torch

    config = model.config
    if config.activation_function != "gelu":
        raise ModelError(f"CTranslate2's WhisperSpec runs GELU; this model uses {config.activation_function!r}")
    if config.scale_embedding:
        raise ModelError("CTranslate2's WhisperSpec does not scale token embeddings; this model's config does")

    def arr(t) -> np.ndarray:
        return t.detach().to("cpu", torch.float32).numpy().copy()

    out: dict[str, np.ndarray] = {}

    def norm(ct: str, module) -> None:
        out[f"{ct}/gamma"], out[f"{ct}/beta"] = arr(module.weight), arr(module.bias)

    def linear(ct: str, *modules) -> None:
        out[f"{ct}/weight"] = np.concatenate([arr(m.weight) for m in modules])
        if any(m.bias is not None for m in modules):
            out[f"{ct}/bias"] = np.concatenate(
                [arr(m.bias) if m.bias is not None else np.zeros(m.out_features, np.float32) for m in modules]
            )

    enc, dec = model.model.encoder, model.model.decoder
    for n in (1, 2):
        conv = getattr(enc, f"conv{n}")
        out[f"encoder/conv{n}/weight"], out[f"encoder/conv{n}/bias"] = arr(conv.weight), arr(conv.bias)
    out["encoder/position_encodings/encodings"] = arr(enc.embed_positions.weight)
    out["decoder/position_encodings/encodings"] = arr(dec.embed_positions.weight)
    out["decoder/embeddings/weight"] = arr(dec.embed_tokens.weight)
    out["decoder/projection/weight"] = arr(model.proj_out.weight)  # tied: ctranslate2 stores it as an alias
    for stack, mod in (("encoder", enc), ("decoder", dec)):
        for i, layer in enumerate(mod.layers):
            ct = f"{stack}/layer_{i}"
            if layer.self_attn is not None:
                a = layer.self_attn
                norm(f"{ct}/self_attention/layer_norm", layer.self_attn_layer_norm)
                linear(f"{ct}/self_attention/linear_0", a.q_proj, a.k_proj, a.v_proj)
                linear(f"{ct}/self_attention/linear_1", a.out_proj)
            if stack == "decoder" and layer.encoder_attn is not None:
                a = layer.encoder_attn
                norm(f"{ct}/attention/layer_norm", layer.encoder_attn_layer_norm)
                linear(f"{ct}/attention/linear_0", a.q_proj)
                linear(f"{ct}/attention/linear_1", a.k_proj, a.v_proj)
                linear(f"{ct}/attention/linear_2", a.out_proj)
            if layer.fc1 is not None:
                norm(f"{ct}/ffn/layer_norm", layer.final_layer_norm)
                linear(f"{ct}/ffn/linear_0", layer.fc1)
                linear(f"{ct}/ffn/linear_1", layer.fc2)
        norm(f"{stack}/layer_norm", mod.layer_norm)
    return out


# --------------------------------------------------------------------------------------------------------------
# Config, generation config, processor


def _special_tokens(tokenizer_json: dict) -> dict[str, int]:
    return {t["content"]: int(t["id"]) for t in tokenizer_json.get("added_tokens", []) if t.get("special", True)}


def whisper_token_ids(tokenizer_json: dict, vocab_size: int) -> dict[str, Any]:
    """Special-token ids of a Whisper tokenizer (``tokenizer.json`` content), read from its added tokens."""
    specials = _special_tokens(tokenizer_json)
    required = ("<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>")
    missing = [t for t in required if t not in specials]
    if missing:
        raise ModelError(f"tokenizer.json lacks Whisper special tokens {missing}")
    sot = specials["<|startoftranscript|>"]
    languages = {
        tok: i
        for tok, i in specials.items()
        if tok not in _NON_LANGUAGE_SPECIALS and _LANGUAGE_TOKEN.match(tok) and i > sot
    }
    return {
        "eot": specials["<|endoftext|>"],
        "sot": sot,
        "no_timestamps": specials["<|notimestamps|>"],
        "prev_sot": specials.get("<|startofprev|>"),
        "tasks": {t: specials[f"<|{t}|>"] for t in _TASKS if f"<|{t}|>" in specials},
        "languages": dict(sorted(languages.items(), key=lambda kv: kv[1])),
        "is_multilingual": vocab_size >= MULTILINGUAL_MIN_VOCAB,
    }


def build_whisper_configs(ct2: Ct2Model, ct2_config: dict, tokenizer_json: dict):
    """``(WhisperConfig, GenerationConfig)`` from CT2 tensor shapes, the CT2 ``config.json`` and the tokenizer."""
    from transformers import GenerationConfig, WhisperConfig

    vocab_size, d_model = ct2.get("decoder/embeddings/weight").shape
    ids = whisper_token_ids(tokenizer_json, vocab_size)
    suppress = [int(t) for t in ct2_config.get("suppress_ids", [])]
    begin_suppress = [int(t) for t in ct2_config.get("suppress_ids_begin", [])]
    alignment_heads = [[int(a), int(b)] for a, b in ct2_config.get("alignment_heads", [])]
    config = WhisperConfig(
        vocab_size=int(vocab_size),
        num_mel_bins=int(ct2.get("encoder/conv1/weight").shape[1]),
        d_model=int(d_model),
        encoder_layers=_count_layers(ct2, "encoder"),
        decoder_layers=_count_layers(ct2, "decoder"),
        encoder_attention_heads=int(ct2.scalar("encoder/num_heads")),
        decoder_attention_heads=int(ct2.scalar("decoder/num_heads")),
        encoder_ffn_dim=int(ct2.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        decoder_ffn_dim=int(ct2.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
        max_source_positions=int(ct2.get("encoder/position_encodings/encodings").shape[0]),
        max_target_positions=int(ct2.get("decoder/position_encodings/encodings").shape[0]),
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
    )
    gen: dict[str, Any] = dict(
        decoder_start_token_id=ids["sot"],
        bos_token_id=ids["eot"],
        eos_token_id=ids["eot"],
        pad_token_id=ids["eot"],
        max_length=min(MAX_LENGTH, config.max_target_positions),
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=ids["no_timestamps"],
        return_timestamps=False,
        max_initial_timestamp_index=50,
        alignment_heads=alignment_heads,
        is_multilingual=ids["is_multilingual"],
    )
    if ids["prev_sot"] is not None:
        gen["prev_sot_token_id"] = ids["prev_sot"]
    # transformers detects the language whenever the generation config *has* lang_to_id: English-only models must
    # not carry it (their <|en|> is never part of the prompt).
    if ids["is_multilingual"]:
        gen["lang_to_id"] = ids["languages"]
        gen["task_to_id"] = ids["tasks"]
    return config, GenerationConfig(**gen)


def build_processor(tokenizer_file: Path, num_mel_bins: int):
    """``WhisperProcessor`` from a ``tokenizer.json``; checks that the Whisper special tokens encode as one id each."""
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizerFast

    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_file), pad_token="<|endoftext|>")
    for token in ("<|startoftranscript|>", "<|notimestamps|>", "<|endoftext|>"):
        ids = tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1 or (ids[0] == tokenizer.unk_token_id and token != "<|endoftext|>"):
            raise ModelError(f"tokenizer does not encode {token} as one special token (got {ids})", tokenizer_file)
    extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)


# --------------------------------------------------------------------------------------------------------------
# Conversion


def _source_files(source: Path | str | Sequence[Path | str], aux_dir: Path | str | None) -> tuple[list[Path], Path]:
    if isinstance(source, (str, Path)) and Path(source).is_dir():
        folder = Path(source)
        return [folder / "model.bin"], Path(aux_dir) if aux_dir else folder
    parts = [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]
    if not parts:
        raise ModelError("no CTranslate2 model files given")
    return parts, Path(aux_dir) if aux_dir else parts[0].parent


def convert_ct2_to_hf(
    source: Path | str | Sequence[Path | str],
    out_dir: Path | str,
    *,
    aux_dir: Path | str | None = None,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Convert a CTranslate2 Whisper model into a Hugging Face Whisper folder (float32, safetensors).

    ``source`` is a CT2 folder (``model.bin``, ``config.json``, ``tokenizer.json``) or the ``model.bin`` part files
    in order; ``aux_dir`` holds ``config.json`` and ``tokenizer.json`` (default: the folder, or the first part's
    folder). ``out_dir`` is written in place (callers wanting atomicity pass a temporary folder). ``extra_files``
    maps file names to JSON-serializable objects written alongside. Returns ``out_dir``.
    """
    import torch
    from transformers import WhisperForConditionalGeneration

    parts, aux = _source_files(source, aux_dir)
    ct2 = read_ct2(parts)
    ct2_config = read_json(aux / "config.json")
    tokenizer_file = aux / "tokenizer.json"
    tokenizer_json = read_json(tokenizer_file)

    state = ct2_to_hf_state_dict(ct2)
    config, generation_config = build_whisper_configs(ct2, ct2_config, tokenizer_json)
    processor = build_processor(tokenizer_file, config.num_mel_bins)

    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    expected = {k for k in model.state_dict() if k != "proj_out.weight"}
    if set(state) != expected:
        raise ModelError(
            "CT2 -> HF mapping mismatch: missing "
            f"{sorted(expected - set(state))[:5]}, unexpected {sorted(set(state) - expected)[:5]}",
            parts[0],
        )
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    model.load_state_dict(tensors, strict=False, assign=True)
    model.tie_weights()
    if model.proj_out.weight.data_ptr() != model.model.decoder.embed_tokens.weight.data_ptr():
        raise ModelError("output projection did not tie to the token embeddings after conversion", parts[0])
    model.generation_config = generation_config
    model.eval()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    for name, obj in (extra_files or {}).items():
        (out / name).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
    return out

