"""The Whisper adapter: the only module that knows Hugging Face Whisper's module and parameter names.

Conversion of a CTranslate2 ``WhisperSpec`` model (as shipped in the bundled weight packages) into a Hugging Face
``WhisperForConditionalGeneration`` folder; loading such a folder, dense or pruned (``speechprune_structure`` in
its config.json sends it through ``checkpoint.load_pruned``); per-layer shapes for FLOP counting; and
``WhisperAdapter``, the ``units.Adapter`` that prunes heads, FFN neurons, blocks and layers physically.

The CT2 -> HF mapping (see ``/work/shared/ASSETS.md``): the fused self-attention ``linear_0`` splits into q/k/v
rows, the fused cross-attention ``linear_1`` into k/v rows; the key bias is dropped (Whisper's ``k_proj`` has none;
a constant key bias cannot change the softmax anyway); the output projection is tied to the token embeddings.
No scale is folded into any weight.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from speechprune.errors import ConfigError, ModelError
from speechprune.io import read_json
from speechprune.models.units import LOWRANK_KEY, ORIGINAL_KEYS, STRUCTURE_FORMAT, STRUCTURE_KEY
from speechprune.models.ct2 import Ct2Model, read_ct2

if TYPE_CHECKING:
    from speechprune.models.structure import AttentionShape, EncoderDecoderShape

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
# Conversion and loading


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


def is_whisper_folder(folder: Path | str) -> bool:
    """True when ``folder/config.json`` exists and says ``model_type == "whisper"``."""
    config = Path(folder) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") == "whisper"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_whisper(folder: Path | str, device: str = "cpu", dtype=None):
    """Load ``(WhisperForConditionalGeneration, WhisperProcessor)`` from a local folder, in eval mode, sdpa attention.

    Never runs code from the folder (no ``trust_remote_code``) and never reaches a hub. ``dtype`` defaults to
    ``torch.float32``. Failures become a one-line ``ModelError`` naming the folder.
    """
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError("model folder does not exist", folder)
    if not is_whisper_folder(folder):
        raise ModelError("not a Whisper model folder (no config.json with model_type 'whisper')", folder)
    dtype = torch.float32 if dtype is None else dtype
    raw_config = read_json(folder / "config.json")
    if STRUCTURE_KEY in raw_config or LOWRANK_KEY in raw_config:  # pruned: per-layer widths, removed blocks, low rank
        from speechprune.models.checkpoint import load_pruned

        model, processor = load_pruned(folder, device=device, dtype=dtype)
        if processor is None:
            raise ModelError("pruned Whisper folder has no processor files (tokenizer.json, ...)", folder)
        return model, processor
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            folder,
            dtype=dtype,
            attn_implementation="sdpa",
            local_files_only=True,
            trust_remote_code=False,
        )
        processor = WhisperProcessor.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises OSError, ValueError, safetensors errors...
        raise ModelError(f"cannot load Whisper model: {_one_line(e)}", folder) from e
    try:
        model.to(device)
    except Exception as e:
        raise ModelError(f"cannot move Whisper model to {device!r}: {_one_line(e)}", folder) from e
    model.eval()
    return model, processor


# --------------------------------------------------------------------------------------------------------------
# Structure of a live model (dense or pruned), for FLOP counting and reports


def _attention_shape(attn) -> "AttentionShape | None":
    from speechprune.models.structure import AttentionShape

    if attn is None or attn.q_proj.out_features == 0:
        return None
    return AttentionShape(attn.q_proj.out_features // attn.head_dim, attn.head_dim)


def _ffn_dim(layer) -> int:
    fc1 = getattr(layer, "fc1", None)
    return 0 if fc1 is None else fc1.out_features


def _layer_ranks(layer, stack: str) -> tuple[tuple[str, int], ...]:
    """The low-rank factorized projections of a layer, as ``LayerShape.ranks`` (a module with a ``rank``)."""
    out = []
    for kind in _KINDS[stack]:
        if not _present(layer, kind):
            continue
        if kind == "ffn":
            mods = {"in": layer.fc1, "out": layer.fc2}
        else:
            attn = _attn_of(layer, kind)
            mods = {role: getattr(attn, f"{role}_proj") for role in ("q", "k", "v", "out")}
        out += [(f"{kind}.{role}", int(m.rank)) for role, m in mods.items() if getattr(m, "rank", None) is not None]
    return tuple(sorted(out))  # a canonical order: shapes compare equal however they were made


def whisper_shape(model) -> "EncoderDecoderShape":
    """Per-layer shape of a ``WhisperForConditionalGeneration``, read from its modules (so pruned widths and
    low-rank factorized projections count)."""
    from speechprune.models.structure import EncoderDecoderShape, LayerShape

    enc, dec = model.model.encoder, model.model.decoder
    return EncoderDecoderShape(
        d_model=int(model.config.d_model),
        n_mels=int(enc.conv1.in_channels),
        n_frames=2 * int(model.config.max_source_positions),
        n_audio_ctx=int(model.config.max_source_positions),
        vocab_size=int(model.proj_out.out_features),
        encoder=tuple(LayerShape(_attention_shape(l.self_attn), _ffn_dim(l), ranks=_layer_ranks(l, "encoder"))
                      for l in enc.layers),
        decoder=tuple(
            LayerShape(_attention_shape(l.self_attn), _ffn_dim(l), _attention_shape(l.encoder_attn),
                       ranks=_layer_ranks(l, "decoder")) for l in dec.layers
        ),
        conv_kernel=int(enc.conv1.kernel_size[0]),
    )


def _with_ranks(shape, lowrank: dict | None):
    """``shape`` with the ranks of a ``speechprune_lowrank`` record (``{"encoder.2.self_attn.q": rank, ...}``)."""
    from dataclasses import replace

    if not lowrank:
        return shape
    per_layer: dict[tuple[str, int], list[tuple[str, int]]] = {}
    for key, rank in lowrank.items():
        stack, layer, name = key.split(".", 2)
        if layer.isdigit():  # layer sites only; the stem and embeddings are never factorized
            per_layer.setdefault((stack, int(layer)), []).append((name, int(rank)))
    stacks = {stack: tuple(replace(l, ranks=tuple(sorted(per_layer.get((stack, i), [])))) for i, l in
                           enumerate(getattr(shape, stack))) for stack in _STACKS}
    return replace(shape, **stacks)


def whisper_shape_from_config(config) -> "EncoderDecoderShape":
    """The shape a ``WhisperConfig`` describes: uniform layers, or the per-layer ``speechprune_structure`` of a
    pruned folder, with the low-rank projections of ``speechprune_lowrank`` if any."""
    return _with_ranks(_shape_from_config(config), getattr(config, LOWRANK_KEY, None))


def _shape_from_config(config) -> "EncoderDecoderShape":
    from speechprune.models.structure import AttentionShape, EncoderDecoderShape, LayerShape

    d = int(config.d_model)
    structure = getattr(config, STRUCTURE_KEY, None)
    if structure:
        def att(stack: str, heads: int | None) -> AttentionShape | None:
            return None if heads is None else AttentionShape(heads, structure[stack]["original"]["head_dim"])

        return EncoderDecoderShape(
            d_model=d, n_mels=int(config.num_mel_bins), n_frames=2 * int(config.max_source_positions),
            n_audio_ctx=int(config.max_source_positions), vocab_size=int(config.vocab_size),
            encoder=tuple(LayerShape(att("encoder", l["self_attn"]), l["ffn"] or 0)
                          for l in structure["encoder"]["layers"]),
            decoder=tuple(LayerShape(att("decoder", l["self_attn"]), l["ffn"] or 0, att("decoder", l["cross_attn"]))
                          for l in structure["decoder"]["layers"]),
        )
    enc_att = AttentionShape(config.encoder_attention_heads, d // config.encoder_attention_heads)
    dec_att = AttentionShape(config.decoder_attention_heads, d // config.decoder_attention_heads)
    return EncoderDecoderShape(
        d_model=d, n_mels=int(config.num_mel_bins), n_frames=2 * int(config.max_source_positions),
        n_audio_ctx=int(config.max_source_positions), vocab_size=int(config.vocab_size),
        encoder=tuple(LayerShape(enc_att, config.encoder_ffn_dim) for _ in range(config.encoder_layers)),
        decoder=tuple(LayerShape(dec_att, config.decoder_ffn_dim, dec_att) for _ in range(config.decoder_layers)),
    )


# --------------------------------------------------------------------------------------------------------------
# Surgery: the ``speechprune.models.units.Adapter`` of ``WhisperForConditionalGeneration``
#
# Heads and FFN neurons are removed by replacing the ``nn.Linear`` modules with smaller ones. A removed block
# (attention or FFN, with its pre-norm) becomes ``None`` and its layer's class becomes a ``PrunedWhisper*Layer``,
# whose forward skips it. Decoder attention modules are numbered ``layer_idx`` 0.. over the PRESENT blocks of
# each kind (self- and cross-attention separately), so ``DynamicCache`` slots stay dense: transformers reads the
# decoded length from self-attention slot 0. After every change ``model.config`` is re-synced: layer counts, the
# FFN width where uniform, and the per-layer structure under ``config.speechprune_structure``.

_STACKS = ("encoder", "decoder")
_KINDS = {"encoder": ("self_attn", "ffn"), "decoder": ("self_attn", "cross_attn", "ffn")}
_ATTN = {"self_attn": ("self_attn", "self_attn_layer_norm"), "cross_attn": ("encoder_attn", "encoder_attn_layer_norm")}
_FFN = ("fc1", "fc2", "final_layer_norm")
_PRUNED_CLASSES: dict[str, type] = {}


def _pruned_layer_classes() -> dict[str, type]:
    """``PrunedWhisperEncoderLayer`` / ``PrunedWhisperDecoderLayer``, defined on first use (transformers is heavy
    to import). They are reachable as attributes of this module, so pickling finds them."""
    if _PRUNED_CLASSES:
        return _PRUNED_CLASSES
    import torch
    from torch import nn
    from transformers.models.whisper.modeling_whisper import WhisperDecoderLayer, WhisperEncoderLayer

    def _ffn_residual(layer, hidden_states):
        residual = hidden_states
        hidden_states = layer.final_layer_norm(hidden_states)
        hidden_states = layer.activation_fn(layer.fc1(hidden_states))
        hidden_states = nn.functional.dropout(hidden_states, p=layer.activation_dropout, training=layer.training)
        hidden_states = layer.fc2(hidden_states)
        hidden_states = nn.functional.dropout(hidden_states, p=layer.dropout, training=layer.training)
        return residual + hidden_states

    class PrunedWhisperEncoderLayer(WhisperEncoderLayer):
        """``WhisperEncoderLayer`` whose removed blocks (``None``) pass the residual stream through untouched.

        The rest is transformers 5.x ``WhisperEncoderLayer.forward``, line for line."""

        def forward(self, hidden_states, attention_mask, **kwargs):
            if self.self_attn is not None:
                residual = hidden_states
                hidden_states = self.self_attn_layer_norm(hidden_states)
                hidden_states, _ = self.self_attn(hidden_states=hidden_states, attention_mask=attention_mask, **kwargs)
                hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
                hidden_states = residual + hidden_states

            if self.fc1 is not None:
                hidden_states = _ffn_residual(self, hidden_states)

            if hidden_states.dtype == torch.float16:
                clamp_value = torch.finfo(hidden_states.dtype).max - 1000
                hidden_states = torch.clamp(hidden_states, min=-clamp_value, max=clamp_value)
            return hidden_states

    class PrunedWhisperDecoderLayer(WhisperDecoderLayer):
        """``WhisperDecoderLayer`` whose removed blocks (``None``) pass the residual stream through untouched.

        The rest is transformers 5.x ``WhisperDecoderLayer.forward``, line for line."""

        def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                    encoder_attention_mask=None, cache=None, use_cache=True, **kwargs):
            if self.self_attn is not None:
                residual = hidden_states
                hidden_states = self.self_attn_layer_norm(hidden_states)
                hidden_states, _ = self.self_attn(
                    hidden_states, cache=cache, attention_mask=attention_mask, **kwargs
                )
                hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
                hidden_states = residual + hidden_states

            if self.encoder_attn is not None and encoder_hidden_states is not None:
                residual = hidden_states
                hidden_states = self.encoder_attn_layer_norm(hidden_states)
                hidden_states, _ = self.encoder_attn(
                    hidden_states,
                    key_value_states=encoder_hidden_states,
                    attention_mask=encoder_attention_mask,
                    cache=cache,
                    **kwargs,
                )
                hidden_states = nn.functional.dropout(hidden_states, p=self.dropout, training=self.training)
                hidden_states = residual + hidden_states

            if self.fc1 is not None:
                hidden_states = _ffn_residual(self, hidden_states)
            return hidden_states

    for cls in (PrunedWhisperEncoderLayer, PrunedWhisperDecoderLayer):
        cls.__module__, cls.__qualname__ = __name__, cls.__name__
        _PRUNED_CLASSES[cls.__name__] = cls
    return _PRUNED_CLASSES


def __getattr__(name: str):
    if name in ("PrunedWhisperEncoderLayer", "PrunedWhisperDecoderLayer"):
        return _pruned_layer_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _attn_of(layer, kind: str):
    return getattr(layer, _ATTN[kind][0]) if kind in _ATTN else None


def _present(layer, kind: str) -> bool:
    return (getattr(layer, "fc1", None) if kind == "ffn" else _attn_of(layer, kind)) is not None


def _config_original(config, stack: str) -> dict:
    heads = int(getattr(config, f"{stack}_attention_heads"))
    return {"layers": int(getattr(config, f"{stack}_layers")), "heads": heads,
            "head_dim": int(config.d_model) // heads, "ffn": int(getattr(config, f"{stack}_ffn_dim"))}


class WhisperAdapter:
    """Units, surgery and structure of a Hugging Face ``WhisperForConditionalGeneration`` (see ``units.Adapter``).

    Unit groups: the heads of every encoder self-attention, decoder self-attention and decoder cross-attention
    (q/k/v rows, q/v biases, ``out_proj`` columns; ``head_dim`` wide) and the neurons of every FFN (``fc1`` rows
    and bias, ``fc2`` columns). Removable modules: ``self_attn``, ``cross_attn`` (decoder), ``ffn``.
    """

    family = "whisper"

    def real_positions(self, model, batch: dict, stack: str):
        """``[batch, 1500]`` True at encoder positions that see audio (not the 30 s window's zero padding, whose
        log-mel frames sit at the item's floor in every bin); None for the decoder (every label position is real)."""
        if stack != "encoder" or "input_features" not in batch:
            return None
        feats = batch["input_features"]
        floor = feats.amin(dim=(1, 2), keepdim=True)
        real_frames = ~(feats == floor).all(dim=1)  # [B, frames]
        n = real_frames.shape[1] // 2
        return real_frames[:, : 2 * n].reshape(-1, n, 2).any(dim=-1)

    # ----- navigation and validation

    def stacks(self, model) -> tuple[str, ...]:
        return _STACKS

    def stack_module(self, model, stack: str):
        if stack not in _STACKS:
            raise ConfigError(f"unknown stack {stack!r} for whisper; choose from {', '.join(_STACKS)}")
        return model.model.encoder if stack == "encoder" else model.model.decoder

    def n_layers(self, model, stack: str) -> int:
        return len(self.stack_module(model, stack).layers)

    def module_kinds(self, model, stack: str) -> tuple[str, ...]:
        self.stack_module(model, stack)
        return _KINDS[stack]

    def _layer(self, model, stack: str, layer: int):
        from speechprune.models.units import check_layer_indices

        layers = self.stack_module(model, stack).layers
        return layers[check_layer_indices(f"whisper {stack}", len(layers), [layer])[0]]

    def _check_kind(self, stack: str, kind: str) -> None:
        from speechprune.models.units import MODULE_KINDS

        if kind == "conv":
            raise ConfigError(
                "whisper's conv stem cannot be removed: it embeds the log-mel features for the encoder "
                "(removable: self_attn, cross_attn, ffn)"
            )
        if kind not in MODULE_KINDS:
            raise ConfigError(f"unknown module kind {kind!r}; choose from {', '.join(_KINDS[stack])}")
        if kind not in _KINDS[stack]:
            raise ConfigError(f"whisper {stack} layers have no {kind}; choose from {', '.join(_KINDS[stack])}")

    # ----- units

    def unit_groups(self, model) -> list:
        from speechprune.models.units import ParamSlice, UnitGroup

        groups = []
        for stack in _STACKS:
            for i, layer in enumerate(self.stack_module(model, stack).layers):
                for kind in self._present_kinds(layer, stack):
                    if kind == "ffn":
                        params = [ParamSlice(layer.fc1.weight, 0, 1), ParamSlice(layer.fc1.bias, 0, 1),
                                  ParamSlice(layer.fc2.weight, 1, 1)]
                        groups.append(UnitGroup(stack, i, kind, layer.fc1.out_features, 1, params, layer.fc2))
                        continue
                    attn = _attn_of(layer, kind)
                    hd = attn.head_dim
                    projections = (attn.q_proj, attn.k_proj, attn.v_proj)
                    params = [ParamSlice(p.weight, 0, hd) for p in projections]
                    params += [ParamSlice(p.bias, 0, hd) for p in projections if p.bias is not None]
                    params.append(ParamSlice(attn.out_proj.weight, 1, hd))
                    groups.append(UnitGroup(stack, i, kind, attn.num_heads, hd, params, attn.out_proj))
        return groups

    @staticmethod
    def _present_kinds(layer, stack: str) -> list[str]:
        """The kinds of ``layer``'s blocks that pruning has not removed, in model order."""
        return [kind for kind in _KINDS[stack] if _present(layer, kind)]

    def prune_units(self, model, group, keep: list[int]) -> None:
        from speechprune.models.units import GROUP_KINDS, check_keep, shrink_ffn, shrink_heads

        layer = self._layer(model, group.stack, group.layer)
        if group.kind not in GROUP_KINDS:
            raise ConfigError(f"unknown unit group kind {group.kind!r}; choose from {', '.join(GROUP_KINDS)}")
        self._check_kind(group.stack, group.kind)
        if not _present(layer, group.kind):
            raise ConfigError(f"{group.key} is removed; it has no units to prune")
        attn = _attn_of(layer, group.kind)
        n = layer.fc1.out_features if attn is None else attn.num_heads
        if group.n_units != n:
            raise ConfigError(f"unit group {group.key} is stale: it says {group.n_units} units, the model has {n}")
        keep = check_keep(group.key, n, keep)
        if len(keep) == n:
            return
        if attn is None:
            layer.fc1, layer.fc2 = shrink_ffn(layer.fc1, layer.fc2, keep)
        else:
            attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj = shrink_heads(
                attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, keep, attn.head_dim
            )
            attn.num_heads = len(keep)  # k/v are viewed as [.., num_heads, head_dim]; q uses -1
            attn.embed_dim = len(keep) * attn.head_dim  # the inner width (HF's own head pruning did the same)
        self._sync_config(model)

    def weight_sites(self, model) -> list:
        from speechprune.models.units import WeightSite

        sites = []

        def add(key, stack, layer, component, role, parent, attr, tied=False):
            if getattr(parent, attr, None) is not None:
                sites.append(WeightSite(key, stack, layer, component, role, parent, attr, tied))

        enc, dec = model.model.encoder, model.model.decoder
        add("encoder.conv.0", "encoder", None, "conv", "0", enc, "conv1")
        add("encoder.conv.1", "encoder", None, "conv", "1", enc, "conv2")
        tied = model.proj_out.weight is dec.embed_tokens.weight
        add("decoder.embed.tokens", "decoder", None, "embed", "tokens", dec, "embed_tokens", tied)
        add("decoder.embed.positions", "decoder", None, "embed", "positions", dec, "embed_positions")
        for stack in _STACKS:
            for i, layer in enumerate(self.stack_module(model, stack).layers):
                kinds = self._present_kinds(layer, stack)
                for kind in kinds:
                    if kind == "ffn":
                        add(f"{stack}.{i}.ffn.in", stack, i, "ffn", "in", layer, "fc1")
                        add(f"{stack}.{i}.ffn.out", stack, i, "ffn", "out", layer, "fc2")
                        continue
                    attn = _attn_of(layer, kind)
                    for role in ("q", "k", "v", "out"):
                        add(f"{stack}.{i}.{kind}.{role}", stack, i, kind, role, attn, f"{role}_proj")
                for kind in kinds:
                    norm = _FFN[2] if kind == "ffn" else _ATTN[kind][1]
                    add(f"{stack}.{i}.{kind}.norm", stack, i, "norm", kind, layer, norm)
            add(f"{stack}.norm", stack, None, "norm", "final", self.stack_module(model, stack), "layer_norm")
        if not tied:
            add("decoder.embed.output", "decoder", None, "embed", "output", model, "proj_out")
        return sites

    # ----- modules and layers

    def remove_module(self, model, stack: str, layer: int, kind: str) -> None:
        self.stack_module(model, stack)
        self._check_kind(stack, kind)
        target = self._layer(model, stack, layer)
        if not _present(target, kind):
            raise ConfigError(f"whisper {stack} layer {layer} {kind} is already removed")
        if stack == "decoder" and kind == "self_attn":
            self._check_decoder_self_attn([l for l in self.stack_module(model, stack).layers if l is not target])
        self._mark_pruned(target, stack)
        for name in _FFN if kind == "ffn" else _ATTN[kind]:
            setattr(target, name, None)
        self._renumber(model)
        self._sync_config(model)

    def remove_layers(self, model, stack: str, layers: list[int]) -> None:
        from torch import nn

        from speechprune.models.units import check_layer_indices

        mod = self.stack_module(model, stack)
        drop = set(check_layer_indices(f"whisper {stack}", len(mod.layers), layers))
        if not drop:
            return
        if len(drop) == len(mod.layers):
            raise ConfigError(f"cannot remove every whisper {stack} layer; at least one must stay")
        kept = [l for i, l in enumerate(mod.layers) if i not in drop]
        if stack == "decoder":
            self._check_decoder_self_attn(kept)
        mod.layers = nn.ModuleList(kept)
        self._renumber(model)
        self._sync_config(model)

    @staticmethod
    def _check_decoder_self_attn(remaining_layers) -> None:
        if not any(l.self_attn is not None for l in remaining_layers):
            raise ConfigError(
                "cannot remove the last decoder self_attn: transformers reads the decoded length from its KV cache"
            )

    @staticmethod
    def _mark_pruned(layer, stack: str) -> None:
        name = "PrunedWhisperEncoderLayer" if stack == "encoder" else "PrunedWhisperDecoderLayer"
        cls = _pruned_layer_classes()[name]
        if type(layer) is not cls:
            layer.__class__ = cls

    def _renumber(self, model) -> None:
        """Dense ``layer_idx`` over the present decoder self- and cross-attention blocks (KV cache slots)."""
        n_self = n_cross = 0
        for layer in model.model.decoder.layers:
            if layer.self_attn is not None:
                layer.self_attn.layer_idx, n_self = n_self, n_self + 1
            if layer.encoder_attn is not None:
                layer.encoder_attn.layer_idx, n_cross = n_cross, n_cross + 1

    # ----- structure

    def structure(self, model) -> dict:
        """``{"format": 1, "family": "whisper", <stack>: {"original": {layers, heads, head_dim, ffn},
        "layers": [{"self_attn": heads | None, ["cross_attn": heads | None,] "ffn": width | None}, ...]}}``."""
        stored = getattr(model.config, STRUCTURE_KEY, None) or {}
        out: dict[str, Any] = {"format": STRUCTURE_FORMAT, "family": self.family}
        for stack in _STACKS:
            original = (stored.get(stack) or {}).get("original") or _config_original(model.config, stack)
            layers = []
            for layer in self.stack_module(model, stack).layers:
                entry: dict[str, int | None] = {}
                for kind in _KINDS[stack]:
                    if not _present(layer, kind):
                        entry[kind] = None
                    elif kind == "ffn":
                        entry[kind] = int(layer.fc1.out_features)
                    else:
                        entry[kind] = int(_attn_of(layer, kind).num_heads)
                layers.append(entry)
            out[stack] = {"original": dict(original), "layers": layers}
        return out

    def stock_compatible(self, model) -> bool:
        s = self.structure(model)
        for stack in _STACKS:
            heads = s[stack]["original"]["heads"]
            layers = s[stack]["layers"]
            if any(l[k] != heads for l in layers for k in _KINDS[stack] if k != "ffn"):
                return False
            widths = {l["ffn"] for l in layers}
            if None in widths or len(widths) != 1:
                return False
        return True

    def _sync_config(self, model) -> None:
        """Keep ``model.config`` true: layer counts, uniform FFN widths, and the structure."""
        s = self.structure(model)
        config = model.config
        for stack in _STACKS:
            layers = s[stack]["layers"]
            setattr(config, f"{stack}_layers", len(layers))
            widths = {l["ffn"] for l in layers}
            if len(widths) == 1 and None not in widths:
                setattr(config, f"{stack}_ffn_dim", widths.pop())
        setattr(config, STRUCTURE_KEY, s)

    def apply_structure(self, model, structure: dict) -> None:
        from torch import nn

        from speechprune.models.units import shrink_ffn, shrink_heads

        def bad(why: str) -> ModelError:
            return ModelError(f"speechprune structure does not fit this whisper model: {why}")

        if not isinstance(structure, dict) or structure.get("family") != self.family:
            raise bad(f"family {structure.get('family') if isinstance(structure, dict) else structure!r}")
        if structure.get("format") != STRUCTURE_FORMAT:
            raise bad(f"format {structure.get('format')!r} (this version reads {STRUCTURE_FORMAT})")
        for stack in _STACKS:
            mod = self.stack_module(model, stack)
            entries = (structure.get(stack) or {}).get("layers")
            if not isinstance(entries, list) or not 1 <= len(entries) <= len(mod.layers):
                raise bad(f"{stack} layers {entries!r} (the model has {len(mod.layers)})")
            if len(entries) < len(mod.layers):
                mod.layers = nn.ModuleList(list(mod.layers)[: len(entries)])
            for i, (layer, entry) in enumerate(zip(mod.layers, entries)):
                if not isinstance(entry, dict) or set(entry) != set(_KINDS[stack]):
                    raise bad(f"{stack} layer {i}: {entry!r} (keys must be {', '.join(_KINDS[stack])})")
                for kind in _KINDS[stack]:
                    want = entry[kind]
                    if want is None:
                        self._mark_pruned(layer, stack)
                        for name in _FFN if kind == "ffn" else _ATTN[kind]:
                            setattr(layer, name, None)
                        continue
                    if not _present(layer, kind):
                        raise bad(f"{stack} layer {i} {kind} is removed in the model")
                    attn = _attn_of(layer, kind)
                    have = layer.fc1.out_features if attn is None else attn.num_heads
                    if isinstance(want, bool) or not isinstance(want, int) or not 1 <= want <= have:
                        raise bad(f"{stack} layer {i} {kind}: {want!r} units (the model has {have})")
                    if want == have:
                        continue
                    keep = list(range(want))  # which units does not matter: the weights are loaded afterwards
                    if attn is None:
                        layer.fc1, layer.fc2 = shrink_ffn(layer.fc1, layer.fc2, keep)
                    else:
                        attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj = shrink_heads(
                            attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj, keep, attn.head_dim
                        )
                        attn.num_heads, attn.embed_dim = want, want * attn.head_dim
            original = (structure.get(stack) or {}).get("original")
            if original is not None and (not isinstance(original, dict) or set(original) != ORIGINAL_KEYS):
                raise bad(f"{stack} original {original!r}")
        if not any(l.self_attn is not None for l in model.model.decoder.layers):
            raise bad("no decoder self_attn is left")
        self._renumber(model)
        setattr(model.config, STRUCTURE_KEY, structure)  # the originals it records survive the re-sync
        self._sync_config(model)
