"""Named templates, the border fill and the padded share: exact answers on constructed images, and a build
in the FSRNet frame."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import zarr

from proui_data import align
from proui_data.pipeline import plan_build
from proui_data.recipe import RecipeError, load_recipe, parse_recipe
from proui_data.runner import run_plan
from proui_data.sources import get_source
from proui_data.verify import verify_store

SHIFT = np.array([[1.0, 0.0, 32.0], [0.0, 1.0, 0.0]])  # HR x = source x + 32: the left quarter has no source


def test_template_box_follows_the_template():
    assert align.template_box("celeba") == pytest.approx(align.TEMPLATE_BOX)
    m = align.similarity_transform(align.TEMPLATE_5, align.TEMPLATE_FSRNET)
    x0, y0, x1, y1 = align.template_box("fsrnet")
    scale = np.sqrt(np.linalg.det(m[:, :2]))
    assert (x1 - x0) == pytest.approx(scale * (align.TEMPLATE_BOX[2] - align.TEMPLATE_BOX[0]))
    assert scale == pytest.approx(1 / 0.813, abs=0.01)  # the documented fsrnet -> celeba scale 0.813
    with pytest.raises(ValueError, match="unknown template"):
        align.template_points("ffhq")


def test_padded_fraction_is_the_share_outside_the_source():
    assert align.padded_fraction(np.eye(2, 3), (128, 128)) == 0.0
    assert align.padded_fraction(SHIFT, (128, 128)) == 0.25
    assert align.padded_fraction(np.eye(2, 3), (64, 128)) == 0.5


def test_border_fills():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
    const = align.warp_to_template(src, SHIFT, border="constant")
    np.testing.assert_array_equal(const[:, 32:], src[:, :96])
    np.testing.assert_allclose(const[:, :32].reshape(-1, 3).astype(float),
                               np.broadcast_to(src.reshape(-1, 3).mean(0), (128 * 32, 3)), atol=0.51)
    refl = align.warp_to_template(src, SHIFT, border="reflect")
    np.testing.assert_array_equal(refl[:, 31], src[:, 1])  # mirror without repeating the edge column
    np.testing.assert_array_equal(refl[:, 0], src[:, 32])
    rep = align.warp_to_template(src, SHIFT, border="replicate")
    np.testing.assert_array_equal(rep[:, 0], src[:, 0])
    with pytest.raises(ValueError, match="unknown border"):
        align.warp_to_template(src, SHIFT, border="wrap")


def test_recipe_checks_align():
    assert load_recipe(None, "celeba").align == dataclasses.replace(load_recipe(None, "celeba").align)
    with pytest.raises(RecipeError, match="align.template"):
        parse_recipe({"align": {"template": "ffhq"}})
    with pytest.raises(RecipeError, match="align.border"):
        parse_recipe({"align": {"border": "wrap"}})


def test_build_in_the_fsrnet_frame(tmp_path):
    recipe = load_recipe(None, "demo")
    recipe = recipe.replace(align=dataclasses.replace(recipe.align, template="fsrnet"))
    out = tmp_path / "fsrnet.zarr"
    run_plan(plan_build(get_source("demo", None), recipe, str(out)), workers=0, progress=False)
    root = zarr.open_group(str(out), mode="r")
    assert root.attrs["template"]["name"] == "fsrnet"
    assert root.attrs["template"]["points5"] == align.TEMPLATE_FSRNET.tolist()
    lm = root["train"]["landmarks"][:]
    eyes = np.stack([lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)], 1)
    assert np.abs(eyes - align.TEMPLATE_FSRNET[:2]).max() < 4.0
    padded = root["train"]["padded"][:]
    assert np.isfinite(padded).all() and (padded >= 0).all() and (padded < 0.5).all()
    assert verify_store(str(out))[0] == []


def test_infer_aligns_to_the_models_frame():
    from fixtures import demo_photo
    from proui_data.detect import locate_face
    from proui_train.models import ProUIGAN
    from proui_train.restore import FaceRestorer

    photo = demo_photo("grace_hopper.jpg")
    for name in ("celeba", "fsrnet"):
        _, [rec] = FaceRestorer(ProUIGAN(), name, device="cpu", downscale=True).restore(photo)
        lr, hr = rec.lr, rec.aligned
        assert lr.shape == (16, 16, 3)
        found = locate_face(hr, given_box=align.template_box(name))
        eyes = align.landmarks68_to_5(found.landmarks)[:2]
        assert np.abs(eyes - align.template_points(name)[:2]).max() < 3.0, name
