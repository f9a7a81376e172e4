"""detect.faces = "all": every face of a photo is a sample (`<file>#<k>`, largest first), from one detection
pass recorded in the store."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from proui_data import align, detect
from proui_data.cli import main as cli
from proui_data.pipeline import DETECTIONS, StoreMismatch, build_shard, detect_photos, plan_build, shard_items
from proui_data.recipe import PriorsRecipe, RecipeError, load_recipe, parse_recipe
from proui_data.runner import run_plan
from proui_data.sources import get_source
from proui_data.sources.helen import read_pts
from proui_data.verify import verify_store

from fixtures import demo_photo, write_jpeg

HELEN_TEST = Path("300w") / "helen" / "testset"
# Helen test photos where the annotated person is not the largest face (the folder recipe's search finds both)
SECOND_PERSON = ("3051765471_2.jpg", "3144473012_2.jpg", "3214097106_2.jpg")
# Helen test photos whose face HOG scores just under its threshold (-0.06, -0.02, -0.2 at the folder search scale)
UNDER_THRESHOLD = ("3197527888_1.jpg", "3213274513_1.jpg", "3039319098_1.jpg")


def group_photo(small: float = 0.7) -> np.ndarray:
    """The astronaut at full size (face box ~88 px) beside Grace Hopper scaled by `small` (~150 px at 0.7)."""
    a = demo_photo("astronaut.jpg")
    g = cv2.resize(demo_photo("grace_hopper.jpg"), None, fx=small, fy=small, interpolation=cv2.INTER_AREA)
    canvas = np.full((max(a.shape[0], g.shape[0]), a.shape[1] + g.shape[1], 3), 128, np.uint8)
    canvas[:a.shape[0], :a.shape[1]] = a
    canvas[:g.shape[0], a.shape[1]:] = g
    return canvas


def light(recipe):
    """The recipe without occlusions and priors: the faces are what these tests are about."""
    return recipe.replace(occlusion=None, priors=PriorsRecipe(enabled=False))


def folder_recipe(faces: str | None = "all", **detect):
    r = light(load_recipe(None, "folder"))
    return r.replace(detect=dataclasses.replace(r.detect, faces=faces, **detect))


def build(folder: Path, out: Path, recipe, workers: int = 0, **kw) -> zarr.Group:
    run_plan(plan_build(get_source("folder", str(folder)), recipe, str(out), **kw), workers=workers, progress=False)
    return zarr.open_group(str(out), mode="r")


def source_landmarks(g: zarr.Group, i: int) -> np.ndarray:
    """Row i's 68 points in source-photo pixels (its `transform` maps source pixels to the HR)."""
    m = np.vstack([g["transform"][i].astype(np.float64), [0, 0, 1]])
    return align.apply_transform(np.linalg.inv(m)[:2], g["landmarks"][i].astype(np.float64))


def eye_distance(points68: np.ndarray) -> float:
    five = align.landmarks68_to_5(points68)
    return float(np.linalg.norm(five[1] - five[0]))


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45]))


def test_recipe_field_and_fingerprint_rule():
    assert load_recipe(None, "folder").detect.faces == "all" and load_recipe(None, "folder").detect.recheck is True
    for source in ("celeba", "helen", "demo", "hf"):  # unchanged recipes record (and fingerprint) neither
        for name in ("faces", "recheck"):
            assert getattr(load_recipe(None, source).detect, name) is None
            assert name not in load_recipe(None, source).to_dict()["detect"]
    assert parse_recipe({"detect": {"faces": "largest"}}).detect.faces == "largest"
    with pytest.raises(RecipeError, match="detect.faces"):
        parse_recipe({"detect": {"faces": "every"}})


def test_group_photo_gives_a_row_per_face_largest_first(tmp_path):
    d = tmp_path / "photos"
    write_jpeg(d / "x.jpg", group_photo())
    out = tmp_path / "all.zarr"
    r = CliRunner().invoke(cli, ["build", "--source", "folder", "--root", str(d), "--out", str(out),
                                 "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "folder: 2 samples from 1 photos (a row per face) in train=2" in r.output
    assert "train: 1 photos, 2 faces, 2.00 faces per photo (photos with 0: 0, 1: 0, 2: 1, 3+: 0 faces)" in r.output
    g = zarr.open_group(str(out), mode="r")["train"]
    assert list(g["key"][:]) == ["x.jpg#0", "x.jpg#1"]
    assert g["valid"][:].all() and set(g["landmark_source"][:]) == {"blazeface"}
    eyes = [eye_distance(source_landmarks(g, i)) for i in range(2)]
    assert eyes[0] > 1.2 * eyes[1]  # largest first: Grace Hopper (~62 px) before the astronaut (~44 px)
    assert source_landmarks(g, 0)[:, 0].min() > 512 > source_landmarks(g, 1)[:, 0].max()  # she is on the right
    for i in range(2):  # each row aligned by its own transform
        five = align.landmarks68_to_5(g["landmarks"][i].astype(np.float64))
        assert np.abs(five[:2] - align.TEMPLATE_5[:2]).max() < 3.0
    assert not np.allclose(g["transform"][0], g["transform"][1])
    info = CliRunner().invoke(cli, ["info", str(out)]).output
    assert "1 photos, 2 faces, 2.00 faces per photo" in info and "[train] 2/2 valid" in info
    as_json = json.loads(CliRunner().invoke(cli, ["info", "--json", str(out)]).output)
    assert as_json["faces"]["train"]["faces_per_photo"] == 2.0 and DETECTIONS not in as_json["attrs"]

    largest = build(d, tmp_path / "largest.zarr", folder_recipe("largest"))["train"]
    assert list(largest["key"][:]) == ["x.jpg"] and largest["valid"][0]
    # the largest face is row #0 of the "all" build, predicted in the same box
    np.testing.assert_allclose(largest["transform"][0], g["transform"][0], rtol=1e-6)
    assert DETECTIONS not in zarr.open_group(str(tmp_path / "largest.zarr"), mode="r").attrs


def test_single_face_keeps_its_key_and_a_faceless_photo_its_row(tmp_path):
    d = tmp_path / "photos"
    write_jpeg(d / "x.jpg", demo_photo("grace_hopper.jpg"))
    write_jpeg(d / "a.jpg", demo_photo("astronaut.jpg"))
    write_jpeg(d / "blank.jpg", np.full((300, 400, 3), 90, np.uint8))
    (d / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    g = build(d, tmp_path / "all.zarr", folder_recipe("all"))
    assert dict(zip(g["train"]["key"][:], g["train"]["reject_reason"][:])) == {
        "a.jpg": "", "blank.jpg": "no_face", "broken.jpg": "decode:corrupt", "x.jpg": ""}
    found = g.attrs[DETECTIONS]["train"]
    assert found["blank.jpg"] == {"stage": "none", "boxes": []} and found["broken.jpg"] is None
    assert len(found["x.jpg"]["boxes"]) == len(found["a.jpg"]["boxes"]) == 1
    # HOG also fires, weakly, on the patch of the astronaut's suit: not a face a build keeps
    hit = detect.detect(demo_photo("astronaut.jpg"), 0, False, detect.search_scale(20.6))
    assert len(hit.boxes) == 2 and hit.confident == 1 and hit.faces() == hit.boxes[:1]
    # the single-face row is exactly the row a largest-face build makes
    one = build(d, tmp_path / "largest.zarr", folder_recipe(None))["train"]
    for a in ("hr", "lr", "landmarks", "transform", "landmark_source", "reject_reason"):
        np.testing.assert_array_equal(g["train"][a][:], one[a][:], err_msg=a)


def test_faces_below_the_size_floor_are_rejected_rows(tmp_path):
    d = tmp_path / "photos"
    a = cv2.resize(demo_photo("astronaut.jpg"), None, fx=0.4, fy=0.4, interpolation=cv2.INTER_AREA)  # eyes 17 px
    photo = np.full((600, 512 + a.shape[1], 3), 128, np.uint8)
    photo[:, :512] = demo_photo("grace_hopper.jpg")
    photo[:a.shape[0], 512:] = a
    write_jpeg(d / "x.jpg", photo)
    # HOG one pyramid level up finds the 17 px face; the floor (20.6 px) rejects it, the big face stays
    g = build(d, tmp_path / "f.zarr", folder_recipe("all", search=None, upsample=1))["train"]
    assert dict(zip(g["key"][:], g["reject_reason"][:])) == {"x.jpg#0": "", "x.jpg#1": "face_too_small"}


def test_worker_count_gives_identical_stores(tmp_path):
    d = tmp_path / "photos"
    write_jpeg(d / "a.jpg", group_photo())
    write_jpeg(d / "b.jpg", group_photo(0.8))
    write_jpeg(d / "c.jpg", demo_photo("astronaut.jpg"))
    write_jpeg(d / "d.jpg", np.full((200, 300, 3), 60, np.uint8))
    recipe = folder_recipe("all").replace(occlusion=load_recipe(None, "folder").occlusion)  # occlusions too
    stores = [build(d, tmp_path / f"w{w}.zarr", recipe, workers=w, detect_threads=t) for w, t in ((0, 1), (2, 2))]
    keys = list(stores[0]["train"]["key"][:])
    assert keys == ["a.jpg#0", "a.jpg#1", "b.jpg#0", "b.jpg#1", "c.jpg", "d.jpg"]
    assert stores[0].attrs["fingerprint"] == stores[1].attrs["fingerprint"]
    for a in stores[0]["train"].array_keys():
        np.testing.assert_array_equal(stores[0]["train"][a][:], stores[1]["train"][a][:], err_msg=a)


def test_a_photos_faces_read_and_decode_it_once_per_shard(tmp_path, monkeypatch):
    """The faces of a photo are consecutive rows: a shard reads and decodes each photo once (LastPhoto), and its
    rows equal those of rows that each read the photo again."""
    from proui_data import pipeline
    from proui_data.sources.folder import FolderSource

    d = tmp_path / "photos"
    write_jpeg(d / "a.jpg", group_photo())
    write_jpeg(d / "b.jpg", group_photo(0.8))
    write_jpeg(d / "c.jpg", demo_photo("astronaut.jpg"))
    recipe = folder_recipe("all")
    plan = plan_build(get_source("folder", str(d)), recipe, str(tmp_path / "once.zarr"), detect_threads=1)
    reads = []
    real_read = FolderSource.read
    monkeypatch.setattr(FolderSource, "read", lambda self, it: reads.append(it.path) or real_read(self, it))
    run_plan(plan, workers=0, progress=False)
    assert len(plan.splits["train"]) == 5 and sorted(Path(p).name for p in reads) == ["a.jpg", "b.jpg", "c.jpg"]

    class EveryRow(pipeline.LastPhoto):  # reads and decodes the photo for every row
        def __call__(self, item):
            return pipeline.read_photo(self.source, item, self.recipe)

    monkeypatch.setattr(pipeline, "LastPhoto", EveryRow)
    plan = plan_build(get_source("folder", str(d)), recipe, str(tmp_path / "every.zarr"), detect_threads=1)
    reads.clear()
    run_plan(plan, workers=0, progress=False)
    assert len(reads) == 5
    once, every = (zarr.open_group(str(tmp_path / n), mode="r")["train"] for n in ("once.zarr", "every.zarr"))
    for a in once.array_keys():
        np.testing.assert_array_equal(once[a][:], every[a][:], err_msg=a)


def test_last_photo_tells_photos_apart_by_key_not_by_file(tmp_path):
    """The demo source reads every row from no file (path and index None): consecutive rows of different photos
    must not share a read; the faces of one photo (expand_faces names it in photo_key) do."""
    from proui_data import pipeline

    source, recipe = get_source("demo"), folder_recipe("all")
    items = source.items("train")
    read = pipeline.LastPhoto(source, recipe)
    for it in items:
        assert read(it)[0] == source.read(it), it.key
    faces = pipeline.expand_faces(items[:1], {items[0].key: {"boxes": [(0, 0, 9, 9), (20, 0, 29, 9)], "stage": "x"}})
    assert [f.photo_key for f in faces] == [items[0].key] * 2 and faces[1].key == items[0].key + "#1"
    read = pipeline.LastPhoto(source, recipe)
    assert read(faces[0]) is read(faces[1])


def test_resume_expands_from_the_recorded_detections(tmp_path):
    d = tmp_path / "photos"
    for i in range(10):
        write_jpeg(d / f"{i:02d}.jpg", group_photo() if i % 3 == 0 else demo_photo("grace_hopper.jpg"))
    recipe = folder_recipe("all")
    recipe = recipe.replace(store=dataclasses.replace(recipe.store, shard_size=8))  # two shards
    out = str(tmp_path / "f.zarr")
    plan = plan_build(get_source("folder", str(d)), recipe, out)
    assert sum(len(v) for v in plan.splits.values()) == 14 and len(plan.todo) == 2  # 4 group photos: 2 faces
    s, k = plan.todo[0]
    build_shard(plan.source, shard_items(plan, s, k), recipe, out, s, k)  # then the build dies
    # Photos that now hold no face: a pass run again would find none; the resumed plan uses the recorded boxes.
    for p in d.iterdir():
        write_jpeg(p, np.full((300, 300, 3), 70, np.uint8))
    again = plan_build(get_source("folder", str(d)), recipe, out)
    assert again.fingerprint == plan.fingerprint and again.splits == plan.splits
    assert again.todo == plan.todo[1:] and again.skipped == 1
    # starting again (--overwrite) detects again: the photos now hold no face
    fresh = plan_build(get_source("folder", str(d)), recipe, out, overwrite=True)
    assert [it.key for it in fresh.splits["train"]] == [f"{i:02d}.jpg" for i in range(10)]
    assert all(it.face_box is None for it in fresh.splits["train"])
    with pytest.raises(StoreMismatch):  # and that store is not the one the recorded detections made
        plan_build(get_source("folder", str(d)), recipe.replace(seed=1), out)


def helen_photos(shared_data: Path, names: tuple[str, ...], dest: Path) -> dict[str, np.ndarray]:
    """Copies of Helen test photos in a folder of their own (outside the repository); name -> 68 points."""
    dest.mkdir()
    for n in names:
        shutil.copy(shared_data / HELEN_TEST / n, dest / n)
    return {n: read_pts((shared_data / HELEN_TEST / n).with_suffix(".pts")) for n in names}


@pytest.mark.parametrize("search", ["min-face", "blazeface"])
def test_helen_all_faces_find_the_annotated_second_person(shared_data, tmp_path, search):
    truth = helen_photos(shared_data, SECOND_PERSON, tmp_path / "helen")
    best = {}
    for faces in ("largest", "all"):
        g = build(tmp_path / "helen", tmp_path / f"{faces}.zarr", folder_recipe(faces, search=search))["train"]
        keys, valid = list(g["key"][:]), g["valid"][:]
        errors: dict[str, list[float]] = {n: [] for n in truth}
        for i, key in enumerate(keys):
            if valid[i]:
                errors[key.split("#")[0]].append(nme(source_landmarks(g, i), truth[key.split("#")[0]]))
        best[faces] = {n: min(e, default=np.inf) for n, e in errors.items()}
        if faces == "all":
            assert all(sum(k.startswith(n) for k in keys) >= 2 for n in truth)  # every person a row
    assert all(e < 0.1 for e in best["all"].values()), best  # among all faces: the annotated one, well fitted
    # the largest face is someone else (with HOG's boxes in all three; BlazeFace frames 3144473012_2's pair
    # so that the annotated person comes first)
    others = SECOND_PERSON if search == "min-face" else ("3051765471_2.jpg", "3214097106_2.jpg")
    assert all(best["largest"][n] >= 0.1 for n in others), best


def test_a_file_named_like_a_face_key_is_a_clear_error(tmp_path):
    """A file literally named `x.jpg#1` beside a two-face `x.jpg` would make two rows with one key: refused."""
    folder = tmp_path / "photos"
    write_jpeg(folder / "x.jpg", group_photo())
    write_jpeg(folder / "x.jpg#1", demo_photo("grace_hopper.jpg"))  # a JPEG without an image suffix: sniffed
    with pytest.raises(ValueError, match="occur twice, e.g. 'x.jpg#1'"):
        plan_build(get_source("folder", str(folder)), folder_recipe(), str(tmp_path / "s.zarr"))


def test_recheck_keeps_faces_hog_scores_just_under_its_threshold(shared_data, tmp_path):
    truth = helen_photos(shared_data, UNDER_THRESHOLD, tmp_path / "helen")
    scale = detect.search_scale(20.6)
    for name, gt in truth.items():
        rgb = cv2.cvtColor(cv2.imread(str(tmp_path / "helen" / name)), cv2.COLOR_BGR2RGB)
        assert detect.detect(rgb, 0, False, scale) is None  # HOG alone: no face
        found = detect.detect(rgb, 0, False, scale, recheck=True)
        assert found.stage == "dlib-hog-rechecked" and len(found.boxes) == 1 and found.scores[0] < 0
        assert nme(detect.predict_in_box(rgb, found.boxes[0]), gt) < 0.06
    # the folder recipe's HOG stage keeps them, one face each, at the annotated face
    g = build(tmp_path / "helen", tmp_path / "f.zarr", folder_recipe(search="min-face"))["train"]
    assert sorted(g["key"][:]) == sorted(UNDER_THRESHOLD) and g["valid"][:].all()
    assert set(g["landmark_source"][:]) == {"dlib-hog-rechecked"}
    for i, key in enumerate(g["key"][:]):
        assert nme(source_landmarks(g, i), truth[key]) < 0.06
    off = build(tmp_path / "helen", tmp_path / "off.zarr", folder_recipe(search="min-face", recheck=None))["train"]
    assert set(off["reject_reason"][:]) == {"no_face"}
    # BlazeFace, the folder recipe's first stage, finds them itself
    first = build(tmp_path / "helen", tmp_path / "bf.zarr", folder_recipe())["train"]
    assert first["valid"][:].all() and set(first["landmark_source"][:]) == {"blazeface"}
    for i, key in enumerate(first["key"][:]):
        assert nme(source_landmarks(first, i), truth[key]) < 0.06


def test_recheck_turns_down_clutter():
    astronaut = demo_photo("astronaut.jpg")
    found = detect.detect(astronaut, 0, False, detect.search_scale(20.6), recheck=True)
    badge, score = found.boxes[1], found.scores[1]  # the mission badge on her sleeve, ranked weak (0.18 vs 1.38)
    assert found.confident == 1 and 0 < score < 0.25 * found.scores[0]
    assert not detect.confirmed(astronaut, badge, score)  # upright it scores 0.19: no more a face than before
    assert detect.faces_kept(astronaut, found, recheck=True) == found.boxes[:1]
    assert detect.confirmed(astronaut, found.boxes[0], found.scores[0] - 0.5)  # the face itself passes
    # photos without a face stay without one: noise, a flat image, and Grace Hopper with her face painted over
    hopper = demo_photo("grace_hopper.jpg")
    x0, y0, x1, y1 = (int(v) for v in detect.detect(hopper).boxes[0])
    w = x1 - x0
    hopper[max(0, y0 - w // 2):y1 + w // 2, max(0, x0 - w // 2):x1 + w // 2] = 128
    noise = np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)
    for rgb in (noise, np.full((300, 300, 3), 90, np.uint8), hopper):
        assert detect.detect(rgb, 0, False, detect.search_scale(20.6), recheck=True) is None


def test_a_killed_detection_pass_resumes_where_it_was(tmp_path, monkeypatch):
    d = tmp_path / "photos"
    for i in range(8):
        write_jpeg(d / f"{i:02d}.jpg", group_photo() if i % 3 == 0 else demo_photo("grace_hopper.jpg"))
    recipe, out = folder_recipe("all"), str(tmp_path / "f.zarr")
    whole = plan_build(get_source("folder", str(d)), recipe, str(tmp_path / "whole.zarr"), detect_threads=1)

    import proui_data.pipeline as pipeline
    real, seen = pipeline.detect_photo, []

    def dies_after_five(source, item, recipe):
        if len(seen) == 5:
            raise KeyboardInterrupt  # the user's Ctrl-C, or the machine going away
        seen.append(item.key)
        return real(source, item, recipe)

    monkeypatch.setattr(pipeline, "detect_photo", dies_after_five)
    with pytest.raises(KeyboardInterrupt):
        plan_build(get_source("folder", str(d)), recipe, out, detect_threads=1)
    recorded = zarr.open_group(out, mode="r").attrs[DETECTIONS]["train"]
    assert sorted(recorded) == seen == [f"{i:02d}.jpg" for i in range(5)]  # recorded on the way out
    problems, _ = verify_store(out)
    assert problems == ["unfinished: the build stopped in its face detection pass (5 photos searched, recorded); "
                        "run the same build command again to resume it"]

    seen.clear()
    monkeypatch.setattr(pipeline, "detect_photo", lambda *a: seen.append(a[1].key) or real(*a))
    again = plan_build(get_source("folder", str(d)), recipe, out, detect_threads=1)
    assert seen == ["05.jpg", "06.jpg", "07.jpg"]  # only the photos the killed pass had not reached
    assert again.splits == whole.splits and again.fingerprint == whole.fingerprint
    run_plan(again, workers=0, progress=False)
    assert zarr.open_group(out, mode="r")["train"]["valid"][:].all()
    # a store of another recipe is refused before any photo is searched
    seen.clear()
    with pytest.raises(StoreMismatch, match="different recipe or source"):
        plan_build(get_source("folder", str(d)), recipe.replace(seed=1), out, detect_threads=1)
    assert seen == []


def test_the_detection_pass_records_as_it_goes(tmp_path):
    """Between checkpoints a pass killed outright (SIGKILL, power) loses at most CHECKPOINT_SECONDS of work."""
    d = tmp_path / "photos"
    for i in range(4):
        write_jpeg(d / f"{i}.jpg", demo_photo("grace_hopper.jpg"))
    source = get_source("folder", str(d))
    snapshots: list[list[str]] = []
    found = detect_photos(source, source.items("train"), folder_recipe(), threads=1,
                          checkpoint=lambda f: snapshots.append(sorted(f)), every=0.0)
    assert snapshots == [["0.jpg"], ["0.jpg", "1.jpg"], ["0.jpg", "1.jpg", "2.jpg"], sorted(found)]
