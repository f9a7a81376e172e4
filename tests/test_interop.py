"""The store from other tools: `datasets` (to_hf_dataset, load_dataset on a published folder), plain zarr and
xarray without proui, and the round trip through `--source hf`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr
from click.testing import CliRunner

from proui_data import interop
from proui_data.publish import publish
from storefactory import write_store

IMAGES = ("hr", "lr", "lr_occluded", "parsing", "occlusion_mask")




@pytest.fixture(scope="module")
def published(demo_store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("published") / "repo"
    publish(demo_store, "org/faces", dry_run=out, with_heatmaps=True)
    return out


@pytest.fixture
def datasets_cache(tmp_path, monkeypatch) -> str:
    import datasets

    cache = str(tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", Path(cache))
    return cache


def assert_rows_match_store(ds, group) -> None:
    """Every row of a datasets split equals the store's valid rows, in order."""
    idx = np.flatnonzero(group["valid"][:])
    assert len(ds) == idx.size > 0
    assert ds["key"] == [str(k) for k in group["key"][:][idx]]
    for j, i in enumerate(idx):
        row = ds[j]
        for name in IMAGES:
            np.testing.assert_array_equal(np.asarray(row[name]), group[name][i], err_msg=f"{name} of row {j}")
        np.testing.assert_array_equal(np.asarray(row["landmarks"], np.float32), group["landmarks"][i])
        np.testing.assert_array_equal(np.asarray(row["transform"], np.float32), group["transform"][i])
        if "heatmaps" in row:
            np.testing.assert_array_equal(np.asarray(row["heatmaps"], np.uint8), group["heatmaps"][i])
        assert row["occlusion_kind"] == str(group["occlusion_kind"][i])
        assert row["occlusion_ratio"] == pytest.approx(float(group["occlusion_ratio"][i]))
    assert ds.features["parsing"].__class__.__name__ == "Image"


def test_to_hf_dataset_matches_store_and_export(demo_store, published, datasets_cache):
    root = zarr.open_group(demo_store, mode="r")
    for split in ("train", "validation"):
        ds = interop.to_hf_dataset(demo_store, split, with_heatmaps=True, cache_dir=datasets_cache)
        assert str(ds.split) == split
        assert_rows_match_store(ds, root[interop.store_split(root, split)])
        exported = sorted((published / "data" / "demo").glob(f"{split}-*.parquet"))
        import datasets

        assert ds.features == datasets.Features.from_arrow_schema(pq.read_schema(exported[0]))
    with pytest.raises(ValueError, match="not in the store"):
        interop.to_hf_dataset(demo_store, "test", cache_dir=datasets_cache)


def test_to_hf_dataset_is_exported_lazily():
    code = ("import sys, proui_data; assert 'proui_data.interop' not in sys.modules; "
            "f = proui_data.to_hf_dataset; assert 'proui_data.interop' in sys.modules; print(f.__module__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "proui_data.interop"


def test_to_hf_dataset_reads_shard_by_shard(tmp_path, datasets_cache):
    url = write_store(tmp_path / "s.zarr", {"train": 100}, shard_size=32)
    group = zarr.open_group(url, mode="r")["train"]
    columns = interop.export_columns(group)
    blocks = list(interop.iter_blocks(group, columns))
    valid = group["valid"][:]
    # One block per shard that has a valid row (shard 1 is all rejected), never more than a shard.
    assert [len(b["key"]) for b in blocks] == [int(valid[k:k + 32].sum()) for k in (0, 64, 96)]
    ds = interop.to_hf_dataset(url, "train", cache_dir=datasets_cache)
    assert ds["key"] == [str(k) for k in group["key"][:][valid]]
    every = interop.to_hf_dataset(url, "train", include_rejected=True, cache_dir=datasets_cache)
    assert every["valid"] == valid.tolist() and every["reject_reason"].count("no_face") == int((~valid).sum())
    # A rewritten shard is not served from the datasets cache.
    writable = zarr.open_group(url, mode="r+")["train"]
    writable["hr"][0:32] = 7
    again = interop.to_hf_dataset(url, "train", cache_dir=datasets_cache)
    assert (np.asarray(again[0]["hr"]) == 7).all() and not (np.asarray(ds[0]["hr"]) == 7).all()


def test_load_dataset_on_published_folder(demo_store, published, datasets_cache):
    import datasets

    root = zarr.open_group(demo_store, mode="r")
    for kwargs in ({}, {"name": "demo"}):
        dd = datasets.load_dataset(str(published), cache_dir=datasets_cache, **kwargs)
        assert set(dd) == {"train", "validation"}
        assert_rows_match_store(dd["train"], root["train"])
        assert_rows_match_store(dd["validation"], root["val"])
    with pytest.raises(ValueError):
        datasets.load_dataset(str(published), name="nope", cache_dir=datasets_cache)


PLAIN_READER = r"""
import json, sys
import numpy as np, zarr, xarray as xr
url = sys.argv[1]
g = zarr.open_group(url, mode="r")["train"]
out = {"zarr": {"hr": int(g["hr"][:].astype(np.int64).sum()), "keys": [str(k) for k in g["key"][:]],
                "dims": list(g["hr"].metadata.dimension_names)}}
try:
    ds = xr.open_zarr(url, group="train", consolidated=False)
    out["xarray"] = {"hr": int(ds["hr"].values.astype(np.int64).sum()), "keys": [str(k) for k in ds["key"].values],
                     "dims": list(ds["hr"].dims), "heatmaps": list(ds["heatmaps"].dims),
                     "kind": [str(k) for k in ds["occlusion_kind"].values]}
except Exception as e:
    out["xarray_error"] = f"{type(e).__name__}: {e}"
out["proui_imported"] = any(m.startswith("proui") for m in sys.modules)
print(json.dumps(out))
"""


def read_without_proui(url: str) -> dict:
    r = subprocess.run([sys.executable, "-c", PLAIN_READER, url], capture_output=True, text=True, timeout=120,
                       cwd="/")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_plain_zarr_and_xarray_read_the_store(demo_store, tmp_path):

    g = zarr.open_group(demo_store, mode="r")["train"]
    expected = {"hr": int(g["hr"][:].astype(np.int64).sum()), "keys": [str(k) for k in g["key"][:]]}
    got = read_without_proui(demo_store)
    assert not got["proui_imported"]
    assert got["zarr"] == {**expected, "dims": ["sample", "y", "x", "rgb"]}
    assert "xarray_error" not in got, got.get("xarray_error")
    assert got["xarray"]["hr"] == expected["hr"] and got["xarray"]["keys"] == expected["keys"]
    assert got["xarray"]["dims"] == ["sample", "y", "x", "rgb"]
    assert got["xarray"]["heatmaps"] == ["sample", "point", "y_hm", "x_hm"]
    assert got["xarray"]["kind"] == [str(k) for k in g["occlusion_kind"][:]]


def test_hf_source_rebuilds_the_published_store(demo_store, published, tmp_path, datasets_cache):
    from proui_data.cli import main

    out = str(tmp_path / "rebuilt.zarr")
    r = CliRunner().invoke(main, ["build", "--source", "hf", "--name", str(published), "--out", out,
                                  "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    a, b = zarr.open_group(demo_store, mode="r"), zarr.open_group(out, mode="r")
    assert b.attrs["source"]["name"] == "hf"
    for split in ("train", "val"):
        ga, gb = a[split], b[split]
        valid = ga["valid"][:]
        assert [str(k) for k in gb["key"][:]] == [str(k) for k in ga["key"][:][valid]]
        assert gb["valid"][:].all()
        assert set(str(s) for s in gb["landmark_source"][:]) == {"annotation"}
        # The exported hr is aligned already and its landmarks are in its own pixels: the rebuild's
        # similarity transform is the identity and hr comes back (almost) exactly.
        np.testing.assert_allclose(gb["transform"][:], np.tile([[1, 0, 0], [0, 1, 0]], (int(valid.sum()), 1, 1)),
                                   atol=1e-3)
        diff = np.abs(gb["hr"][:].astype(int) - ga["hr"][:][valid].astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 8
        np.testing.assert_allclose(gb["landmarks"][:], ga["landmarks"][:][valid], atol=1e-2)
        assert gb["identity"][:].tolist() == ga["identity"][:][valid].tolist()


def test_celeba_subset_round_trip(shared_data, tmp_path, datasets_cache):
    """Build a CelebA subset -> publish --dry-run -> load_dataset gives the same pixels, landmarks and masks
    -> `--source hf` rebuilds the same faces."""
    import datasets

    from proui_data.cli import main

    store = str(tmp_path / "celeba.zarr")
    r = CliRunner().invoke(main, ["build", "--source", "celeba", "--root", str(shared_data / "celeba"), "--split",
                                  "train", "--limit", "24", "--out", store, "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    repo = tmp_path / "repo"
    r = CliRunner().invoke(main, ["publish", store, "--repo", "org/celeba-faces", "--dry-run", str(repo)])
    assert r.exit_code == 0, r.output
    ds = datasets.load_dataset(str(repo), split="train", cache_dir=datasets_cache)
    group = zarr.open_group(store, mode="r")["train"]
    assert_rows_match_store(ds, group)
    out = str(tmp_path / "rebuilt.zarr")
    r = CliRunner().invoke(main, ["build", "--source", "hf", "--name", str(repo), "--out", out, "--workers", "0",
                                  "--no-progress"])
    assert r.exit_code == 0, r.output
    rebuilt = zarr.open_group(out, mode="r")["train"]
    valid = group["valid"][:]
    assert [str(k) for k in rebuilt["key"][:]] == [str(k) for k in group["key"][:][valid]]
    diff = np.abs(rebuilt["hr"][:].astype(int) - group["hr"][:][valid].astype(int))
    assert diff.mean() < 0.5 and diff.max() <= 8
    assert rebuilt["identity"][:].tolist() == group["identity"][:][valid].tolist()
