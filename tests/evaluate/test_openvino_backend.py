"""OpenVINO GenAI's Whisper pipeline as a backend: a tiny random Whisper converted into the GenAI layout decodes the
same greedy tokens as speechprune's own torch decoding; bad input gets a one-line error."""

import json

import numpy as np
import pytest

pytest.importorskip("openvino_genai")

from speechprune.errors import ConfigError, ModelError  # noqa: E402
from speechprune.evaluate.backends import load_backend  # noqa: E402
from speechprune.models.decoding import DecodeOptions  # noqa: E402

OPTS = DecodeOptions(max_new_tokens=20)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from models.conftest import write_tiny_whisper_folder
    from transformers import WhisperFeatureExtractor

    _, folder = write_tiny_whisper_folder(tmp_path_factory.mktemp("tiny"))
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def ov_backend(tiny_folder, cache_root, monkeypatch):
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(cache_root))
    return load_backend(str(tiny_folder), "openvino", compute_type="float32", threads=1)


def _clips():
    rng = np.random.default_rng(1)
    out = []
    for i, seconds in enumerate((1.3, 2.7)):
        t = np.arange(int(16000 * seconds)) / 16000
        out.append((0.3 * np.sin(2 * np.pi * (220 + 180 * i) * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32))
    return out


def test_greedy_tokens_match_torch(ov_backend, tiny_folder):
    from speechprune.models.whisper.backend import TorchWhisper

    torch_be = TorchWhisper.from_folder(tiny_folder)
    assert ov_backend.name == "openvino-float32"
    assert ov_backend.numerics["all"]["dtype"].startswith("float32 weights")
    ov_front, front = ov_backend.frontend(), torch_be.frontend()
    clips = _clips()
    got = ov_backend.decode(ov_backend.encode(ov_front(clips), ov_front.lengths(clips)), [None, None], [None, None],
                            OPTS)
    want = torch_be.decode(torch_be.encode(front(clips)), [None, None], [None, None], OPTS)
    assert got.tokens == want.tokens
    assert all(len(t) > 0 for t in got.tokens)
    assert got.stats.first_step_s > 0 and got.stats.later_steps == sum(len(t) for t in got.tokens)
    m = ov_backend.last_metrics[0]
    assert m["encoder_ms"] > 0 and m["features_ms"] > 0
    assert ov_backend.decode_text(got.tokens[0]) == torch_be.decode_text(want.tokens[0])


def test_converted_once_with_a_record(ov_backend, tiny_folder, cache_root, monkeypatch):
    (folder,) = [p for p in (cache_root / "openvino").iterdir() if not p.name.endswith(".lock")]
    record = json.loads((folder / "speechprune_openvino.json").read_text())
    assert record["precision"] == "float32" and record["versions"]["openvino"]
    mtime = (folder / "openvino_decoder_model.xml").stat().st_mtime_ns
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(cache_root))
    again = load_backend(str(tiny_folder), "openvino", compute_type="float32", threads=1)
    assert (folder / "openvino_decoder_model.xml").stat().st_mtime_ns == mtime
    assert again.fingerprint() == ov_backend.fingerprint()
    # the converted folder itself loads as a model
    assert load_backend(str(folder), "openvino", threads=1).fingerprint() == ov_backend.fingerprint()


def test_beam_search_and_translate_are_refused(ov_backend):
    clips = _clips()[:1]
    enc = ov_backend.encode(ov_backend.frontend()(clips), [len(clips[0])])
    with pytest.raises(ConfigError, match="greedily"):
        ov_backend.decode(enc, [None], [None], DecodeOptions(beam_size=2))
    with pytest.raises(ConfigError, match="transcribes only"):
        ov_backend.decode(enc, [None], ["translate"], OPTS)


def test_bad_models_get_one_line_errors(tmp_path, monkeypatch):
    from tiny_models import tiny_wav2vec2_folder

    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelError, match="no such model") as e:
        load_backend(str(tmp_path / "absent"), "openvino")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="not one|runs a Whisper") as e:
        load_backend(str(tiny_wav2vec2_folder(tmp_path / "w2v")), "openvino")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="int8 or float32"):
        load_backend(str(tmp_path), "openvino", compute_type="float16")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "openvino_decoder_model.xml").write_text("<net/>")
    with pytest.raises(ModelError, match="missing"):
        load_backend(str(broken), "openvino")


def test_cross_attention_is_computed_once_per_generation(ov_backend):
    """The decoder's cross-attention K/V are state filled on the first step after a reset: later steps ignore the
    encoder states they are given, and a reset recomputes them."""
    import openvino as ov

    model = ov.Core().compile_model(str(ov_backend.ov_dir / "openvino_decoder_model.xml"), "CPU")
    req = model.create_infer_request()
    rng = np.random.default_rng(0)
    enc = rng.standard_normal((1, 1500, 64)).astype(np.float32)
    beam = np.zeros(1, dtype=np.int32)
    sot = ov_backend.vocab.sot

    def two_steps(first, second):
        req.reset_state()
        req.infer({"input_ids": np.array([[sot, ov_backend.vocab.no_timestamps]]), "encoder_hidden_states": first,
                   "beam_idx": beam})
        return req.infer({"input_ids": np.array([[5]]), "encoder_hidden_states": second,
                          "beam_idx": beam})["logits"].copy()

    same = two_steps(enc, enc)
    np.testing.assert_array_equal(two_steps(enc, np.zeros_like(enc)), same)
    assert np.abs(two_steps(np.zeros_like(enc), enc) - same).max() > 1e-3
