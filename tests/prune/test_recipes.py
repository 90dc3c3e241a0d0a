"""Every shipped recipe loads, validates, and dry-runs against a model of the shape it was written for."""

from pathlib import Path

import pytest

from speechprune.models.adapters import adapter_for
from speechprune.prune.recipe import load_recipe
from speechprune.prune.structured import validate_against_model

from tiny_models import tiny_whisper

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    assert any(p.name == "whisper-tiny.en-fast.yaml" for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid_for_a_model_of_its_shape(path):
    recipe = load_recipe(path)
    # tiny.en's layout (4 + 4 layers, 6 heads) at toy width
    model = tiny_whisper(encoder_layers=4, decoder_layers=4, encoder_attention_heads=6, decoder_attention_heads=6,
                         d_model=48)
    validate_against_model(recipe, model, adapter_for(model))
    if recipe.recovery is not None:
        assert all(not d.endswith(":test") for d in recipe.recovery.data)


def test_a_recipe_with_a_typo_names_the_key_and_the_file(tmp_path):
    from speechprune.errors import ConfigError

    p = tmp_path / "r.yaml"
    p.write_text("criterion: taylor\ntargetz: []\n")
    with pytest.raises(ConfigError, match=r"r.yaml: bad recipe: .*targetz.*unknown key"):
        load_recipe(p)
    p.write_text("targets: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(p)


@pytest.mark.parametrize("spec, problem", [
    ("asterisk:test", "test split; use dev"),
    ("synth-telephone", "needs a count"),
    ("synth-telephone:0", "needs a count"),
    ("librispeech", "not a bundled set"),
    ("unlabelled", "needs a count"),
    ("english-ood", "evaluation-only"),
    ("drascula", "evaluation-only"),
])
def test_recovery_data_specs_are_checked_at_load(tmp_path, spec, problem):
    from speechprune.errors import ConfigError

    p = tmp_path / "r.yaml"
    p.write_text(f"targets: [{{stack: decoder, n_layers: 1}}]\nrecovery: {{data: ['{spec}']}}\n")
    with pytest.raises(ConfigError, match=rf"r.yaml: bad recipe: recovery.*{problem}"):
        load_recipe(p)


def test_synthetic_training_sets_are_made_once_in_the_cache_and_extended(tmp_path, monkeypatch):
    from speechprune.data.datasets import training_utterances

    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path))
    first = training_utterances(["synth:2"])
    assert len(first) == 2 and all(Path(u.audio).is_file() for u in first)
    assert str(tmp_path / "synth" / "synth") in str(first[0].audio)
    more = training_utterances(["synth:3"])
    assert [u.id for u in more[:2]] == [u.id for u in first]  # extended, not remade
    assert len(more) == 3


def test_bundled_recipes_load_by_name_from_anywhere(tmp_path, monkeypatch):
    from speechprune.errors import ConfigError

    monkeypatch.chdir(tmp_path)
    assert load_recipe("whisper-tiny.en-fast").name == "whisper-tiny.en-fast"
    with pytest.raises(ConfigError, match="recipe not found .*bundled: .*whisper-tiny.en-fast"):
        load_recipe("whisper-tiny.en-nope")


def test_every_bundled_structured_recipe_validates():
    from speechprune.prune.recipe import bundled_recipes

    names = bundled_recipes()
    assert "whisper-tiny.en-export" in names
    for name in names:
        assert load_recipe(name).targets  # validates
    assert load_recipe("whisper-tiny.en-export").recovery.train_embeddings is False


def test_recovery_that_trains_a_stack_the_family_lacks_is_refused_before_any_work():
    from tiny_models import build_tiny

    from speechprune.errors import ConfigError
    from speechprune.prune.recipe import parse_recipe

    recipe = parse_recipe({"targets": [{"stack": "encoder", "kind": "ffn", "sparsity": 0.5}],
                           "recovery": {"train": ["decoder"]}})
    model = build_tiny("wav2vec2")
    with pytest.raises(ConfigError, match="recovery.train: this wav2vec2 model has no decoder"):
        validate_against_model(recipe, model, adapter_for(model))
    whisper = tiny_whisper()
    validate_against_model(recipe, whisper, adapter_for(whisper))


def test_recovery_augmentation_and_interleaving_are_recipe_keys(tmp_path):
    from speechprune.errors import ConfigError

    p = tmp_path / "r.yaml"
    p.write_text("targets: [{stack: decoder, n_layers: 1}]\n"
                 "recovery: {data: ['asterisk:dev', 'unlabelled:50'], interleave: true, augment: {noise_p: 0.8}}\n")
    rec = load_recipe(p).recovery
    assert rec.interleave and rec.augment.noise_p == 0.8 and rec.augment.reverb_p == 0.3  # the rest: defaults
    p.write_text("targets: [{stack: decoder, n_layers: 1}]\nrecovery: {augment: {noise: 0.8}}\n")
    with pytest.raises(ConfigError, match=r"r.yaml: bad recipe: recovery.augment.noise"):
        load_recipe(p)


def test_calibration_reads_one_set_or_a_list_of_specs_in_turn(tmp_path, monkeypatch):
    from speechprune.errors import ConfigError

    p = tmp_path / "r.yaml"
    p.write_text("targets: [{stack: decoder, n_layers: 1}]\ncalibration: {data: asterisk, utterances: 4}\n")
    assert load_recipe(p).calibration.specs == ["asterisk:dev"]
    p.write_text("targets: [{stack: decoder, n_layers: 1}]\n"
                 "calibration: {data: ['asterisk:dev', 'synth:3'], utterances: 4}\n")
    cal = load_recipe(p).calibration
    assert cal.specs == ["asterisk:dev", "synth:3"]
    monkeypatch.setenv("SPEECHPRUNE_CACHE", str(tmp_path / "cache"))
    from speechprune.data.datasets import training_utterances

    clips = training_utterances(cal.specs, cal.utterances, interleave=True)  # what an audio family's runner reads
    assert len(clips) == 4 and ["synth" in str(u.audio) for u in clips] == [False, True, False, True]  # in turn
    for bad, problem in [("['drascula']", "evaluation-only"), ("['asterisk:test']", "test split"), ("[]", "no data")]:
        p.write_text(f"targets: [{{stack: decoder, n_layers: 1}}]\ncalibration: {{data: {bad}}}\n")
        with pytest.raises(ConfigError, match=rf"r.yaml: bad recipe: calibration.*{problem}"):
            load_recipe(p)
