"""Named templates, the border fill and the padded share: exact answers on constructed images, and a build
in the FSRNet frame."""
from __future__ import annotations

import dataclasses

import cv2
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


def _photo(h: int = 700, w: int = 900) -> np.ndarray:
    """A smooth seeded photo with fine noise: edges and texture for the reduction to average."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:h, 0:w]
    base = 128 + 60 * np.sin(x / 23.0)[..., None] * np.cos(y / 31.0)[..., None] * np.array([1.0, 0.6, -0.8])
    return np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)


def _whole_photo_warp(image: np.ndarray, m: np.ndarray, border: str) -> np.ndarray:
    """The reference: the whole photo block-averaged by numpy (edge-padded to whole blocks), then warped whole."""
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    block = 1 if scale >= 0.5 else int(np.ceil(0.5 / scale))
    h, w = image.shape[:2]
    padded = np.pad(image.astype(np.float64), ((0, -h % block), (0, -w % block), (0, 0)), mode="edge")
    small = padded.reshape(padded.shape[0] // block, block, padded.shape[1] // block, block, 3).mean((1, 3))
    small = np.floor(small + 0.5).astype(np.uint8)
    to_small = np.array([[1 / block, 0, 0.5 / block - 0.5], [0, 1 / block, 0.5 / block - 0.5], [0, 0, 1]])
    value = tuple(float(v) for v in cv2.mean(image)[:3]) if border == "constant" else 0
    return cv2.warpAffine(small, align.compose(m, np.linalg.inv(to_small)[:2]), (128, 128), flags=cv2.INTER_LINEAR,
                          borderMode=align.BORDERS[border], borderValue=value)


@pytest.mark.parametrize("border", ["replicate", "reflect", "constant"])
@pytest.mark.parametrize("scale, centre", [(1.3, (450, 350)), (0.6, (450, 350)), (0.31, (450, 350)),
                                           (0.12, (450, 350)), (0.3, (30, 20)), (0.2, (880, 690)), (0.9, (-40, 300))])
def test_warp_reads_only_its_window_and_equals_the_whole_photo_warp(border, scale, centre):
    """The window the warp reads gives the pixels of a warp of the whole (block-averaged) photo, for crops inside
    the photo, hanging over its corners and wholly off it, at reductions from none to 8x."""
    photo = _photo()
    rot = np.deg2rad(17)
    lin = scale * np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    m = np.hstack([lin, (np.array([63.5, 63.5]) - lin @ np.array(centre, float))[:, None]])
    got = align.warp_to_template(photo, m, border=border).astype(int)
    ref = _whole_photo_warp(photo, m, border).astype(int)
    assert np.abs(got - ref).max() <= 1


def test_a_large_reduction_averages_the_footprint():
    """A 5x reduction against each HR pixel's mean over its footprint in the photo (a fine grid averaged): the
    block mean keeps the warp from aliasing, where a plain bilinear warp does."""
    photo = _photo()
    q = 5
    m = np.array([[1 / q, 0, 63.5 - 450 / q], [0, 1 / q, 63.5 - 350 / q]])  # the crop lies inside the photo
    fine = align.compose(np.array([[q, 0, (q - 1) / 2], [0, q, (q - 1) / 2]]), m)
    truth = cv2.warpAffine(photo.astype(np.float32), fine, (128 * q, 128 * q), flags=cv2.INTER_LINEAR)
    truth = truth.reshape(128, q, 128, q, 3).mean((1, 3))
    ours = np.abs(align.warp_to_template(photo, m) - truth).mean()
    plain = np.abs(cv2.warpAffine(photo, m, (128, 128), flags=cv2.INTER_LINEAR) - truth).mean()
    assert ours < 3.0 and plain > 3 * ours
