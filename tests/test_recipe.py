"""Recipes: every shipped one validates; typos and wrong types are errors that name the key."""
from __future__ import annotations

import pytest

from proui_data.recipe import RecipeError, load_recipe


@pytest.mark.parametrize("source", ["celeba", "helen", "folder", "hf", "demo"])
def test_shipped_recipes_validate(source):
    r = load_recipe(None, source)
    assert r.source == source and (r.store.shard_size == "auto" or r.store.shard_size % r.store.chunk_size == 0)
    assert r.priors.enabled and r.occlusion is not None


@pytest.mark.parametrize("text,match", [
    ("[detect]\nupsampel = 1\n", r"detect: unknown key\(s\) \['upsampel'\]"),
    ("[store]\nshard_size = 'big'\n", "store.shard_size: expected a number"),
    ("[store]\nshard_size = 100\nchunk_size = 32\n", "multiple of chunk_size"),
    ("[degrade]\nscale = 4\n", "scale must be 8"),
    ("[detect]\nlandmarks = 'mediapipe'\n", "detect.landmarks"),
    ("[occlusion]\nkinds = { blob = 1.0 }\n", "occlusion"),
    ("source = 'helen'\n", "recipe for source 'helen'"),
    ("seed = 1.5\n", "seed: expected an integer"),
    ("[priors\n", "invalid TOML"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, match):
    p = tmp_path / "r.toml"
    p.write_text(text)
    with pytest.raises(RecipeError, match=match):
        load_recipe(p, "celeba")


def test_missing_recipe_file():
    with pytest.raises(RecipeError, match="file not found"):
        load_recipe("/no/such/recipe.toml", "celeba")
