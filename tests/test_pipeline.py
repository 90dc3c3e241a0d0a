"""The main job's resume check: a recorded recipe is compared through today's schema."""

from __future__ import annotations

from speechprune.pipeline import _same_recipe
from speechprune.prune.recipe import parse_recipe

RECIPE = {"criterion": "activation", "targets": [{"stack": "decoder", "n_layers": 1}],
          "recovery": {"steps": 3, "encoder_weight": 1.0}}


def test_a_field_added_since_with_its_default_does_not_change_the_recipe():
    recipe = parse_recipe(RECIPE)
    old_record = recipe.model_dump()
    del old_record["recovery"]["hidden_weight"]  # written before the field existed
    assert _same_recipe(old_record, recipe)


def test_a_changed_or_unreadable_recipe_is_another_recipe():
    recipe = parse_recipe(RECIPE)
    changed = recipe.model_dump()
    changed["recovery"]["steps"] = 4
    assert not _same_recipe(changed, recipe)
    assert not _same_recipe({"targets": "nonsense"}, recipe)
    assert not _same_recipe(None, recipe)
