"""LM training on a small text file: it learns, it resumes to the same weights after a kill, the kept vocabulary is
counted on the training text, and bad recipes are named in one line."""

from __future__ import annotations

import json

import pytest
import torch

from models.lm.tiny_lm import recognizer
from speechprune.errors import ConfigError
from speechprune.models.lm import load_lm
from speechprune.train.lm import lr_at, train_lm
from speechprune.train.recipe import LMTrainRecipe, load_train_recipe, parse_train_recipe

MODEL = {"d_model": 32, "n_layers": 2, "n_heads": 2, "ffn_dim": 48, "context": 48, "dropout": 0.1}
WORDS = "the cat dog sat ran on under a mat rug and then slept".split()


@pytest.fixture
def text(tmp_path):
    """A file of 400 short sentences from a tiny grammar (learnable in a few dozen steps) and a dev file."""
    gen = torch.Generator().manual_seed(0)

    def sentence() -> str:
        w = [WORDS[int(i)] for i in torch.randint(0, len(WORDS), (int(torch.randint(3, 8, (1,), generator=gen)),),
                                                  generator=gen)]
        return "The " + " ".join(w) + "."

    (tmp_path / "train.txt").write_text("\n".join(sentence() for _ in range(400)) + "\n")
    (tmp_path / "dev.txt").write_text("\n".join(sentence() for _ in range(20)) + "\n")
    return tmp_path


def recipe(text, **kw) -> LMTrainRecipe:
    obj = {"family": "lm", "model": {"tokens": "chars", **MODEL},
           "data": {"text": str(text / "train.txt"), "valid": str(text / "dev.txt")},
           "steps": 40, "batch_tokens": 512, "lr": 3e-3, "warmup": 4, "eval_every": 20, "checkpoint_every": 10}
    for k, v in kw.items():
        obj[k] = {**obj[k], **v} if isinstance(v, dict) and isinstance(obj.get(k), dict) else v
    return parse_train_recipe(obj)


def test_training_lowers_the_loss_and_the_dev_perplexity(text, tmp_path):
    rec = train_lm(recipe(text), tmp_path / "run", progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    ppls = [r["valid"]["ppl"] for r in log if "valid" in r]
    assert losses[-1] < 0.7 * losses[0] and len(ppls) == 2 and ppls[-1] < ppls[0] < 45
    assert rec["valid"]["ppl"] == ppls[-1] and 380 < rec["data"]["train_lines"] < 400  # the file's train split
    assert rec["data"]["lines"]["valid"] == {str(text / "dev.txt"): 20}
    model = load_lm(tmp_path / "run" / "model")
    assert model.config.text == "normalized" and not model.training


def test_a_killed_run_resumes_to_the_weights_of_an_unbroken_one(text, tmp_path, monkeypatch):
    import speechprune.train.lm as L

    r = recipe(text, steps=20, eval_every=100, model={"tokens": "whisper", "tokenizer": str(recognizer(tmp_path)),
                                                     "keep_seen_tokens": True, "keep_min_count": 2},
               data={"form": "written"})
    train_lm(r, tmp_path / "whole", progress=False)
    real_save = L.save_recovery_state

    def save_then_die(path, model, opt, meta):
        real_save(path, model, opt, meta)
        if meta["step"] == 10:
            raise KeyboardInterrupt

    monkeypatch.setattr(L, "save_recovery_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_lm(r, tmp_path / "broken", progress=False)
    monkeypatch.setattr(L, "save_recovery_state", real_save)
    train_lm(r, tmp_path / "broken", progress=False)
    whole = load_lm(tmp_path / "whole" / "model").state_dict()
    resumed = load_lm(tmp_path / "broken" / "model").state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # the same computation, step for step
    # only ids seen twice have rows: the grammar's letters, space and punctuation, and <|endoftext|>
    kept = load_lm(tmp_path / "whole" / "model").whisper_ids.tolist()
    seen = {ord(c) for s in (text / "train.txt").read_text().splitlines() for c in " " + s}
    assert set(kept) == seen | {256}


def test_more_text_and_a_model_to_continue_from(text, tmp_path):
    (text / "extra.jsonl").write_text(json.dumps({"audio": "x.wav", "text": "Press one."}) + "\n")
    rec = train_lm(recipe(text, steps=4, data={"add_train": [str(text / "extra.jsonl")]}), tmp_path / "a",
                   progress=False)
    lines = rec["data"]["lines"]["train"]
    assert lines[str(text / "extra.jsonl")] == 1 and rec["data"]["train_lines"] == lines[str(text / "train.txt")] + 1
    first = load_lm(tmp_path / "a" / "model")
    more = recipe(text, steps=4, model={"init": str(tmp_path / "a" / "model")})
    train_lm(more, tmp_path / "b", progress=False)
    second = load_lm(tmp_path / "b" / "model")
    assert second.config == first.config and not torch.equal(second.embed.weight, first.embed.weight)
    with pytest.raises(ConfigError, match="bad recipe: model.tokens: .* reads chars tokens"):
        train_lm(recipe(text, model={"init": str(tmp_path / "a" / "model"), "tokens": "whisper"}), tmp_path / "c",
                 progress=False)


def test_the_schedule_warms_up_then_decays_to_its_floor(text):
    r = recipe(text, steps=100, warmup=10, lr=1e-3, min_lr=0.1)
    assert lr_at(r, 0) == pytest.approx(1e-4) and lr_at(r, 9) == pytest.approx(1e-3)
    assert lr_at(r, 10) == pytest.approx(1e-3) and lr_at(r, 100) == pytest.approx(1e-4)
    lin = recipe(text, steps=100, warmup=10, lr=1e-3, schedule="linear", min_lr=0.0)
    assert lr_at(lin, 55) == pytest.approx(0.5e-3)


def test_bad_recipes_are_one_line_errors_naming_the_file(tmp_path, text):
    p = tmp_path / "t.yaml"
    base = f"family: lm\nmodel: {json.dumps({'tokens': 'chars', **MODEL})}\n"
    for extra, match in [
        ("data: {text: english-text, layers: 3}\n", r"t.yaml: bad recipe: data.layers: unknown key"),
        ("step: 10\n", r"t.yaml: bad recipe: step: unknown key"),
        ("data: {add_train: ['asterisk:test']}\n", r"t.yaml: bad recipe: data: .*test split"),
        ("data: {valid: 'asterisk:test'}\n", r"t.yaml: bad recipe: data: .*test split"),
        ("data: {add_train: ['english-ood']}\n", r"t.yaml: bad recipe: data: .*evaluation-only"),
        ("data: {form: written}\n", r"t.yaml: bad recipe: .*a character LM reads normalized text"),
    ]:
        p.write_text(base + extra)
        with pytest.raises(ConfigError, match=match) as e:
            load_train_recipe(p)
        assert "\n" not in str(e.value)
    p.write_text("family: lm\nmodel: {tokens: chars, keep_seen_tokens: true}\n")
    with pytest.raises(ConfigError, match="keep_seen_tokens applies to Whisper tokens"):
        load_train_recipe(p)
    (text / "empty.txt").write_text("\n")
    with pytest.raises(ConfigError, match=r"empty.txt: no text lines"):
        train_lm(recipe(text, data={"text": str(text / "empty.txt")}), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="is not an LM folder"):
        train_lm(recipe(text, model={"init": str(tmp_path)}), tmp_path / "run", progress=False)


def test_every_bundled_lm_recipe_validates():
    from speechprune.models.lm import LMConfig
    from speechprune.train.recipe import BUNDLED_TRAIN_RECIPES

    names = sorted(p.stem for p in BUNDLED_TRAIN_RECIPES.glob("lm-*.yaml"))
    assert names == ["lm-chars", "lm-whisper-bpe"]
    for name in names:
        r = load_train_recipe(name)
        assert isinstance(r, LMTrainRecipe) and "asterisk:dev" in r.data.add_train
        assert r.model.d_model == 256 and r.model.n_layers == 4
    assert load_train_recipe("lm-whisper-bpe").model.keep_seen_tokens
    assert "context" in LMConfig.model_fields


def test_train_and_eval_from_the_command_line(text, tmp_path):
    from cli_helpers import cli

    p = tmp_path / "t.yaml"
    p.write_text(f"family: lm\nmodel: {json.dumps({'tokens': 'chars', **MODEL})}\n"
                 f"data: {{text: '{text / 'train.txt'}', valid: '{text / 'dev.txt'}'}}\nsteps: 3\nbatch_tokens: 256\n")
    r = cli("train", str(p), "--out", str(tmp_path / "run"))
    assert r.returncode == 0, r.stderr
    assert "dev perplexity" in r.stdout and (tmp_path / "run" / "train.json").is_file()
    r = cli("eval", str(tmp_path / "run" / "model"), str(text / "dev.txt"), "--out", str(tmp_path / "e"))
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    trained = json.loads((tmp_path / "run" / "train.json").read_text())["valid"]
    assert m["lines"] == 20 and m["tokens"] == trained["tokens"] and 1 < m["ppl"] < 45
