"""Builds over the real data in ../shared/data (skipped when it is absent): CelebA with priors and
occlusions, Helen with human landmarks, in-the-wild photos through the detector."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from proui_data import align
from proui_data.cli import main as cli
from proui_data.heatmaps import render_heatmaps
from proui_data.pipeline import plan_build
from proui_data.recipe import load_recipe
from proui_data.runner import run_plan
from proui_data.sources import get_source
from proui_data.verify import verify_store

N_CELEBA = 300


@pytest.fixture(scope="module")
def celeba_store(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("celeba") / "celeba.zarr"
    plan = plan_build(get_source("celeba", str(shared_data / "celeba")), load_recipe(None, "celeba"), str(out),
                      "train", limit=N_CELEBA)
    run_plan(plan, workers=0, progress=False)
    return out


def _polygon_mask(points: np.ndarray) -> np.ndarray:
    m = np.zeros((128, 128), np.uint8)
    cv2.fillPoly(m, [np.round(points * 16).astype(np.int32)], 1, shift=4)
    return m.astype(bool)


def test_celeba_subset_has_every_prior(celeba_store):
    assert verify_store(str(celeba_store))[0] == []
    g = zarr.open_group(str(celeba_store), mode="r")["train"]
    valid = g["valid"][:]
    assert valid.mean() > 0.98  # the prior box rescues the HOG misses on aligned CelebA
    assert all(str(s).startswith(("dlib-", "opencv-")) for s in g["landmark_source"][:][valid])
    lm = g["landmarks"][:][valid]
    eyes = np.stack([lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)], 1)
    assert np.median(np.linalg.norm(eyes - align.TEMPLATE_5[:2], axis=-1)) < 2.0
    hm = g["heatmaps"][:8]
    np.testing.assert_array_equal(hm, np.stack([render_heatmaps(x) for x in g["landmarks"][:8]]))
    parsing = g["parsing"][:][valid]
    assert set(g["parsing_source"][:][valid]) == {"landmarks"}
    # every landmark-derived map has skin, both eyes, nose and lips, and never hair
    for c in (1, 4, 5, 6, 7, 9):
        assert ((parsing == c).reshape(len(parsing), -1).any(1)).mean() > 0.99, c
    assert not (parsing == 10).any()


def test_celeba_occlusions_follow_the_recipe(celeba_store):
    g = zarr.open_group(str(celeba_store), mode="r")["train"]
    valid = g["valid"][:]
    kinds = np.asarray(g["occlusion_kind"][:], dtype=object)[valid]
    ratios = g["occlusion_ratio"][:][valid]
    assert set(kinds) == {"block", "stroke", "walk", "shape", "object"}
    # the kinds that aim at the target: uniform 10-50 % of the face region
    aimed = ratios[np.isin(kinds, ["block", "stroke", "walk", "shape"])]
    assert abs(aimed.mean() - 0.30) < 0.04
    counts, _ = np.histogram(aimed, [0, 0.2, 0.3, 0.4, 1.0])
    share = counts / counts.sum()
    assert ((share > 0.15) & (share < 0.35)).all(), share
    # the occluded LR differs from the clean LR where the mask is, and only there
    masks = g["occlusion_mask"][:][valid]
    lr, lro = g["lr"][:][valid], g["lr_occluded"][:][valid]
    clean_blocks = masks.reshape(-1, 16, 8, 16, 8).max((2, 4)) == 0
    np.testing.assert_array_equal(lr[clean_blocks], lro[clean_blocks])
    assert (lr != lro).any(-1)[~clean_blocks].mean() > 0.5
    # objects sit on the parts they belong to
    anchors = np.asarray(g["occlusion_anchor"][:], dtype=object)[valid]
    lm = g["landmarks"][:][valid]
    eye_cover, mouth_cover = [], []
    for i in np.flatnonzero(kinds == "object"):
        m = masks[i] > 0
        eyes = _polygon_mask(lm[i, 36:42]) | _polygon_mask(lm[i, 42:48])
        mouth = _polygon_mask(lm[i, 48:60])
        if anchors[i] == "eyes":
            eye_cover.append(m[eyes].mean())
        elif anchors[i] in ("lower_face", "mouth"):
            mouth_cover.append(m[mouth].mean())
    assert eye_cover and mouth_cover
    assert np.median(eye_cover) > 0.9 and np.median(mouth_cover) > 0.9


def test_helen_full_layout_with_human_landmarks(shared_data, tmp_path):
    out = tmp_path / "helen.zarr"
    plan = plan_build(get_source("helen", str(shared_data / "300w" / "helen")), load_recipe(None, "helen"),
                      str(out), "test", limit=40)
    run_plan(plan, workers=0, progress=False)
    assert verify_store(str(out))[0] == []
    g = zarr.open_group(str(out), mode="r")["test"]
    assert g["valid"][:].all() and set(g["landmark_source"][:]) == {"annotation"}


def test_wild_folder_is_detected_and_rejects_are_listed(shared_data, tmp_path):
    out = tmp_path / "wild.zarr"
    r = CliRunner().invoke(cli, ["build", "--source", "folder", "--root", str(shared_data / "wild" / "celeba_in_the_wild"),
                                 "--out", str(out), "--limit", "30", "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    g = zarr.open_group(str(out), mode="r")["train"]
    valid = g["valid"][:]
    assert valid.mean() > 0.8
    assert "heatmaps" in g.array_keys() and "parsing" in g.array_keys()
    assert verify_store(str(out))[0] == []
    info = CliRunner().invoke(cli, ["info", str(out)])
    for reason in set(g["reject_reason"][:][~valid]):
        assert f"rejected {reason}" in info.output


def test_occlusion_seed_changes_masks_not_faces(tmp_path):
    outs = []
    for seed in (0, 0, 1):
        out = tmp_path / f"demo{len(outs)}.zarr"
        recipe = load_recipe(None, "demo").replace(occlusion_seed=seed)
        run_plan(plan_build(get_source("demo"), recipe, str(out)), workers=0, progress=False)
        outs.append(zarr.open_group(str(out), mode="r")["train"])
    np.testing.assert_array_equal(outs[0]["occlusion_mask"][:], outs[1]["occlusion_mask"][:])
    np.testing.assert_array_equal(outs[0]["hr"][:], outs[2]["hr"][:])
    np.testing.assert_array_equal(outs[0]["lr"][:], outs[2]["lr"][:])
    differs = [not np.array_equal(a, b) for a, b in zip(outs[0]["occlusion_mask"][:], outs[2]["occlusion_mask"][:])]
    assert all(differs)


def test_occlusion_variants_are_consecutive_rows_of_the_same_face(tmp_path):
    base = load_recipe(None, "demo")
    recipe = base.replace(occlusion={**base.occlusion, "variants": 3})
    out = tmp_path / "v.zarr"
    run_plan(plan_build(get_source("demo"), recipe, str(out)), workers=0, progress=False)
    one = tmp_path / "one.zarr"
    run_plan(plan_build(get_source("demo"), base, str(one)), workers=0, progress=False)
    g, g1 = zarr.open_group(str(out), mode="r")["train"], zarr.open_group(str(one), mode="r")["train"]
    assert g["hr"].shape[0] == 3 * g1["hr"].shape[0] == 18
    np.testing.assert_array_equal(g["occlusion_variant"][:], np.tile([0, 1, 2], 6))
    assert list(g["key"][:]) == [k for k in g1["key"][:] for _ in range(3)]
    hr, masks = g["hr"][:], g["occlusion_mask"][:]
    for i in range(6):
        rows = slice(3 * i, 3 * i + 3)
        assert (hr[rows] == hr[3 * i]).all()  # the same clean face ...
        assert len({m.tobytes() for m in masks[rows]}) == 3  # ... with three different occlusions
    # variant 0 is exactly the single-variant build's occlusion
    np.testing.assert_array_equal(masks[::3], g1["occlusion_mask"][:])
    np.testing.assert_array_equal(g["lr_occluded"][::3], g1["lr_occluded"][:])
    assert verify_store(str(out))[0] == []
