"""wav2vec2 models (dense and pruned) export to one ONNX graph with dynamic batch and samples axes, checked against
PyTorch; the ONNX backend reads batches as the PyTorch one does (a group-norm feature encoder clip by clip, a
layer-norm one as a masked batch) and decodes the same characters."""

import json

import pytest
import torch

from closeness import LOOSEST_RTOL
from speechprune.data.audio import load_audio
from speechprune.data.manifest import read_manifest as read_data_manifest
from speechprune.errors import ModelError
from speechprune.evaluate.backends import load_backend
from speechprune.evaluate.ctc_backend import OnnxWav2Vec2
from speechprune.export.wav2vec2_onnx import export_wav2vec2_onnx
from speechprune.models.adapters import adapter_for
from speechprune.models.decoding import DecodeOptions
from speechprune.models.wav2vec2.family import FAMILY
from speechprune.models.wav2vec2.flops import clip_flops, flops_terms, terms_flops
from tiny_models import tiny_wav2vec2_folder


def _pruned_folder(tmp_path, **config):
    """A tiny wav2vec2 with uneven heads and FFN widths and a removed FFN, saved by the family."""
    dense = tiny_wav2vec2_folder(tmp_path / "dense", **config)
    model = FAMILY.load(dense)
    adapter = adapter_for(model)
    groups = {g.key: g for g in adapter.unit_groups(model)}
    adapter.prune_units(model, groups["encoder.0.self_attn"], [0, 2])
    adapter.prune_units(model, groups["encoder.0.ffn"], list(range(0, 64, 3)))
    adapter.remove_module(model, "encoder", 1, "ffn")
    return FAMILY.save(model, dense, tmp_path / "pruned")


def _clips(clips):
    rows = read_data_manifest(clips)
    return [load_audio(r.audio) for r in rows]


def _cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """``speechprune ARGS`` in this process (``cli.main``: one-line errors, status 2): its status and stderr."""
    from speechprune.cli import main

    monkeypatch.setattr("sys.argv", ["speechprune", *args])
    capsys.readouterr()
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def _greedy(backend, audios):
    fe = backend.frontend()
    encoded = backend.encode(fe(audios), fe.lengths(audios))
    return backend.decode(encoded, [None] * len(audios), [None] * len(audios), DecodeOptions()).tokens, encoded


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_export_writes_a_checked_graph_and_decodes_like_pytorch(norm, clips, tmp_path):
    if norm == "group":  # dense, the wav2vec2-base layout: each clip read alone
        source = tiny_wav2vec2_folder(tmp_path / "dense")
    else:  # pruned, the large-lv60 layout: a masked batch
        source = _pruned_folder(tmp_path, feat_extract_norm="layer", do_stable_layer_norm=True)
    manifest = export_wav2vec2_onnx(source, tmp_path / "onnx")
    out = tmp_path / "onnx"
    assert json.loads((out / "speechprune_onnx.json").read_text()) == json.loads(json.dumps(manifest))
    assert manifest["family"] == "wav2vec2" and manifest["reads_batches"] == (norm == "layer")
    assert manifest["frontend"]["normalize"] is True and (out / "vocab.json").is_file()
    assert (out / "preprocessor_config.json").is_file() and (out / "wav2vec2.onnx").is_file()
    check = manifest["check"]
    assert check["posterior_max_abs_diff"] <= check["bound"] <= LOOSEST_RTOL

    torch_be, onnx_be = load_backend(str(source)), load_backend(str(out), "onnx")
    assert isinstance(onnx_be, OnnxWav2Vec2) and onnx_be.token_limited is False
    assert onnx_be.frontend().key == torch_be.frontend().key and onnx_be.params == torch_be.params
    audios = _clips(clips)
    a, (lp_a, len_a) = _greedy(torch_be, audios)
    b, (lp_b, len_b) = _greedy(onnx_be, audios)
    assert a == b and any(a) and torch.equal(len_a, len_b)
    beam = DecodeOptions(beam_size=3)  # the shortest clip: the search is shared, its inputs are what differ
    assert (torch_be.decode((lp_a[:1], len_a[:1]), [None], [None], beam).tokens
            == onnx_be.decode((lp_b[:1], len_b[:1]), [None], [None], beam).tokens)
    rows = [{"samples": len(x)} for x in audios]
    assert onnx_be.flops_record(rows) == torch_be.flops_record(rows)
    assert [onnx_be.decode_text(t) for t in b] == [torch_be.decode_text(t) for t in a]


def test_flops_terms_count_as_the_live_modules(tmp_path):
    model = FAMILY.load(_pruned_folder(tmp_path))
    terms = json.loads(json.dumps(flops_terms(model)))  # as the manifest keeps them
    for samples in (0, 300, 399, 400, 401, 12345, 16000 * 7):
        assert terms_flops(terms, samples) == clip_flops(model, samples)


def test_int8_export_through_the_cli_mostly_agrees_and_bad_requests_are_one_line(clips, tmp_path, monkeypatch,
                                                                                   capsys):
    source = tiny_wav2vec2_folder(tmp_path / "dense")
    code, err = _cli(monkeypatch, capsys, "export", str(source), "--format", "onnx", "--quantize", "int8",
                     "--out", str(tmp_path / "q"))
    assert code == 0, err
    manifest = json.loads((tmp_path / "q" / "speechprune_onnx.json").read_text())
    assert manifest["quantized"] and manifest["quantization"]["weight_bits"] in (7, 8)
    assert manifest["check"]["posterior_max_abs_diff"] <= manifest["check"]["bound"]
    torch_be, q = load_backend(str(source)), load_backend(str(tmp_path / "q"), "onnx")
    assert q.numerics["all"]["dtype"].startswith("int")
    audios = _clips(clips)
    _, (lp_a, len_a) = _greedy(torch_be, audios)
    _, (lp_b, len_b) = _greedy(q, audios)
    real = torch.arange(lp_a.shape[1])[None, :] < len_a[:, None]
    agree = (lp_a.argmax(-1) == lp_b.argmax(-1))[real].float().mean()
    assert torch.equal(len_a, len_b) and agree >= 0.9, float(agree)

    code, err = _cli(monkeypatch, capsys, "export", str(source), "--format", "ct2", "--out", str(tmp_path / "c"))
    assert code == 2 and "--format onnx only" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "c").exists()

    (tmp_path / "novocab").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "novocab" / name).write_bytes((source / name).read_bytes())
    with pytest.raises(ModelError, match="vocab.json") as e:
        export_wav2vec2_onnx(tmp_path / "novocab", tmp_path / "x")
    assert "\n" not in str(e.value) and not (tmp_path / "x").exists()
    with pytest.raises(ModelError, match="does not exist"):
        export_wav2vec2_onnx(tmp_path / "missing", tmp_path / "x")
    (tmp_path / "q" / "wav2vec2.onnx").unlink()
    with pytest.raises(ModelError, match="wav2vec2.onnx is missing"):
        load_backend(str(tmp_path / "q"), "onnx")
    (tmp_path / "q" / "wav2vec2.onnx").write_bytes(b"not a graph")
    with pytest.raises(ModelError, match="cannot load ONNX graph") as e:
        load_backend(str(tmp_path / "q"), "onnx")
    assert "\n" not in str(e.value)
