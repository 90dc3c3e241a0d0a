"""CTC training on a few generated clips: it learns, it resumes to the same weights, and bad recipes and data are
named in one line."""

import json

import pytest
import torch

from speechprune.errors import ConfigError
from speechprune.models.ctc import load_ctc
from speechprune.train.recipe import load_train_recipe, parse_train_recipe
from speechprune.train.ctc import train_ctc

MODEL = {"encoder": "conformer", "d_model": 32, "n_layers": 3, "n_heads": 2, "ffn_dim": 48, "conv_kernel": 5,
         "conv_groups": 4, "dropout": 0.0}


def recipe(manifest, **kw):
    obj = {"model": MODEL, "data": [str(manifest)], "valid_utterances": 1, "steps": 40, "batch_size": 4,
           "lr": 3e-3, "warmup": 5, "eval_every": 20, "checkpoint_every": 10,
           "intermediate": {"layers": [1], "weight": 0.3}, "layerdrop": {"rate": 0.2, "schedule": "linear"}}
    obj.update(kw)
    return parse_train_recipe(obj)


def test_training_lowers_the_loss_and_writes_a_loadable_model_with_its_initial_weights(clips, tmp_path):
    rec = train_ctc(recipe(clips), tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert losses[-1] < 0.7 * losses[0]
    assert set(log[-1]["valid"]) == {"1", "3"}  # every exit is scored
    assert rec["data"]["train"] == 4 and rec["data"]["valid"] == 1
    model = load_ctc(tmp_path / "run" / "model")
    first = load_ctc(tmp_path / "run" / "model", initial=True)
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), first.state_dict().values()))


def test_a_killed_run_resumes_to_the_weights_of_an_unbroken_one(clips, tmp_path, monkeypatch):
    import speechprune.train.ctc as T

    r = recipe(clips, steps=20, eval_every=100)
    train_ctc(r, tmp_path / "whole", progress=False)

    real_save = T.save_recovery_state

    def save_then_die(path, model, opt, meta):
        real_save(path, model, opt, meta)
        if meta["step"] == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(T, "save_recovery_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_ctc(r, tmp_path / "broken", progress=False)
    monkeypatch.setattr(T, "save_recovery_state", real_save)
    train_ctc(r, tmp_path / "broken", progress=False)
    whole = load_ctc(tmp_path / "whole" / "model").state_dict()
    resumed = load_ctc(tmp_path / "broken" / "model").state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # the same computation, step for step


def test_clips_that_cannot_train_are_skipped_and_counted(tmp_path, clips):
    lines = clips.read_text().splitlines()
    lines.append(json.dumps({"audio": "c0.wav", "text": "привет", "id": "odd"}))
    lines.append(json.dumps({"audio": "c1.wav", "text": "", "id": "empty"}))
    (tmp_path / "m2.jsonl").write_text("\n".join(lines) + "\n")
    rec = train_ctc(recipe(tmp_path / "m2.jsonl", steps=2), tmp_path / "run", progress=False)
    skipped = rec["data"]["skipped"]
    assert skipped["characters outside the vocabulary"]["examples"] == ["odd"]
    assert skipped["no text"]["examples"] == ["empty"]


def test_bad_recipes_are_one_line_errors_naming_the_file(tmp_path, clips):
    p = tmp_path / "t.yaml"
    p.write_text(f"model: {json.dumps(MODEL)}\ndata: ['{clips}']\nintermediate: {{layers: [3]}}\n")
    with pytest.raises(ConfigError, match=r"t.yaml: bad recipe: .*layer 3 is not below the model's 3 layers"):
        load_train_recipe(p)
    p.write_text(f"model: {json.dumps(MODEL)}\ndata: ['asterisk:test']\n")
    with pytest.raises(ConfigError, match=r"t.yaml: bad recipe: data.*test split"):
        load_train_recipe(p)
    p.write_text(f"model: {json.dumps(MODEL)}\ndata: ['{clips}']\nlayer_drop: 0.1\n")
    with pytest.raises(ConfigError, match=r"t.yaml: bad recipe: layer_drop"):
        load_train_recipe(p)
    # a Whisper encoder's depth is known only once it is loaded
    r = parse_train_recipe({"model": {"encoder": "whisper", "init": str(tmp_path / "w")}, "data": [str(clips)],
                            "intermediate": {"layers": [2]}})
    from tiny_models import tiny_whisper

    tiny_whisper().save_pretrained(tmp_path / "w")
    with pytest.raises(ConfigError, match=r"layer 2 is not below the model's 2 layers"):
        train_ctc(r, tmp_path / "run", progress=False, source="r.yaml")
    with pytest.raises(ConfigError, match="usable clips, not more than valid_utterances"):
        train_ctc(recipe(clips, valid_utterances=5), tmp_path / "run2", progress=False)


def test_train_and_eval_at_every_depth_from_the_command_line(clips, tmp_path):
    from cli_helpers import cli

    p = tmp_path / "t.yaml"
    p.write_text(f"model: {json.dumps(MODEL)}\ndata: ['{clips}']\nvalid_utterances: 1\nsteps: 4\nbatch_size: 2\n"
                 "intermediate: {layers: [1, 2]}\nlayerdrop: {rate: 0.1}\n")
    r = cli("train", str(p), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "exit layer" in r.stdout and (tmp_path / "run" / "train.json").is_file()
    model = tmp_path / "run" / "model"
    hyps = {}
    for k in ("1", "3"):
        r = cli("eval", str(model), str(clips), "--exit-layer", k, "--no-ood", "--out", str(tmp_path / f"e{k}"))
        assert r.returncode == 0, r.stderr
        hyps[k] = [json.loads(x)["hypothesis"] for x in (tmp_path / f"e{k}" / "hypotheses.jsonl").read_text().split("\n") if x]
        assert len(hyps[k]) == 5
    r = cli("eval", str(model), str(clips), "--exit-layer", "4", "--no-ood", "--out", str(tmp_path / "e4"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exit layer 4 is outside this model's 1..3" in r.stderr
    r = cli("eval", "whisper-tiny.en", str(clips), "--exit-layer", "1", "--no-ood", "--out", str(tmp_path / "w"))
    assert r.returncode == 2 and "--exit-layer reads a CTC model" in r.stderr


def test_every_bundled_training_recipe_validates_and_builds_its_model():
    from speechprune.train.ctc import build_model
    from speechprune.train.recipe import BUNDLED_TRAIN_RECIPES

    names = sorted(p.stem for p in BUNDLED_TRAIN_RECIPES.glob("*.yaml"))
    assert {"ctc-whisper-tiny.en-interctc", "ctc-conformer-s-bn", "ctc-conformer-s-gn"} <= set(names)
    for name in names:
        r = load_train_recipe(name)
        if r.family == "ctc" and r.model.init is None:  # Whisper-initialized: integration tests; LMs: test_lm_train
            model = build_model(r)
            assert model.config.conv_norm == r.model.conv_norm


def test_static_layer_removal_then_recovery_continues_from_a_trained_model(clips, tmp_path):
    train_ctc(recipe(clips, steps=4, intermediate=None, layerdrop=None), tmp_path / "full", progress=False)
    full = load_ctc(tmp_path / "full" / "model")
    cut = recipe(clips, steps=4, intermediate=None, layerdrop=None,
                 model={"encoder": "conformer", "init": str(tmp_path / "full" / "model"), "n_layers": 2})
    train_ctc(cut, tmp_path / "cut", progress=False)
    model = load_ctc(tmp_path / "cut" / "model")
    assert model.depth == 2
    start = load_ctc(tmp_path / "cut" / "model", initial=True)  # the cut model before recovery
    assert torch.equal(start.stem.conv1.weight, full.stem.conv1.weight)
    assert not torch.equal(model.stem.conv1.weight, full.stem.conv1.weight)
    bad = recipe(clips, model={"encoder": "whisper", "init": str(tmp_path / "full" / "model")})
    with pytest.raises(ConfigError, match="holds a conformer encoder"):
        train_ctc(bad, tmp_path / "bad", progress=False)


def test_bench_times_a_ctc_model_and_its_onnx_export_side_by_side(clips, tmp_path):
    from speechprune.bench.latency import BenchOptions, benchmark
    from speechprune.data.datasets import load_dataset
    from speechprune.evaluate.backends import load_backend
    from speechprune.export.ctc_onnx import export_ctc_onnx
    from speechprune.models.ctc import save_ctc
    from tiny_models import tiny_ctc

    save_ctc(tiny_ctc("conformer", n_mels=80), tmp_path / "m")
    export_ctc_onnx(tmp_path / "m", tmp_path / "onnx")
    bes = [load_backend(str(tmp_path / "m")), load_backend(str(tmp_path / "onnx"), "onnx")]
    rec = benchmark(bes, load_dataset(str(clips)), bench=BenchOptions(warmup=1, repeats=1, max_utterances=3),
                    progress=False)
    assert set(rec["backends"]) == {"ctc", "onnx"} and rec["latency_ms_median"] > 0
    frames = [r["frames"] for r in rec["backends"]["ctc"]["utterances"]]
    assert frames == [8000 // 160 + 1, 11200 // 160 + 1, 14400 // 160 + 1]  # the clips' own frames, not 3000
    assert rec["flops_encoder"] == bes[0].clip_flops(sorted(frames)[1])
