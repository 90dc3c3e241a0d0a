"""Every shipped unstructured recipe loads and dry-runs on a tiny model of tiny.en's shape; bad ones are refused
with one line naming the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
from calibration_helpers import calibration_batches, teacher_batches
from tiny_models import tiny_whisper, randomize

from speechprune.errors import ConfigError
from speechprune.prune.imp import imp
from speechprune.prune.sparse_recipe import load_sparsify_recipe
from speechprune.prune.unstructured import sparsify

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "unstructured").glob("*.yaml"))


def test_there_are_unstructured_recipes():
    assert {p.stem for p in RECIPES} >= {"whisper-tiny.en-wanda50", "whisper-tiny.en-imp70-rewind"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_runs_on_a_model_of_its_shape(path):
    recipe = load_sparsify_recipe(path)
    assert recipe.name == path.stem
    model = randomize(tiny_whisper(encoder_layers=4, decoder_layers=4, encoder_attention_heads=6,
                                   decoder_attention_heads=6, d_model=48))
    if recipe.imp is None:
        rec = sparsify(model, recipe, calibration_batches("whisper", 1) if recipe.needs_calibration else None)
        target = recipe.sparsity if recipe.nm is None else 1 - recipe.nm[0] / recipe.nm[1]
    else:
        assert all(not d.endswith(":test") for d in recipe.imp.recovery.data)
        short = recipe.model_copy(update={"imp": recipe.imp.model_copy(
            update={"recovery": recipe.imp.recovery.model_copy(update={"steps": 1})})})
        rec = imp(model, short, teacher_batches(model, 1))
        target = recipe.sparsity
    assert abs(rec["sparsity"] - target) < 0.01


def test_recipes_load_by_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_sparsify_recipe("whisper-tiny.en-wanda50").criterion == "wanda"
    with pytest.raises(ConfigError, match="recipe not found .*bundled: .*whisper-tiny.en-wanda50"):
        load_sparsify_recipe("whisper-tiny.en-nope")


@pytest.mark.parametrize("text, problem", [
    ("sparsity: 1.0", r"sparsity: Input should be less than 1"),
    ("sparsity: -0.1", r"sparsity: Input should be greater than or equal to 0"),
    ("sparsity: 0.5\npattern: '2:4'", "exactly one of 'sparsity'"),
    ("criterion: magnitude", "exactly one of 'sparsity'"),
    ("pattern: '4:4'", "0 < N < M"),
    ("pattern: 'half'", "must read like '2:4'"),
    ("pattern: '2:4'\nscope: global", "scope"),
    ("sparsity: 0.5\nspasity: 0.3", r"spasity: unknown key"),
    ("sparsity: 0.5\ncriterion: obd", "criterion"),
    ("sparsity: 0.5\nimp: {rounds: 0}", r"imp.rounds"),
    ("sparsity: 0.5\nimp: {rewind: 0}", "rewind must be"),
    ("sparsity: 0.5\nimp: {recovery: {data: ['asterisk:test']}}", "test split; use dev"),
    ("sparsity: 0.5\ncomponents: [norm]", "components"),
])
def test_bad_recipes_are_refused_in_one_line(tmp_path, text, problem):
    p = tmp_path / "r.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError, match=rf"r.yaml: bad recipe: .*{problem}") as e:
        load_sparsify_recipe(p)
    assert "\n" not in str(e.value)
