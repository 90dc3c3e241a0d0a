"""Gate training (``family: gates``) on a tiny random multilingual Whisper: it moves the skip share toward the target,
resumes to the state of an unbroken run, the no-context baseline is one gate vector, gated evaluation records the
gates, the deployed static model decodes as the gated model does, and bad input is a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from models.conftest import EOT, SOT, make_tiny_whisper, write_tiny_tokenizer
from speechprune.data.manifest import read_manifest
from speechprune.errors import ConfigError
from speechprune.evaluate.backends import load_backend
from speechprune.evaluate.runner import evaluate
from speechprune.models.decoding import DecodeOptions
from speechprune.models.gates import GatePredictor, load_gates, save_gates
from speechprune.models.whisper.gates import gate_modules, whisper_gate_config
from speechprune.models.whisper.decoding import WhisperVocab
from speechprune.train.gates import deploy_trained_gates, train_gates
from speechprune.train.recipe import parse_train_recipe

LANG_IDS = {"<|en|>": 258, "<|de|>": 259}
TASK_IDS = {"translate": 260, "transcribe": 261}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random multilingual Whisper folder (languages en and de, both tasks) and a manifest of 6 clips with
    a language and task each (de translations carry an English reference)."""
    from transformers import GenerationConfig

    from speechprune.models.checkpoint import save_pruned
    from speechprune.models.whisper.convert import build_processor

    root = tmp_path_factory.mktemp("gates")
    model = make_tiny_whisper()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=SOT, bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT, max_length=64,
        suppress_tokens=[1, 2, 7], begin_suppress_tokens=[220, EOT], no_timestamps_token_id=265,
        is_multilingual=True, lang_to_id=LANG_IDS, task_to_id=TASK_IDS)
    processor = build_processor(write_tiny_tokenizer(root / "tok" / "tokenizer.json"), 80)
    folder = save_pruned(model, processor, root / "hf")
    rng = np.random.default_rng(0)
    lines = []
    contexts = [("en", "transcribe"), ("de", "transcribe"), ("de", "translate")] * 2
    for i, (lang, task) in enumerate(contexts):
        t = np.arange(int(16000 * (0.4 + 0.1 * i))) / 16000
        x = 0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t) + 0.05 * rng.standard_normal(t.size)
        sf.write(root / f"c{i}.wav", x.astype(np.float32), 16000)
        rec = {"audio": f"c{i}.wav", "text": f"ton {i}", "id": f"c{i}", "language": lang, "task": task}
        if task == "translate":
            rec["translation"] = f"tone {i}"
        lines.append(json.dumps(rec))
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    return folder, root / "m.jsonl"


def recipe(base, **kw):
    folder, manifest = base
    return parse_train_recipe({"family": "gates", "model": str(folder), "data": [str(manifest)], "sparsity": 0.5,
                               "alpha": 4.0, "lr": 0.1, "steps": 6, "batch_size": 2, "checkpoint_every": 3,
                               "tau_start": 2.0, "tau_end": 0.5, "hidden": 16, **kw})


def steps(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def whole(base, tmp_path_factory):
    """An unbroken run of 6 steps: ``(its folder, its record)``."""
    out = tmp_path_factory.mktemp("whole")
    return out, train_gates(recipe(base), out, progress=False)


def test_training_moves_the_skip_share_toward_the_target(base, whole):
    out, rec = whole
    log = steps(out)
    skips = [r["skip"] for r in log]
    assert len(log) == 6 and np.mean(skips[-2:]) > np.mean(skips[:2]) + 0.1  # from ~0.1 (init_keep 0.9) up
    assert set(log[0]["by_context"]) <= {"en/transcribe", "de/transcribe", "de/translate"}
    assert rec["data"]["by_context"] == {"en/transcribe": 2, "de/transcribe": 2, "de/translate": 2}
    assert set(rec["skip_by_context"]) == {"en/transcribe", "de/transcribe", "de/translate"}
    trained = load_gates(out)
    assert trained.context and trained.config.sparsity == 0.5 and trained.meta["model"] == str(base[0])


def test_a_killed_run_resumes_to_the_state_of_an_unbroken_one(base, whole, tmp_path, monkeypatch):
    import speechprune.train.gates as G

    r = recipe(base)
    real_save = G.save_recovery_state

    def save_then_die(path, model, opt, meta):
        real_save(path, model, opt, meta)
        if meta["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(G, "save_recovery_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_gates(r, tmp_path / "broken", progress=False)
    monkeypatch.setattr(G, "save_recovery_state", real_save)
    train_gates(r, tmp_path / "broken", progress=False)
    unbroken, resumed = (load_file(str(d / "gates.safetensors")) for d in (whole[0], tmp_path / "broken"))
    assert all(torch.allclose(unbroken[k], resumed[k], atol=1e-6) for k in unbroken)
    a, b = steps(whole[0]), steps(tmp_path / "broken")
    assert [r["step"] for r in b] == list(range(1, 7))
    assert [r["skip"] for r in a] == [r["skip"] for r in b]
    assert np.allclose([r["loss"] for r in a], [r["loss"] for r in b], atol=1e-5)


def test_without_context_one_gate_vector_serves_every_input(base, tmp_path):
    train_gates(recipe(base, context=False, steps=2), tmp_path / "static", progress=False)
    trained = load_gates(tmp_path / "static")
    feats = torch.randn(4, 80, 3000)
    keep = trained.gates(["en", "de", "de", "en"], ["transcribe", "translate", "transcribe", "translate"], feats)
    assert not trained.context and (keep == keep[:1]).all()
    with pytest.raises(ConfigError, match="unknown language 'fr' for these gates"):
        trained.gates(["fr"], ["transcribe"], feats[:1])


def skipping_gates(folder, out, context=False):
    """Gates that skip encoder.0.ffn, decoder.0.cross_attn and decoder.1.ffn for every input, saved in ``out``."""
    from speechprune.models.whisper.load import load_whisper

    model, _ = load_whisper(folder)
    config = whisper_gate_config(model, WhisperVocab.from_folder(folder), sparsity=0.3)
    predictor = GatePredictor(config)
    skip = {"encoder.0.ffn", "decoder.0.cross_attn", "decoder.1.ffn"}
    with torch.no_grad():
        predictor.out.weight.zero_()
        bias = predictor.out.bias.view(-1, 2)
        for i, m in enumerate(gate_modules(model)):
            bias[i] = torch.tensor([1.0, -1.0] if m in skip else [-1.0, 1.0])
    save_gates(out, predictor, context, {"model": str(folder)})
    return out


def test_gated_eval_records_the_gates_and_the_deployed_model_decodes_alike(base, tmp_path):
    folder, manifest = base
    gates = skipping_gates(folder, tmp_path / "gates")
    utts = [u for u in read_manifest(manifest) if u.language == "de" and u.task == "translate"]
    options = DecodeOptions(max_new_tokens=8)
    gated = load_backend(str(folder), "torch", gates=gates)
    m = evaluate(gated, utts, tmp_path / "eval-gated", options, batch_size=2, progress=False,
                 settings={"modules": list(gated.modules_gated)})
    assert m["gates"]["skip_share"] == pytest.approx(0.3)
    row = m["gates"]["by_language_task"]["de/translate"]
    assert row["n"] == 2 and row["keep"] == [0.0 if mod in ("encoder.0.ffn", "decoder.0.cross_attn", "decoder.1.ffn")
                                             else 1.0 for mod in gated.modules_gated]
    rec = deploy_trained_gates(str(folder), gates, "de", "translate", tmp_path / "deployed")
    assert rec["skip_share"] == pytest.approx(0.3) and len(rec["skipped"]) == 3
    static = load_backend(str(tmp_path / "deployed"), "torch")
    assert static.params < gated.params
    evaluate(static, utts, tmp_path / "eval-static", options, batch_size=2, progress=False)
    hyps = [[json.loads(line)["hypothesis"] for line in (tmp_path / d / "hypotheses.jsonl").read_text().splitlines()]
            for d in ("eval-gated", "eval-static")]
    assert hyps[0] == hyps[1]
    with pytest.raises(ConfigError, match="gates read the audio: give clips"):
        deploy_trained_gates(str(folder), skipping_gates(folder, tmp_path / "ctx", context=True), "de", "translate",
                             tmp_path / "d2")


def test_bad_input_is_a_one_line_error(base, tmp_path):
    folder, manifest = base
    with pytest.raises(ConfigError, match="bad recipe: temperature: unknown key"):
        recipe(base, temperature=1.0)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match=r"sparsity: sparsity target must be inside \(0, 1\)"):
            recipe(base, sparsity=bad)
    with pytest.raises(ConfigError, match="nothing that calibrates or trains may read the test split"):
        recipe(base, data=["asterisk-es:test"])
    other = tmp_path / "xx.jsonl"
    other.write_text(manifest.read_text().replace('"language": "de"', '"language": "xx"'))
    (tmp_path / "c0.wav").symlink_to(manifest.parent / "c0.wav")
    with pytest.raises(ConfigError, match="unknown language 'xx' for this model"):
        train_gates(recipe(base, data=[str(other)]), tmp_path / "x", progress=False)
    from speechprune.models.whisper.load import load_whisper

    gates = skipping_gates(folder, tmp_path / "g")
    small, _ = load_whisper(folder)
    from speechprune.models.whisper.adapter import WhisperAdapter

    WhisperAdapter().remove_layers(small, "encoder", [1])
    from speechprune.models.whisper.gates import check_gates_fit

    with pytest.raises(ConfigError, match="do not fit model small: they gate 10 blocks"):
        check_gates_fit(load_gates(gates), small, gates, "small")
    with pytest.raises(ConfigError, match="not a gates folder"):
        load_gates(tmp_path)
    assert str(tmp_path) in str(pytest.raises(ConfigError, load_gates, tmp_path).value)
