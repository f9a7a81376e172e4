"""Sharded zarr v3 store I/O: create the layout, write whole shards, track finished shards.

The I/O boundary of the build. A shard is the unit of work: the task that owns shard k writes rows
[k*S, (k+1)*S) of every array in one call each (a full-shard write is one object per array), then sets
`_shard_done[k]`, an unsharded one-element-per-chunk array, so no two tasks ever touch the same object
(partial concurrent writes into one shard lose data: zarr-python issue 3682). A killed build leaves
shards that are either finished and marked or not marked; a rerun rewrites the unmarked ones.
"""
from __future__ import annotations

import importlib.metadata as md
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from . import __version__
from .schema import FORMAT_VERSION, SPLITS, Field

DONE = "_shard_done"
# Root attribute holding the detection pass of a detect.faces = "all" build: split -> photo key -> {"stage": the
# chain stage that found the boxes, "boxes": HOG-framed boxes in decoded-image pixels, largest first ([]: no
# face)}, or null for a photo that did not decode (its row says why). A resumed build expands from it; the pass
# records into it as it goes, before the store has a fingerprint.
DETECTIONS = "face_detections"


def open_root(url: str, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """Open the store's root group (local path or fsspec URL)."""
    return zarr.open_group(url, mode=mode, zarr_format=3, storage_options=storage_options)


def create_split(
    root: zarr.Group, split: str, n: int, fields: list[Field], shard_size: int, chunk_size: int, level: int
) -> zarr.Group:
    """Create (or complete, when a killed run left it half made) a split group and its arrays."""
    group = root.require_group(split)
    n_shards = max(1, -(-n // shard_size))
    group.attrs.update({"n_samples": n, "shard_size": shard_size, "n_shards": n_shards})
    existing = set(group.array_keys())
    for f in fields:
        if f.name in existing:
            arr = group[f.name]
            if arr.shape != (n,) + f.shape:
                raise RuntimeError(f"{split}/{f.name} has shape {arr.shape}, expected {(n,) + f.shape}")
            continue
        dtype = str if f.dtype == "str" else f.dtype
        fill = f.fill
        group.create_array(
            f.name,
            shape=(n,) + f.shape,
            dtype=dtype,
            chunks=(min(chunk_size, shard_size),) + f.shape,
            shards=(shard_size,) + f.shape,
            compressors=ZstdCodec(level=level),
            fill_value=fill,
            dimension_names=("sample",) + f.dims,
            attributes={"doc": f.doc} if f.doc else {},
        )
    if DONE not in existing:
        group.create_array(DONE, shape=(n_shards,), dtype="uint8", chunks=(1,), fill_value=0,
                           compressors=None, dimension_names=("shard",))
    return group


# store.shard_size = "auto": about AUTO_SHARDS shards per split, so that a small build still gives every worker
# several tasks (and a killed one loses little); a function of the sample count only, so a store's layout is
# fixed by its sample list (resume, determinism), whatever the number of workers. A shard costs ~55 CPU-ms
# beyond its rows (zarr's per-array write of the 19 arrays of a folder build): AUTO_MIN keeps that under ~10 % of
# a shard's work (~19 ms per face), where the 13-sample shards of a 200-photo folder spent ~20 %.
AUTO_SHARDS = 16
AUTO_MIN, AUTO_MAX = 32, 256


def auto_layout(n: int, chunk_size: int) -> tuple[int, int]:
    """(shard_size, chunk_size) for a split of `n` samples under `shard_size = "auto"`."""
    size = min(AUTO_MAX, max(AUTO_MIN, -(-n // AUTO_SHARDS)))
    if size < chunk_size:
        return size, size  # a chunk must divide its shard: one chunk per shard
    return -(-size // chunk_size) * chunk_size, chunk_size


def shard_range(k: int, shard_size: int, n: int) -> tuple[int, int]:
    return k * shard_size, min((k + 1) * shard_size, n)


def finished_shards(group: zarr.Group) -> np.ndarray:
    """Boolean (n_shards,) of shards that were written completely."""
    return group[DONE][:].astype(bool)


def write_shard(group: zarr.Group, fields: list[Field], k: int, rows: dict[str, np.ndarray]) -> None:
    """Write shard k of every field, then mark it finished (the mark goes last)."""
    shard_size, n = group.attrs["shard_size"], group.attrs["n_samples"]
    start, stop = shard_range(k, shard_size, n)
    for f in fields:
        block = rows[f.name]
        if block.shape[0] != stop - start:
            raise ValueError(f"shard {k} of {f.name}: {block.shape[0]} rows, expected {stop - start}")
        group[f.name][start:stop] = block
    group[DONE][k] = 1


def splits_of(root: zarr.Group) -> list[str]:
    return [s for s in SPLITS if s in root.group_keys()] + sorted(s for s in root.group_keys() if s not in SPLITS)


def root_attributes(recipe: dict, source: dict, seed: int, fingerprint: str, template: dict) -> dict[str, Any]:
    versions = {"proui": __version__}
    for pkg in ("zarr", "numpy", "dask", "distributed", "opencv-python-headless", "pillow", "dlib-bin", "torch"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return {
        "proui_format": FORMAT_VERSION,
        "recipe": recipe,
        "source": source,
        "seed": seed,
        "versions": versions,
        "template": template,
        "fingerprint": fingerprint,
    }
