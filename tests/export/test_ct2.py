"""``export_ct2`` on tiny random Whispers (dense and pruned every way the adapter prunes) and on the real tiny.en:
ctranslate2 and faster-whisper must decode the export exactly like speechprune's own torch decoding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from speechprune.errors import ConfigError, ModelError
from speechprune.export.ct2 import RECORD_FILE, export_ct2
from speechprune.models.checkpoint import save_pruned
from speechprune.models.ct2 import read_ct2
from speechprune.models.decoding import DecodeOptions
from speechprune.models.whisper.adapter import WhisperAdapter
from speechprune.models.whisper.backend import TorchWhisper
from speechprune.models.whisper.decoding import WhisperVocab

from speechprune.numerics import quantization_rtol, rounding_rtol

from closeness import FRAMES, assert_reorder_close, whisper_depth
from models.conftest import make_tiny_whisper, write_tiny_tokenizer

SOUNDS = Path("/usr/share/asterisk/sounds/en")
NEW_TOKENS = 20
OPTIONS = DecodeOptions(max_new_tokens=NEW_TOKENS)
FEATS = np.random.default_rng(0).standard_normal((3, 80, 3000)).astype(np.float32)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from speechprune.models.whisper.convert import build_processor

    return build_processor(write_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json"), 80)


def _group(adapter, model, key):
    return next(g for g in adapter.unit_groups(model) if g.key == key)


def _mixed(model, a: WhisperAdapter) -> None:
    """Everything CT2 cannot express natively: head counts differing within a stack, a removed FFN, removed
    self-attention, a removed cross-attention in decoder layer 0 while layer 1 keeps one."""
    a.prune_units(model, _group(a, model, "encoder.0.self_attn"), [1, 3])
    a.prune_units(model, _group(a, model, "encoder.0.ffn"), list(range(0, 128, 3)))
    a.remove_module(model, "encoder", 1, "ffn")
    a.remove_module(model, "decoder", 0, "self_attn")
    a.remove_module(model, "decoder", 0, "cross_attn")
    a.prune_units(model, _group(a, model, "decoder.1.self_attn"), [0, 2])
    a.prune_units(model, _group(a, model, "decoder.1.cross_attn"), [0, 1, 3])
    a.prune_units(model, _group(a, model, "decoder.0.ffn"), list(range(100)))


def _native(model, a: WhisperAdapter) -> None:
    """Everything CT2 expresses natively: a removed layer, one head count per stack, per-layer FFN widths, a removed
    cross-attention outside decoder layer 0."""
    a.remove_layers(model, "encoder", [0])
    a.prune_units(model, _group(a, model, "encoder.0.self_attn"), [0, 2])
    a.prune_units(model, _group(a, model, "encoder.0.ffn"), list(range(48)))
    for i in range(2):
        a.prune_units(model, _group(a, model, f"decoder.{i}.self_attn"), [0, 1, 3])
    a.prune_units(model, _group(a, model, "decoder.0.cross_attn"), [1, 2, 3])
    a.remove_module(model, "decoder", 1, "cross_attn")
    a.prune_units(model, _group(a, model, "decoder.1.ffn"), list(range(0, 128, 2)))


SURGERY = {"mixed": _mixed, "native": _native}
CASES = ["dense", *SURGERY]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, processor):
    """``{case: (hf_dir, ct2_dir, record)}`` for the dense (a stock Hugging Face folder), mixed and native (pruned
    folders) tiny models."""
    out = {}
    for case in CASES:
        root = tmp_path_factory.mktemp(case)
        model = make_tiny_whisper()
        if case in SURGERY:
            SURGERY[case](model, WhisperAdapter())
            hf_dir = save_pruned(model, processor, root / "hf")
        else:
            hf_dir = root / "hf"
            model.save_pretrained(hf_dir)
            processor.save_pretrained(hf_dir)
        record = export_ct2(hf_dir, root / "ct2")
        out[case] = (hf_dir, root / "ct2", record)
    return out


def _torch(hf_dir: Path, feats: np.ndarray = FEATS) -> tuple[np.ndarray, list[list[int]]]:
    be = TorchWhisper.from_folder(hf_dir)
    n = len(feats)
    enc = be.encode(feats)
    return enc.numpy(), be.decode(enc, [None] * n, [None] * n, OPTIONS).tokens


def _ct2(engine, vocab: WhisperVocab, feats: np.ndarray = FEATS) -> tuple[np.ndarray, list[list[int]]]:
    import ctranslate2

    enc = np.array(engine.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    results = engine.generate(ctranslate2.StorageView.from_array(feats), [vocab.prompt(None, None)] * len(feats),
                              beam_size=1, max_length=2 * NEW_TOKENS, suppress_blank=True, suppress_tokens=[-1])
    return enc, [list(r.sequences_ids[0]) for r in results]


@pytest.mark.parametrize("case", CASES)
def test_ctranslate2_decodes_the_export_like_torch(exported, case):
    import ctranslate2

    hf_dir, ct2_dir, _ = exported[case]
    engine = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    enc, tokens = _torch(hf_dir)
    ct_enc, ct_tokens = _ct2(engine, WhisperVocab.from_folder(hf_dir))
    assert_reorder_close(ct_enc, enc, k=FRAMES, depth=whisper_depth(2, 0))  # another engine's kernels
    assert ct_tokens == tokens
    assert len({tuple(t) for t in tokens}) == len(tokens) and all(len(t) > 3 for t in tokens)  # not trivially equal


def test_dense_export_equals_ctranslate2s_own_converter(exported, tmp_path):
    """Same variables, same aliases, same config as ctranslate2's TransformersConverter writes for a stock folder
    (except lang_ids: the converter reads them from a tokenizer attribute transformers 5 no longer has)."""
    import ctranslate2.converters

    hf_dir, ct2_dir, record = exported["dense"]
    ctranslate2.converters.TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(
        str(tmp_path / "stock"))
    ours, stock = read_ct2(ct2_dir / "model.bin"), read_ct2(tmp_path / "stock" / "model.bin")
    assert (ours.spec, ours.revision, ours.aliases) == (stock.spec, stock.revision, stock.aliases)
    assert set(ours.variables) == set(stock.variables)
    for name, value in stock.variables.items():
        np.testing.assert_array_equal(ours.variables[name], value, err_msg=name)
    ours_config = json.loads((ct2_dir / "config.json").read_text())
    stock_config = json.loads((tmp_path / "stock" / "config.json").read_text())
    for key in ("suppress_ids", "suppress_ids_begin", "alignment_heads"):
        assert ours_config[key] == stock_config[key], key
    assert ours_config["lang_ids"] == [258, 259]  # <|en|>, <|de|> of the tiny tokenizer
    assert json.loads((ct2_dir / "vocabulary.json").read_text()) == json.loads(
        (tmp_path / "stock" / "vocabulary.json").read_text())
    assert record["not_native"] == [] and record["native"] == [] and record["alignment_heads"] == "generation_config"
    assert record["quantization"] == "float32"


def test_faster_whisper_loads_the_export_and_its_engine_decodes_the_same(exported):
    from faster_whisper import WhisperModel

    for case in ("dense", "mixed"):
        hf_dir, ct2_dir, _ = exported[case]
        fw = WhisperModel(str(ct2_dir), device="cpu", compute_type="float32", cpu_threads=1)
        assert fw.feature_extractor.n_fft == 400 and fw.model.n_mels == 80 and not fw.model.is_multilingual
        assert fw.hf_tokenizer.token_to_id("<|notimestamps|>") == 265
        assert _ct2(fw.model, WhisperVocab.from_folder(hf_dir))[1] == _torch(hf_dir)[1]


def test_record_lists_what_ctranslate2_cannot_express(exported):
    _, ct2_dir, record = exported["mixed"]
    assert json.loads((ct2_dir / RECORD_FILE).read_text()) == record
    assert record["num_heads"] == {"encoder": 4, "decoder": 3} and record["layers"] == {"encoder": 2, "decoder": 2}
    assert {e["block"]: e["expressed_as"] for e in record["not_native"]} == {
        "encoder.0.self_attn": "zero-padded to 4 heads",
        "encoder.1.ffn": "FFN of width 1 with zero weights",
        "decoder.0.self_attn": "zero block of 3 one-dimensional heads",
        "decoder.0.cross_attn": "zero block of 3 one-dimensional heads",
        "decoder.1.self_attn": "zero-padded to 3 heads",
    }
    assert record["alignment_heads"].startswith("default")
    assert json.loads((ct2_dir / "config.json").read_text())["alignment_heads"] == [[1, 0], [1, 1], [1, 2]]
    ct2 = read_ct2(ct2_dir / "model.bin")
    assert ct2.scalar("decoder/num_heads") == 3
    assert ct2.get("encoder/layer_0/self_attention/linear_0/weight").shape == (3 * 64, 64)
    assert not ct2.get("encoder/layer_0/self_attention/linear_1/weight")[:, 32:].any()  # padded heads: zero
    assert ct2.get("encoder/layer_1/ffn/linear_0/weight").shape == (1, 64)
    assert ct2.get("decoder/layer_0/self_attention/linear_0/weight").shape == (9, 64)
    assert ct2.scalar("decoder/layer_0/self_attention/head_dim") == 1
    assert ct2.scalar("decoder/layer_1/attention/head_dim") == 16


def test_record_of_a_native_export_lists_nothing_emulated(exported):
    _, ct2_dir, record = exported["native"]
    assert record["not_native"] == []
    assert record["native"] == [
        "encoder: 1 of 2 layers",
        "encoder: 2 of 4 heads in every attention",
        "encoder: FFN widths [48] (of 128)",
        "decoder: 3 of 4 heads in every attention",
        "decoder: FFN widths [128, 64] (of 128)",
        "decoder.1.cross_attn: removed (variables left out)",
    ]
    ct2 = read_ct2(ct2_dir / "model.bin")
    assert ct2.scalar("encoder/num_heads") == 2 and ct2.scalar("decoder/num_heads") == 3
    assert not any(name.startswith("decoder/layer_1/attention/") for name in ct2.variables)
    assert ct2.get("encoder/layer_0/self_attention/linear_0/weight").shape == (3 * 32, 64)


@pytest.mark.parametrize("quantization, dtype, compute_type",
                         [("int8", np.int8, "int8"), ("float16", np.float16, "float32")])  # no fp16 compute on CPU
def test_quantized_export_runs_and_stays_close(exported, tmp_path, quantization, dtype, compute_type):
    """Stored weights quantized by ctranslate2's own spec.optimize, zero blocks (aliased to each other) included."""
    import ctranslate2

    hf_dir, _, _ = exported["mixed"]
    record = export_ct2(hf_dir, tmp_path / "q", quantization=quantization)
    assert record["quantization"] == quantization
    ct2 = read_ct2(tmp_path / "q" / "model.bin")
    assert ct2.get("encoder/layer_0/ffn/linear_0/weight").dtype == dtype
    engine = ctranslate2.models.Whisper(str(tmp_path / "q"), device="cpu", compute_type=compute_type)
    enc, tokens = _ct2(engine, WhisperVocab.from_folder(hf_dir))
    reference = _torch(hf_dir)[0]
    # float16 weights: their rounding (u = 4.9e-4) per matmul; int8: the quantization bound of the encoder's matmuls
    depth = whisper_depth(2, 0)
    rtol = quantization_rtol(8, depth) if quantization == "int8" else depth * rounding_rtol(np.float16)
    assert np.abs(enc - reference).mean() < rtol * np.abs(reference).mean()
    assert all(len(t) > 3 for t in tokens)


def test_export_is_atomic_and_refuses_to_overwrite(exported, tmp_path, monkeypatch):
    from ctranslate2.specs.model_spec import ModelSpec

    hf_dir, _, _ = exported["native"]
    out = tmp_path / "ct2"
    export_ct2(hf_dir, out)
    with pytest.raises(ConfigError, match="not empty") as info:
        export_ct2(hf_dir, out)
    assert str(out) in str(info.value)
    before = (out / "model.bin").read_bytes()

    def broken(self, output_dir):
        (Path(output_dir) / "model.bin").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(ModelSpec, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        export_ct2(hf_dir, out, overwrite=True)
    assert (out / "model.bin").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]  # no temporary folder left behind
    monkeypatch.undo()
    export_ct2(exported["dense"][0], out, overwrite=True)
    assert read_ct2(out / "model.bin").scalar("encoder/num_heads") == 4


def _one_line(error: BaseException, *words: str) -> None:
    text = str(error)
    assert "\n" not in text
    for w in words:
        assert w in text, text


def test_failures_are_one_line_errors(exported, tmp_path, processor):
    hf_dir, _, _ = exported["dense"]
    with pytest.raises(ConfigError) as info:
        export_ct2(hf_dir, tmp_path / "x", quantization="int3")
    _one_line(info.value, "int3", "int8")
    with pytest.raises(ConfigError) as info:
        export_ct2(hf_dir, hf_dir, overwrite=True)
    _one_line(info.value, str(hf_dir), "is the model folder")

    model = make_tiny_whisper()
    model.config.activation_function = "relu"
    relu = save_pruned(model, processor, tmp_path / "relu")
    with pytest.raises(ModelError) as info:
        export_ct2(relu, tmp_path / "relu-ct2")
    _one_line(info.value, str(relu), "GELU", "relu")
    assert not (tmp_path / "relu-ct2").exists()

    bare = tmp_path / "bare"
    model.save_pretrained(bare)
    with pytest.raises(ModelError) as info:
        export_ct2(bare, tmp_path / "bare-ct2")
    _one_line(info.value, str(bare), "tokenizer.json")


def _prune_tiny_en(model, a: WhisperAdapter) -> None:
    """Cuts the real tiny.en (6 heads of 64, FFN 1536) survives: 5 heads in every decoder attention (native, inner
    width 320 != d_model 384), 5 in one encoder self-attention (padded), a narrower FFN, a removed FFN (zero block).
    A removed cross-attention is left to the tiny models: on top of these cuts it breaks tiny.en's transcripts."""
    for i in range(4):
        for kind in ("self_attn", "cross_attn"):
            a.prune_units(model, _group(a, model, f"decoder.{i}.{kind}"), [0, 1, 2, 3, 4])
    a.prune_units(model, _group(a, model, "encoder.3.self_attn"), [0, 2, 3, 4, 5])
    a.prune_units(model, _group(a, model, "encoder.3.ffn"), list(range(1280)))
    a.remove_module(model, "decoder", 1, "ffn")


@pytest.mark.integration
@pytest.mark.skipif(not SOUNDS.is_dir(), reason="apt-get install asterisk-core-sounds-en-wav asterisk-core-sounds-en")
def test_real_tiny_en_export_decodes_real_speech_like_torch(tmp_path):
    """The bundled tiny.en, dense and pruned, exported to CT2 float32: greedy tokens on 3 real prompts identical to
    speechprune's torch decoding on the same features."""
    import ctranslate2

    from speechprune.data import load_audio, load_dataset
    from speechprune.data.features import FeatureFrontend
    from speechprune.models.registry import resolve_model
    from speechprune.models.whisper.load import load_whisper

    hf_dir = resolve_model("whisper-tiny.en")
    model, processor = load_whisper(hf_dir)
    _prune_tiny_en(model, WhisperAdapter())
    pruned_dir = save_pruned(model, processor, tmp_path / "pruned")
    utts = load_dataset("asterisk", "dev")[:3]
    feats = FeatureFrontend(80)([load_audio(u.audio) for u in utts])
    records = {}
    for folder, name in ((hf_dir, "dense"), (pruned_dir, "pruned")):
        records[name] = export_ct2(folder, tmp_path / f"{name}-ct2")
        be = TorchWhisper.from_folder(folder)
        enc = be.encode(feats)
        expected = be.decode(enc, [None] * 3, [None] * 3, DecodeOptions()).tokens
        engine = ctranslate2.models.Whisper(str(tmp_path / f"{name}-ct2"), device="cpu", compute_type="float32")
        storage = ctranslate2.StorageView.from_array(feats)
        assert_reorder_close(np.array(engine.encode(storage, to_cpu=True)), enc, k=1536, depth=whisper_depth(4, 0))
        results = engine.generate(storage, [be.vocab.prompt(None, None)] * 3, beam_size=1, max_length=448,
                                  suppress_blank=True, suppress_tokens=[-1])
        assert [list(r.sequences_ids[0]) for r in results] == expected, name
        assert sum(len(t) for t in expected) > 10
    assert records["dense"]["not_native"] == [] and records["dense"]["num_heads"] == {"encoder": 6, "decoder": 6}
    assert records["pruned"]["num_heads"] == {"encoder": 6, "decoder": 5}
    assert [e["block"] for e in records["pruned"]["not_native"]] == ["encoder.3.self_attn", "decoder.1.ffn"]


def test_a_length_adaptive_export_is_read_at_its_buckets_like_torch(tmp_path, processor):
    """CTranslate2's encoder reads any number of frames (its position table sliced) and its decoder cross-attends
    to what it gets, so a length-adaptive model's export runs at the same buckets as in PyTorch."""
    from speechprune.evaluate.backends import load_backend
    from speechprune.models.whisper.lengths import set_length_buckets

    model = make_tiny_whisper()
    set_length_buckets(model, [50, 100, 1500])
    hf_dir = save_pruned(model, processor, tmp_path / "hf")
    export_ct2(hf_dir, tmp_path / "ct2")
    ct = load_backend(str(tmp_path / "ct2"), "faster-whisper", compute_type="float32", threads=1)
    ref = TorchWhisper.from_folder(hf_dir)
    assert ct.length_buckets == ref.length_buckets == (50, 100, 1500)
    for frames, positions in (([80, 60, 90], 50), ([150, 60, 190], 100), (None, 1500)):
        enc, want = ct.encode(FEATS, frames), ref.encode(FEATS, frames)
        assert ct.last_positions == ref.last_positions == positions
        assert_reorder_close(np.array(enc), want.numpy(),  # the CPU engine keeps its output on the CPU
                             k=FRAMES, depth=whisper_depth(2, 0))
        n = len(FEATS)
        assert ct.decode(enc, [None] * n, [None] * n, OPTIONS).tokens == ref.decode(want, [None] * n, [None] * n,
                                                                                      OPTIONS).tokens
