"""Photos from the wild: every entry under a folder accounted for, small faces rejected, reduced-copy search."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from proui_data.cli import main as cli
from proui_data.sources import get_source
from proui_data.sources.base import scan_folder

from fixtures import demo_photo, write_jpeg


def _save(path, rgb: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    path.write_bytes(buf.getvalue())


def make_zoo(d) -> dict[str, str | None]:
    """A folder of good and bad entries; returns name -> expected skip reason (None: an image sample)."""
    face = demo_photo("astronaut.jpg")
    small = np.asarray(Image.fromarray(face).resize((96, 96)))
    expect: dict[str, str | None] = {}
    write_jpeg(d / "a_face.jpg", face)
    expect["a_face.jpg"] = None
    for name, fmt in (("b.GIF", "GIF"), ("c.bmp", "BMP"), ("d.TIFF", "TIFF"), ("e.webp", "WEBP"),
                      ("f.Png", "PNG"), ("g.JPEG", "JPEG"), ("no_extension", "PNG"), ("h.gif.bak", "GIF")):
        _save(d / name, small, fmt)
        expect[name] = None
    (d / "notes.txt").write_text("not a photo")
    (d / "face.pts").write_text("version: 1\n")
    (d / "no_ext_text").write_bytes(b"\x00\x01 binary junk")
    expect.update({"notes.txt": "not_an_image", "face.pts": "not_an_image", "no_ext_text": "not_an_image"})
    (d / "broken.gif").write_bytes(b"GIF89a garbage")  # a sample, rejected on decode
    expect["broken.gif"] = None
    os.symlink(d / "a_face.jpg", d / "link.jpg")
    os.symlink(d / "missing.jpg", d / "dangling.jpg")
    os.symlink(d / "loop_b.jpg", d / "loop_a.jpg")  # links to each other: stat fails with ELOOP
    os.symlink(d / "loop_a.jpg", d / "loop_b.jpg")
    expect.update({"link.jpg": None, "dangling.jpg": "dangling_link", "loop_a.jpg": "unreadable",
                   "loop_b.jpg": "unreadable"})
    (d / "x.jpg").mkdir()
    _save(d / "x.jpg" / "inner.png", small, "PNG")
    expect.update({"x.jpg": "directory", "x.jpg/inner.png": None})
    (d / "plain_dir").mkdir()
    os.symlink(d / "x.jpg", d / "dir_link")
    expect["dir_link"] = "directory_link"
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "pipe.jpg")
        expect["pipe.jpg"] = "special_file"
    return expect


def test_scan_accounts_for_every_entry(tmp_path):
    d = tmp_path / "zoo"
    d.mkdir()
    expect = make_zoo(d)
    scan = scan_folder(d)
    got = {k: None for k in scan.images} | {k: r for r, ks in scan.skipped.items() for k in ks}
    assert got == expect
    assert scan.entries == len(expect) == len(scan.images) + sum(scan.counts().values())
    assert scan.images == sorted(scan.images, key=lambda k: k.split("/"))


def test_no_images_names_what_was_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    from proui_data.sources import SourceError

    with pytest.raises(SourceError, match="not_an_image: 1"):
        get_source("folder", str(tmp_path)).items("train")


def test_zoo_build_never_stops_and_reports_skips(tmp_path):
    d = tmp_path / "zoo"
    d.mkdir()
    expect = make_zoo(d)
    out = tmp_path / "zoo.zarr"
    r = CliRunner().invoke(cli, ["build", "--source", "folder", "--root", str(d), "--out", str(out),
                                 "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    images = sorted((k for k, v in expect.items() if v is None), key=lambda k: k.split("/"))
    skipped = {k: v for k, v in expect.items() if v is not None}
    assert f"{len(expect)} entries under the root: {len(images)} images, {len(skipped)} skipped" in r.output
    g = zarr.open_group(str(out), mode="r")["train"]
    assert list(g["key"][:]) == images
    reasons = dict(zip(g["key"][:], g["reject_reason"][:]))
    assert reasons["broken.gif"].startswith("decode:") and reasons["a_face.jpg"] == ""
    # every other file decodes (GIF as its first frame, extension-less PNG, any case of extension)
    assert not any(v.startswith("decode:") for k, v in reasons.items() if k != "broken.gif")
    info = CliRunner().invoke(cli, ["info", str(out)]).output
    for reason in set(skipped.values()):
        n = sum(v == reason for v in skipped.values())
        assert f"skipped {reason}: {n} (" in info
    assert "dangling.jpg" in info


# --- B: faces too small to be targets

def test_min_eye_distance_default_comes_from_the_template():
    from proui_data import align
    from proui_data.recipe import DEFAULT_MIN_EYE_DISTANCE, load_recipe

    eyes = float(np.linalg.norm(align.TEMPLATE_5[1] - align.TEMPLATE_5[0]))
    assert DEFAULT_MIN_EYE_DISTANCE == pytest.approx(0.75 * eyes, abs=0.05) == 20.6
    assert load_recipe(None, "folder").detect.min_eye_distance == DEFAULT_MIN_EYE_DISTANCE
    for source in ("celeba", "helen", "demo"):  # what they accepted before the default changed
        assert load_recipe(None, source).detect.min_eye_distance == 8.0


def test_face_too_small_is_rejected_and_counted(tmp_path):
    import cv2

    from proui_data.recipe import load_recipe

    d = tmp_path / "photos"
    face = demo_photo("astronaut.jpg")  # eyes 43.6 px apart
    write_jpeg(d / "big.jpg", face)
    write_jpeg(d / "small.jpg", cv2.resize(face, None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA))  # 17 px
    # the search that still finds the 17 px face (HOG one level up): found, then rejected for its size
    recipe = tmp_path / "r.toml"
    recipe.write_text('[detect]\nlandmarks = "dlib"\nupsample = 1\nprior_box = false\n')
    out = tmp_path / "f.zarr"
    r = CliRunner().invoke(cli, ["build", "--source", "folder", "--root", str(d), "--recipe", str(recipe),
                                 "--out", str(out), "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    g = zarr.open_group(str(out), mode="r")["train"]
    assert dict(zip(g["key"][:], g["reject_reason"][:])) == {"big.jpg": "", "small.jpg": "face_too_small"}
    assert "rejected face_too_small: 1" in CliRunner().invoke(cli, ["info", str(out)]).output
    # the old bound (8 px) keeps it
    from proui_data.pipeline import plan_build
    from proui_data.runner import run_plan

    old = load_recipe(recipe, "folder")
    old = old.replace(detect=old.detect.__class__(landmarks="dlib", upsample=1, prior_box=False, min_eye_distance=8.0))
    run_plan(plan_build(get_source("folder", str(d)), old, str(tmp_path / "old.zarr")), workers=0, progress=False)
    assert zarr.open_group(str(tmp_path / "old.zarr"), mode="r")["train"]["valid"][:].all()


def test_the_floor_holds_in_the_pixels_targets_are_cut_from(tmp_path):
    """A photo over decode.max_side is reduced on decode and its targets are cut from that: a face with eyes 30 px
    apart in the 1400-px photo has 15 px at max_side 700, under the 20.6-px floor, so it is face_too_small there
    (a target from it would be enlarged 1.8x), and a valid row with the photo decoded in full."""
    import cv2

    from proui_data.pipeline import plan_build
    from proui_data.recipe import DecodeRecipe, load_recipe
    from proui_data.runner import run_plan

    d = tmp_path / "photos"
    face = demo_photo("astronaut.jpg")  # eyes 43.6 px apart
    canvas = np.full((1000, 1400, 3), 120, np.uint8)
    small = cv2.resize(face, None, fx=0.69, fy=0.69, interpolation=cv2.INTER_AREA)  # eyes ~30 px
    canvas[300:300 + small.shape[0], 500:500 + small.shape[1]] = small
    write_jpeg(d / "x.jpg", canvas)
    recipe = load_recipe(None, "folder")
    rows = {}
    for max_side in (700, 2048):
        r = recipe.replace(decode=DecodeRecipe(max_side=max_side))
        out = tmp_path / f"{max_side}.zarr"
        run_plan(plan_build(get_source("folder", str(d)), r, str(out)), workers=0, progress=False)
        rows[max_side] = zarr.open_group(str(out), mode="r")["train"]
    assert list(rows[700]["reject_reason"][:]) == ["face_too_small"]
    assert list(rows[2048]["reject_reason"][:]) == [""] and rows[2048]["valid"][0]
    m = rows[2048]["transform"][0].astype(np.float64)
    assert 25 < 27.5 / np.sqrt(abs(np.linalg.det(m[:, :2]))) < 36  # the kept face: eyes ~30 px apart


# --- C: the search on a scaled copy

def test_search_scale_puts_the_smallest_accepted_face_at_hogs_window():
    from proui_data import detect

    s = detect.search_scale(20.6)
    assert 1.1 < s < 1.3
    assert s * 20.6 * detect.HOG_BOX_PER_EYE == pytest.approx(detect.HOG_MIN_BOX)
    assert detect.search_scale(80) < 0.5  # large accepted faces: a reduced copy
    assert detect.search_scale(1) == detect.search_scale(0) == detect.MAX_SEARCH_SCALE


@pytest.mark.parametrize("scale", [0.8, 1.5, 2.0])
def test_boxes_found_on_a_scaled_copy_map_back(scale):
    from proui_data import detect

    face = demo_photo("astronaut.jpg")
    ref = detect.hog_boxes(face, 0)[0]
    box = detect.hog_boxes_scaled(face, scale)[0]
    width = ref[2] - ref[0]
    assert np.abs(np.subtract(box, ref)).max() < 0.15 * width
    # landmarks are predicted at full resolution in the mapped box
    err = np.abs(detect.predict_in_box(face, box) - detect.predict_in_box(face, ref)).mean()
    assert err < 0.02 * width


def test_folder_build_finds_the_faces(tmp_path):
    from proui_data.recipe import load_recipe

    recipe = load_recipe(None, "folder")
    assert recipe.detect.search == "blazeface" and recipe.detect.fallback is False
    d = tmp_path / "photos"
    write_jpeg(d / "a.jpg", demo_photo("astronaut.jpg"))
    write_jpeg(d / "b.jpg", demo_photo("grace_hopper.jpg"))
    write_jpeg(d / "c.jpg", np.full((300, 400, 3), 90, np.uint8))
    out = tmp_path / "f.zarr"
    r = CliRunner().invoke(cli, ["build", "--source", "folder", "--root", str(d), "--out", str(out),
                                 "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    g = zarr.open_group(str(out), mode="r")["train"]
    assert list(g["reject_reason"][:]) == ["", "", "no_face"]
    assert set(g["landmark_source"][:][:2]) == {"blazeface"}


def test_recipes_without_search_record_what_they_did_before():
    from proui_data.recipe import load_recipe, parse_recipe

    # exactly the tables they recorded (and fingerprinted) before: same stores, resumable
    before = {"celeba": {"landmarks": "auto", "upsample": 0, "fallback": False, "prior_box": True,
                         "min_eye_distance": 8.0},
              "helen": {"landmarks": "auto", "upsample": 1, "fallback": True, "prior_box": True,
                        "min_eye_distance": 8.0}}
    for source, detect in before.items():
        r = load_recipe(None, source).to_dict()
        assert r["detect"] == detect and r["store"]["shard_size"] == 256
    with pytest.raises(ValueError, match="detect.search"):
        parse_recipe({"detect": {"search": "pyramid"}})


# --- D: shard_size = "auto"

def test_auto_layout_depends_on_the_sample_count_only():
    from proui_data.store import AUTO_MAX, auto_layout

    assert auto_layout(20, 32) == (32, 32)  # one shard
    assert auto_layout(20, 64) == (32, 32)  # a chunk never exceeds its shard
    assert auto_layout(200, 32) == (32, 32)  # 7 shards, not 16 of 13: a shard's fixed cost stays small
    assert auto_layout(337, 32) == (32, 32)  # AFW's 337 photos: 11 shards (a fixed 256 made two)
    assert auto_layout(1000, 32) == (64, 32)
    assert auto_layout(10**6, 32) == (AUTO_MAX, 32)
    for n in (1, 20, 200, 5000):
        size, chunk = auto_layout(n, 32)
        assert size % chunk == 0 and -(-n // size) <= 16 or size == AUTO_MAX


def test_auto_shards_are_recorded_and_resume(tmp_path):
    from proui_data.pipeline import plan_build
    from proui_data.recipe import load_recipe
    from proui_data.runner import run_plan

    d = tmp_path / "photos"
    for i in range(70):
        _save(d / f"{i:02d}.png", np.full((64, 64, 3), 3 * i, np.uint8), "PNG")
    recipe = load_recipe(None, "folder")
    assert recipe.store.shard_size == "auto"
    plan = plan_build(get_source("folder", str(d)), recipe, str(tmp_path / "a.zarr"))
    assert plan.shard_sizes == {"train": 32} and len(plan.todo) == 3
    run_plan(plan, workers=0, progress=False)
    g = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["train"]
    assert g.attrs["shard_size"] == 32 and g.attrs["n_shards"] == 3 and g["hr"].shards[0] == 32
    assert list(g["key"][:]) == [f"{i:02d}.png" for i in range(70)]
    again = plan_build(get_source("folder", str(d)), recipe, str(tmp_path / "a.zarr"))
    assert again.todo == [] and again.skipped == 3
    assert zarr.open_group(str(tmp_path / "a.zarr"), mode="r").attrs["recipe"]["store"]["shard_size"] == "auto"
