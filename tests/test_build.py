"""End-to-end builds on fixtures in the official formats: schema, sources, rejects, determinism, resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from proui_data import align, store
from proui_data.cli import main as cli
from proui_data.pipeline import StoreMismatch, plan_build, summarize
from proui_data.recipe import load_recipe
from proui_data.runner import run_plan
from proui_data.sources import get_source
from proui_data.verify import verify_store

from fixtures import CELEBA_ATTRS, demo_photo, kill_when_finished, make_celeba_root, make_helen_root, write_jpeg


def build(source: str, out: Path, root: Path | None = None, workers: int = 0, **kw):
    recipe = load_recipe(kw.pop("recipe", None), source)
    if "shard_size" in kw:
        size = kw.pop("shard_size")
        recipe = recipe.replace(store=recipe.store.__class__(shard_size=size, chunk_size=size))
    plan = plan_build(get_source(source, str(root) if root else None), recipe, str(out), **kw)
    run_plan(plan, workers=workers, progress=False)
    return zarr.open_group(str(out), mode="r")


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return {f"{s}/{a}": root[s][a][:] for s in store.splits_of(root) for a in root[s].array_keys()}


def assert_same_store(a: Path, b: Path) -> None:
    xa, xb = arrays_of(a), arrays_of(b)
    assert xa.keys() == xb.keys()
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)


def test_demo_build_schema_round_trip(tmp_path):
    out = tmp_path / "demo.zarr"
    root = build("demo", out)
    assert root.attrs["proui_format"] == 1
    assert root.attrs["recipe"]["source"] == "demo"
    assert root.attrs["template"]["points5"] == align.TEMPLATE_5.tolist()
    assert "zarr" in root.attrs["versions"] and root.attrs["seed"] == 0
    assert set(store.splits_of(root)) == {"train", "val"}
    tr = root["train"]
    n = tr.attrs["n_samples"]
    assert n == 6
    expect = {"hr": ((n, 128, 128, 3), "uint8"), "lr": ((n, 16, 16, 3), "uint8"),
              "landmarks": ((n, 68, 2), "float32"), "transform": ((n, 2, 3), "float32"),
              "valid": ((n,), "bool"), "identity": ((n,), "int32")}
    for name, (shape, dtype) in expect.items():
        assert tr[name].shape == shape and str(tr[name].dtype) == dtype, name
        assert tr[name].metadata.dimension_names[0] == "sample"
    assert tr["hr"].shards[0] == tr.attrs["shard_size"]
    assert tr["valid"][:].all()
    assert list(tr["key"][:]) == ["astronaut.jpg#original", "astronaut.jpg#mirror", "astronaut.jpg#rotate12",
                                  "grace_hopper.jpg#original", "grace_hopper.jpg#mirror", "grace_hopper.jpg#rotate12"]
    # landmarks land on the template, and the stored transform maps source landmarks to them
    lm = tr["landmarks"][:]
    eyes = np.stack([lm[:, 36:42].mean(1), lm[:, 42:48].mean(1)], 1)
    assert np.abs(eyes - align.TEMPLATE_5[:2]).max() < 4.0
    # LR is the exact 8x box average of HR
    hr, lr = tr["hr"][:].astype(np.float64), tr["lr"][:].astype(np.int64)
    box = hr.reshape(n, 16, 8, 16, 8, 3).mean((2, 4))
    assert np.abs(box - lr).max() <= 0.5 + 1e-9
    problems, _ = verify_store(str(out))
    assert problems == []


def test_transform_maps_source_pixels_to_hr(tmp_path):
    truth = make_celeba_root(tmp_path / "celeba", n=4)
    root = build("celeba", tmp_path / "c.zarr", tmp_path / "celeba", split="train")
    g = root["train"]
    for i, key in enumerate(g["key"][:]):
        m = g["transform"][i].astype(np.float64)
        mapped = align.apply_transform(m, truth[key])
        # the stored landmarks come from dlib on the source; they agree with the fixture's to a few pixels
        assert np.median(np.linalg.norm(mapped - g["landmarks"][i], axis=1)) < 3.0


def test_celeba_source_official_layout(tmp_path):
    make_celeba_root(tmp_path / "celeba", n=12, truncate_attrs=8, partition_rows=11)
    src = get_source("celeba", str(tmp_path / "celeba"))
    assert src.splits() == ["train", "val", "test"]
    assert src.attribute_names == tuple(CELEBA_ATTRS)
    assert src.unassigned() == 1  # the 12th image has no partition row
    train = src.items("train")
    assert [it.key for it in train] == ["000001.jpg", "000002.jpg", "000005.jpg", "000006.jpg", "000009.jpg", "000010.jpg"]
    assert train[0].identity == 100 and train[1].identity == 101
    assert train[0].landmarks.shape == (5, 2)
    assert train[-1].attributes is None  # row 10 is beyond the truncated attribute file
    root = build("celeba", tmp_path / "c.zarr", tmp_path / "celeba")
    g = root["train"]
    assert g["attributes"].shape == (6, 3)
    np.testing.assert_array_equal(g["attributes"][5], [0, 0, 0])
    assert set(np.unique(g["attributes"][:4])) <= {-1, 1}
    assert list(g["landmark_source"][:]) == ["annotation5+dlib"] * 6
    assert g["valid"][:].all()
    assert summarize(str(tmp_path / "c.zarr"))["test"]["samples"] == 2
    assert verify_store(str(tmp_path / "c.zarr"))[0] == []


def test_celeba_without_landmark_file_uses_detector(tmp_path):
    make_celeba_root(tmp_path / "celeba", n=4, with_landmarks=False)
    root = build("celeba", tmp_path / "c.zarr", tmp_path / "celeba", split="train")
    assert all(str(s).startswith(("dlib-", "opencv-")) for s in root["train"]["landmark_source"][:])
    assert verify_store(str(tmp_path / "c.zarr"))[0] == []


def test_celeba_malformed_row_names_file_and_line(tmp_path):
    make_celeba_root(tmp_path / "celeba", n=4)
    p = tmp_path / "celeba" / "Anno" / "list_landmarks_align_celeba.txt"
    lines = p.read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0]
    p.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(cli, ["build", "--source", "celeba", "--root", str(tmp_path / "celeba"),
                                      "--out", str(tmp_path / "x.zarr"), "--workers", "0", "--no-progress"])
    assert result.exit_code == 2
    assert "list_landmarks_align_celeba.txt:4" in result.output


def test_helen_300w_layout(tmp_path):
    truth = make_helen_root(tmp_path / "helen", n_train=3, n_test=2)
    src = get_source("helen", str(tmp_path / "helen"))
    assert src.splits() == ["train", "test"]
    items = src.items("train")
    assert items[0].key == "trainset/1000_1.jpg" and items[0].labels.endswith("labels/1000_1")
    np.testing.assert_allclose(items[0].landmarks, truth["trainset/1000_1.jpg"], atol=1e-3)
    root = build("helen", tmp_path / "h.zarr", tmp_path / "helen")
    g = root["train"]
    assert list(g["landmark_source"][:]) == ["annotation"] * 3
    # annotated landmarks are mapped exactly through the stored transform
    m = g["transform"][0].astype(np.float64)
    np.testing.assert_allclose(align.apply_transform(m, truth["trainset/1000_1.jpg"]), g["landmarks"][0], atol=1e-3)
    assert verify_store(str(tmp_path / "h.zarr"))[0] == []


def test_helen_bad_pts_is_a_clear_error(tmp_path):
    make_helen_root(tmp_path / "helen", n_train=1, n_test=0, labels=False)
    (tmp_path / "helen" / "trainset" / "1000_1.pts").write_text("version: 1\nn_points: 68\n{\n1 2\n}\n")
    with pytest.raises(ValueError, match="1000_1.pts"):
        get_source("helen", str(tmp_path / "helen")).items("train")


def test_wrong_layout_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["build", "--source", "celeba", "--root", str(tmp_path / "empty"),
                                      "--out", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "img_align_celeba" in result.output


def test_folder_rejects_bad_files_with_reasons(tmp_path):
    d = tmp_path / "photos"
    write_jpeg(d / "a_face.jpg", demo_photo("astronaut.jpg"))
    write_jpeg(d / "sub" / "b_face.jpg", demo_photo("grace_hopper.jpg"))
    write_jpeg(d / "c_noface.jpg", np.full((200, 200, 3), 90, np.uint8))
    (d / "d_corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    good = (d / "a_face.jpg").read_bytes()
    (d / "e_truncated.jpg").write_bytes(good[: len(good) // 3])
    (d / "f_empty.png").write_bytes(b"")
    root = build("folder", tmp_path / "f.zarr", d)
    g = root["train"]
    got = dict(zip(g["key"][:], g["reject_reason"][:]))
    assert got == {"a_face.jpg": "", "c_noface.jpg": "no_face", "d_corrupt.jpg": "decode:corrupt",
                   "e_truncated.jpg": "decode:truncated", "f_empty.png": "decode:empty_file", "sub/b_face.jpg": ""}
    valid = g["valid"][:]
    assert valid.sum() == 2
    assert (g["hr"][:][~valid] == 0).all() and np.isnan(g["landmarks"][:][~valid]).all()
    assert verify_store(str(tmp_path / "f.zarr"))[0] == []
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "f.zarr")])
    assert "rejected no_face: 1" in result.output and "rejected decode:truncated: 1" in result.output


def test_hf_source_reads_a_local_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    imgs = [demo_photo("astronaut.jpg"), demo_photo("grace_hopper.jpg")]
    from PIL import Image

    ds = datasets.Dataset.from_dict({"image": [Image.fromarray(i) for i in imgs], "key": ["a.png", "b.png"]},
                                    features=datasets.Features({"image": datasets.Image(), "key": datasets.Value("string")}))
    datasets.DatasetDict({"train": ds.select([0]), "validation": ds.select([1])}).save_to_disk(str(tmp_path / "hfds"))
    src = get_source("hf", hf_name=str(tmp_path / "hfds"))
    assert src.splits() == ["train", "val"]
    plan = plan_build(src, load_recipe(None, "hf"), str(tmp_path / "hf.zarr"))
    run_plan(plan, workers=0, progress=False)
    g = zarr.open_group(str(tmp_path / "hf.zarr"), mode="r")
    assert list(g["train"]["key"][:]) == ["a.png"] and list(g["val"]["key"][:]) == ["b.png"]
    assert g["train"]["valid"][0] and g["val"]["valid"][0]


def test_hf_source_offline_hub_id_fails_clearly(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="Hugging Face dataset 'someone/no-such-faces'"):
        get_source("hf", hf_name="someone/no-such-faces")


def test_workers_1_and_2_give_identical_stores(tmp_path):
    make_celeba_root(tmp_path / "celeba", n=12, with_landmarks=False)
    build("celeba", tmp_path / "w1.zarr", tmp_path / "celeba", workers=1, shard_size=2)
    build("celeba", tmp_path / "w2.zarr", tmp_path / "celeba", workers=2, shard_size=2)
    build("celeba", tmp_path / "w0.zarr", tmp_path / "celeba", workers=0, shard_size=2)
    assert_same_store(tmp_path / "w1.zarr", tmp_path / "w2.zarr")
    assert_same_store(tmp_path / "w0.zarr", tmp_path / "w2.zarr")


def test_resume_after_sigkill_gives_the_same_store(tmp_path):
    make_celeba_root(tmp_path / "celeba", n=48, with_landmarks=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[store]\nshard_size = 2\nchunk_size = 2\n[detect]\nupsample = 1\n')
    cmd = [sys.executable, "-m", "proui_data.cli", "build", "--source", "celeba", "--root", str(tmp_path / "celeba"),
           "--recipe", str(recipe), "--workers", "0", "--no-progress"]
    subprocess.run(cmd + ["--out", str(tmp_path / "clean.zarr")], check=True, capture_output=True)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(cmd + ["--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_finished(out, 3, lambda: proc.poll() is None, lambda: os.kill(proc.pid, signal.SIGKILL))
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    g = zarr.open_group(str(out), mode="r")
    total = sum(g[s]["_shard_done"].shape[0] for s in store.splits_of(g))
    done_now = sum(int(store.finished_shards(g[s]).sum()) for s in store.splits_of(g))
    assert 3 <= done_now < total
    assert verify_store(str(out))[0]  # verify reports the unfinished shards
    rerun = subprocess.run(cmd + ["--out", str(out)], check=True, capture_output=True, text=True)
    assert f"{done_now} already finished" in rerun.stdout
    assert verify_store(str(out))[0] == []
    assert_same_store(tmp_path / "clean.zarr", out)


def test_other_recipe_needs_overwrite(tmp_path):
    out = tmp_path / "d.zarr"
    build("demo", out)
    recipe = load_recipe(None, "demo").replace(seed=7)
    with pytest.raises(StoreMismatch, match="--overwrite"):
        plan_build(get_source("demo"), recipe, str(out))
    plan = plan_build(get_source("demo"), recipe, str(out), overwrite=True)
    assert plan.skipped == 0
    run_plan(plan, workers=0, progress=False)
    assert zarr.open_group(str(out), mode="r").attrs["seed"] == 7
    # an unchanged command on a finished store writes nothing
    again = plan_build(get_source("demo"), recipe, str(out))
    assert again.todo == [] and again.skipped == 3


def test_verify_detects_a_damaged_shard(tmp_path):
    out = tmp_path / "d.zarr"
    build("demo", out)
    shard = out / "train" / "hr" / "c" / "0" / "0" / "0" / "0"
    assert shard.is_file()
    shard.write_bytes(shard.read_bytes()[:100])
    result = CliRunner().invoke(cli, ["verify", str(out)])
    assert result.exit_code == 1
    assert "train/hr shard 0" in result.output


def test_cli_build_info_preview(tmp_path):
    out = tmp_path / "demo.zarr"
    r = CliRunner().invoke(cli, ["build", "--source", "demo", "--out", str(out), "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "wrote 8 samples (8 valid)" in r.output and "samples/s" in r.output
    r = CliRunner().invoke(cli, ["info", str(out)])
    assert r.exit_code == 0 and "[train] 6/6 valid" in r.output and "hr" in r.output
    png = tmp_path / "grid.png"
    r = CliRunner().invoke(cli, ["preview", str(out), "--out", str(png), "--n", "4"])
    assert r.exit_code == 0 and png.stat().st_size > 10_000


def test_celeba_source_pickles_without_its_tables(tmp_path):
    import pickle

    from fixtures import make_celeba_root
    from proui_data.sources import get_source

    make_celeba_root(tmp_path / "celeba", 12)
    source = get_source("celeba", root=str(tmp_path / "celeba"))
    items = list(source.items("train"))
    assert source._cache is not None
    shipped = pickle.loads(pickle.dumps(source))
    assert shipped._cache is None and len(pickle.dumps(source)) < 4096
    assert [i.key for i in shipped.items("train")] == [i.key for i in items]  # rebuilt on demand
    assert source._cache is not None  # the driver's copy keeps its tables
