"""The hf source reads an image cell's `path` only inside the dataset."""
from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from fixtures import demo_photo, write_jpeg

datasets = pytest.importorskip("datasets")


@pytest.fixture
def path_dataset(tmp_path, monkeypatch):
    """A local data folder whose parquet rows name their image by path: two inside the folder (absolute and
    relative), three leading out of it to a real face photo (absolute, `..`, a link in the folder)."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    folder = tmp_path / "faces"
    write_jpeg(folder / "img" / "inside.jpg", demo_photo("astronaut.jpg"))
    write_jpeg(tmp_path / "outside.jpg", demo_photo("grace_hopper.jpg"))
    (folder / "img" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    cells = {"inside": str(folder / "img" / "inside.jpg"), "relative": "img/inside.jpg",
             "absolute_out": str(tmp_path / "outside.jpg"), "dotdot": "../outside.jpg",
             "link_out": str(folder / "img" / "link.jpg")}
    features = datasets.Features({"image": datasets.Image(), "key": datasets.Value("string")})
    rows = {"image": [{"bytes": None, "path": p} for p in cells.values()], "key": list(cells)}
    pq.write_table(pa.Table.from_pydict(rows, schema=features.arrow_schema), folder / "train.parquet")
    return folder


def test_paths_outside_the_dataset_are_not_read(path_dataset):
    from proui_data.sources import get_source
    from proui_data.sources.hf import PathOutsideDataset

    src = get_source("hf", hf_name=str(path_dataset))
    items = {it.key: it for it in src.items("train")}
    inside = (path_dataset / "img" / "inside.jpg").read_bytes()
    assert src.read(items["inside"]) == src.read(items["relative"]) == inside
    for key in ("absolute_out", "dotdot", "link_out"):
        with pytest.raises(PathOutsideDataset, match=f"sample '{key}': image path .* leads outside the dataset"):
            src.read(items[key])


def test_a_build_rejects_the_rows_that_lead_outside(path_dataset, tmp_path):
    from proui_data.pipeline import plan_build
    from proui_data.recipe import load_recipe
    from proui_data.runner import run_plan
    from proui_data.sources import get_source

    out = str(tmp_path / "s.zarr")
    run_plan(plan_build(get_source("hf", hf_name=str(path_dataset)), load_recipe(None, "hf"), out),
             workers=0, progress=False)
    g = zarr.open_group(out, mode="r")["train"]
    assert dict(zip(g["key"][:], g["reject_reason"][:])) == {
        "inside": "", "relative": "", "absolute_out": "read_error:PathOutsideDataset",
        "dotdot": "read_error:PathOutsideDataset", "link_out": "read_error:PathOutsideDataset"}


def test_hub_dataset_folders_are_its_cache_and_downloads(monkeypatch, tmp_path):
    from huggingface_hub import constants

    from proui_data.sources.hf import dataset_folders

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "ds")
    assert dataset_folders("org/faces") == (os.path.realpath(tmp_path / "hub" / "datasets--org--faces"),
                                            os.path.realpath(tmp_path / "ds" / "downloads"))
