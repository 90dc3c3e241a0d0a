"""``export_onnx`` and ``OnnxWhisper`` on tiny random Whispers (dense and pruned) and on the real tiny.en: ONNX
Runtime must decode exactly like speechprune's own torch decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from speechprune.errors import ConfigError, ModelError, SpeechpruneError
from speechprune.evaluate.onnx_backend import OnnxWhisper, scatter_logits
from speechprune.export.onnx import GRAPHS, MANIFEST, export_onnx
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.models.whisper.decoding import GraphCache, reorder_cache

from speechprune.bench.environment import cpu_isa, int8_saturates
from speechprune.numerics import quantization_rtol

from closeness import WHISPER_DEPTH, parity_bound, whisper_depth
from tiny_models import EOT, NO_TS, SOT, build_tiny, pruned_tiny_whisper

SOUNDS = Path("/usr/share/asterisk/sounds/en")
FEATS = np.random.default_rng(0).standard_normal((3, 80, 3000)).astype(np.float32)
SUBSET = list(range(0, 40)) + [SOT, EOT, NO_TS]


def save_tiny_folder(model, folder: Path) -> Path:
    """``model`` (vocabulary 64) saved with a word-level tokenizer whose specials sit at SOT/EOT/NO_TS."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizerFast

    from speechprune.models.checkpoint import save_pruned

    tok = Tokenizer(models.WordLevel(vocab={f"t{i}": i for i in range(SOT)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = ["<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>", "<|unused|>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tok.json"))
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(folder / "tok.json"), unk_token="<|endoftext|>",
                                     bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    (folder / "tok.json").unlink()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT, eos_token_id=EOT, bos_token_id=EOT, pad_token_id=EOT, no_timestamps_token_id=NO_TS,
        suppress_tokens=[7], begin_suppress_tokens=[EOT], is_multilingual=False)
    processor = WhisperProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=80), tokenizer=tokenizer)
    return save_pruned(model, processor, folder / "model")


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    return {"dense": save_tiny_folder(build_tiny("whisper", seed=1), root / "dense"),
            "pruned": save_tiny_folder(pruned_tiny_whisper(seed=2), root / "pruned")}


@pytest.fixture(scope="module")
def exported(sources, tmp_path_factory):
    """``exported(kind, quantize=False, output_vocab=None) -> (folder, manifest)``, each exported once."""
    root = tmp_path_factory.mktemp("onnx")
    done: dict = {}

    def get(kind: str, quantize: bool = False, output_vocab: tuple | None = None):
        key = (kind, quantize, output_vocab)
        if key not in done:
            out = root / f"{kind}-{int(quantize)}-{len(output_vocab or ())}"
            done[key] = out, export_onnx(sources[kind], out, quantize=quantize,
                                         output_vocab=None if output_vocab is None else list(output_vocab))
        return done[key]

    return get


def decode(backend, options: DecodeOptions, feats: np.ndarray = FEATS) -> list[list[int]]:
    n = feats.shape[0]
    return backend.decode(backend.encode(feats), [None] * n, [None] * n, options).tokens


@pytest.mark.parametrize("kind", ["dense", "pruned"])
def test_export_writes_checked_graphs_and_the_processor_files(kind, sources, exported):
    folder, manifest = exported(kind)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{g}.onnx" for g in GRAPHS] + [MANIFEST, "generation_config.json", "processor_config.json",
                                         "tokenizer.json", "tokenizer_config.json"])
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    on_disk = json.loads((folder / MANIFEST).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert manifest["quantized"] is False and manifest["output_vocab"] is None and manifest["n_mels"] == 80
    structure = manifest["structure"]
    assert len(structure["encoder"]["layers"]) == 2  # pruned: 3 layers, one removed
    if kind == "pruned":
        assert structure["decoder"]["layers"][1]["self_attn"] is None
        assert manifest["decoder_self_layers"] == [0, 2] and manifest["decoder_cross_layers"] == [0, 1]
    for key in ("encoder_max_abs_diff", "prefill_logits_max_abs_diff", "step_logits_max_abs_diff"):
        assert manifest["check"][key] < parity_bound(manifest["check"], whisper_depth(3, 3)), key
    be = OnnxWhisper.from_folder(folder, threads=1)
    assert be.shape == TorchWhisper.from_folder(sources[kind]).shape
    assert be.disk_bytes == sum((folder / f"{g}.onnx").stat().st_size for g in GRAPHS)


@pytest.mark.parametrize("kind", ["dense", "pruned"])
def test_onnx_greedy_and_beam_tokens_equal_torch(kind, sources, exported):
    torch_be = TorchWhisper.from_folder(sources[kind])
    onnx_be = OnnxWhisper.from_folder(exported(kind)[0], threads=1)
    for options in (DecodeOptions(max_new_tokens=20), DecodeOptions(beam_size=3, max_new_tokens=20)):
        want = decode(torch_be, options)
        assert decode(onnx_be, options) == want
        assert sum(map(len, want)) > 6 and len({tuple(t) for t in want}) > 1  # real sequences, not one stuck token
    one = decode(onnx_be, DecodeOptions(beam_size=3, max_new_tokens=20), FEATS[1:2])  # beams of a batch are separate
    assert one == decode(onnx_be, DecodeOptions(beam_size=3, max_new_tokens=20))[1:2]
    assert onnx_be.decode_text(want[0]) == torch_be.decode_text(want[0])


def test_onnx_shallow_fusion_decodes_like_torch_fusion_and_weight_zero_is_the_plain_search(sources, exported):
    from models.lm.tiny_lm import toy_lm
    from speechprune.models.fusion import FusionLM

    torch_be = TorchWhisper.from_folder(sources["dense"])
    onnx_be = OnnxWhisper.from_folder(exported("dense")[0], threads=1)
    lm = FusionLM(toy_lm(seed=3))
    for beam in (1, 3):
        plain = decode(onnx_be, DecodeOptions(beam_size=beam, max_new_tokens=12))
        assert decode(onnx_be, DecodeOptions(beam_size=beam, max_new_tokens=12, lm=lm, lm_weight=0.0)) == plain
        fused = DecodeOptions(beam_size=beam, max_new_tokens=12, lm=lm, lm_weight=2.0, lm_bonus=0.5)
        steps = lm.steps
        got = decode(onnx_be, fused)
        assert lm.steps > steps and lm.seconds > 0  # the LM was stepped, and its time counted
        assert got == decode(torch_be, fused) and got != plain  # the LM changed the output, alike in both backends


def test_output_vocab_decodes_like_suppressing_every_other_token(sources, exported):
    folder, manifest = exported("pruned", output_vocab=tuple(SUBSET))
    assert manifest["output_vocab"] == SUBSET
    assert manifest["check"]["step_logits_max_abs_diff"] < parity_bound(manifest["check"], whisper_depth(3, 3))
    onnx_be = OnnxWhisper.from_folder(folder, threads=1)
    assert onnx_be.shape.vocab_size == len(SUBSET)  # FLOPs count the restricted projection
    torch_be = TorchWhisper.from_folder(sources["pruned"])
    outside = tuple(sorted(set(range(64)) - set(SUBSET)))
    from dataclasses import replace

    torch_be.vocab = replace(torch_be.vocab, suppress=torch_be.vocab.suppress + outside)
    for beam in (1, 3):
        options = DecodeOptions(beam_size=beam, max_new_tokens=20)
        want = decode(torch_be, options)
        assert decode(onnx_be, options) == want
        assert all(t in SUBSET for seq in want for t in seq)


def test_output_vocab_without_end_of_text_is_refused(sources, tmp_path):
    with pytest.raises(ConfigError, match="end-of-text"):
        export_onnx(sources["dense"], tmp_path / "out", output_vocab=list(range(10)))
    assert not (tmp_path / "out").exists()


def test_int8_export_runs_and_mostly_agrees(exported):
    import onnx

    folder, manifest = exported("dense", quantize=True)
    assert manifest["quantized"] and manifest["quantization"]["weight_type"] == "QInt8"
    ops = {n.op_type for n in onnx.load(str(folder / "decoder_step.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    check, bits = manifest["check"], manifest["quantization"]["weight_bits"]
    assert bits == (7 if int8_saturates(cpu_isa()) else 8)  # the machine chose the weights' range
    for key in ("encoder_max_abs_diff", "prefill_logits_max_abs_diff", "step_logits_max_abs_diff"):
        assert 0 < check[key] < quantization_rtol(bits, WHISPER_DEPTH) * check["logits_scale"], key  # quantized, yet close
    fp32 = OnnxWhisper.from_folder(exported("dense")[0], threads=1)
    int8 = OnnxWhisper.from_folder(folder, threads=1)
    feats = np.random.default_rng(5).standard_normal((8, 80, 3000)).astype(np.float32)
    a, b = decode(fp32, DecodeOptions(max_new_tokens=8), feats), decode(int8, DecodeOptions(max_new_tokens=8), feats)
    # random tiny models sit near ties (real tiny.en: 72 of 80 transcripts identical), so only half must agree
    assert sum(x == y for x, y in zip(a, b)) >= 4


def test_cache_reorder_and_logit_scatter():
    cache = GraphCache(group=2, self_kv=[np.arange(4.0)[:, None]], cross_kv=[np.array([[10.0], [20.0]])])
    reorder_cache(cache, torch.tensor([1, 1, 2, 3]))  # rows stay within their item: cross cache untouched
    assert cache.self_kv[0][:, 0].tolist() == [1, 1, 2, 3] and cache.group == 2 and len(cache.cross_kv[0]) == 2
    reorder_cache(cache, torch.tensor([2, 0, 2, 3]))  # row 0 takes item 1's beam: one cross row per row
    assert cache.group == 1 and cache.cross_kv[0][:, 0].tolist() == [20, 10, 20, 20]
    full = scatter_logits(np.array([[1.0, 2.0]], np.float32), np.array([3, 0]), 5)
    assert full.tolist() == [[2.0, -np.inf, -np.inf, 1.0, -np.inf]]


def test_bad_folders_give_one_line_errors(sources, exported, tmp_path):
    cases = []
    with pytest.raises(ModelError) as e:
        export_onnx(tmp_path / "missing", tmp_path / "out")
    cases.append((e.value, "missing"))
    with pytest.raises(ModelError) as e:
        OnnxWhisper.from_folder(sources["dense"])  # a torch folder, not an export
    cases.append((e.value, "speechprune_onnx.json"))
    broken = tmp_path / "broken"
    broken.mkdir()
    folder, _ = exported("dense")
    for f in folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "decoder_step.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ModelError) as e:
        OnnxWhisper.from_folder(broken)
    cases.append((e.value, "decoder_step.onnx"))
    for error, name in cases:
        assert isinstance(error, SpeechpruneError) and "\n" not in str(error) and name in str(error)
    with pytest.raises(ConfigError, match="not empty"):
        export_onnx(sources["dense"], folder)


@pytest.mark.integration
def test_real_tiny_en_onnx_greedy_equals_torch_on_real_speech(tmp_path):
    if not SOUNDS.is_dir():
        pytest.skip(f"Debian asterisk sounds absent ({SOUNDS})")
    from speechprune.data.audio import load_audio
    from speechprune.data.features import FeatureFrontend
    from speechprune.models.registry import resolve_model

    src = resolve_model("whisper-tiny.en")
    manifest = export_onnx(src, tmp_path / "onnx")
    assert manifest["check"]["step_logits_max_abs_diff"] < parity_bound(manifest["check"], whisper_depth(4, 4), k=1536)
    clips = ["agent-pass.wav", "vm-goodbye.wav", "conf-onlyperson.wav"]
    feats = FeatureFrontend(80)([load_audio(SOUNDS / c) for c in clips])
    want = decode(TorchWhisper.from_folder(src), DecodeOptions(), feats)
    onnx_be = OnnxWhisper.from_folder(tmp_path / "onnx", threads=2)
    assert decode(onnx_be, DecodeOptions(), feats) == want
    assert "password" in onnx_be.decode_text(want[0]).lower()
