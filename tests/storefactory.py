"""Small synthetic stores in exactly the store contract's layout, written with zarr directly.

Tests of the loader use these instead of running a pipeline. Every array is sharded along the sample axis
with the same shard size; rows marked `valid=False` are zero-filled like the pipeline's rejects. Each row's
content encodes its own row number, so a test can check that the data it got belongs to the `index` it got:
`landmarks[i, 0, 0] == i`, `hr[i, 0, 0] == (i % 256, i // 256, 1)`, `key[i] == f"{i:06d}.jpg"`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import ZstdCodec


def invalid_rows(n: int, shard_size: int) -> np.ndarray:
    """The rows the factory marks rejected: every 7th row, plus all of shard 1 when there are 3+ shards."""
    invalid = np.zeros(n, bool)
    invalid[3::7] = True
    if n > 2 * shard_size:
        invalid[shard_size : 2 * shard_size] = True  # a shard with no valid row at all
    return invalid


def split_arrays(n: int, shard_size: int, hr_size: int, heatmap_size: int, seed: int) -> dict[str, np.ndarray]:
    """The per-sample arrays of one split, invalid rows zero-filled."""
    rng = np.random.default_rng(seed)
    rows = np.arange(n)
    lr_size = hr_size // 8
    hr = rng.integers(0, 256, (n, hr_size, hr_size, 3), dtype=np.uint8)
    hr[:, 0, 0] = np.stack([rows % 256, rows // 256, np.ones(n, int)], axis=1)
    landmarks = rng.uniform(0, hr_size - 1, (n, 68, 2)).astype(np.float32)
    landmarks[:, 0, 0] = rows
    arrays = {
        "hr": hr,
        "lr": hr[:, ::8, ::8].copy(),
        "lr_occluded": rng.integers(0, 256, (n, lr_size, lr_size, 3), dtype=np.uint8),
        "landmarks": landmarks,
        "heatmaps": rng.integers(0, 256, (n, 68, heatmap_size, heatmap_size), dtype=np.uint8),
        "parsing": rng.integers(0, 11, (n, hr_size, hr_size), dtype=np.uint8),
        "occlusion_mask": rng.integers(0, 256, (n, hr_size, hr_size), dtype=np.uint8),
        "identity": (rows // 3).astype(np.int32),
        "key": np.array([f"{i:06d}.jpg" for i in rows]),
    }
    invalid = invalid_rows(n, shard_size)
    for name, values in arrays.items():
        if values.dtype.kind in "ui":
            values[invalid] = 0
        elif values.dtype.kind == "f":
            values[invalid] = np.nan
        else:
            values[invalid] = ""
    arrays["identity"][invalid] = -1
    arrays["valid"] = ~invalid
    arrays["reject_reason"] = np.where(invalid, "no_face", "")
    return arrays


def write_store(
    url: str | Path,
    splits: dict[str, int] | None = None,
    shard_size: int = 32,
    chunk_size: int = 16,
    hr_size: int = 32,
    heatmap_size: int = 16,
    seed: int = 0,
    storage_options: dict | None = None,
) -> str:
    """Write a store with the given {split: n_samples} at `url` (local path or fsspec URL); returns the URL.

    Sizes default small (32x32 HR, 16x16 heatmaps) so tests stay fast; the loader is shape-agnostic.
    """
    splits = splits or {"train": 300, "val": 40}
    kwargs = {"storage_options": storage_options} if storage_options else {}
    root = zarr.open_group(str(url), mode="w", zarr_format=3, **kwargs)
    root.attrs.update({
        "proui_format": 1,
        "recipe": {"name": "storefactory"},
        "source": {"name": "synthetic"},
        "versions": {"zarr": zarr.__version__},
        "template": {"size": hr_size, "points5": [[0.0, 0.0]] * 5},
        "seed": seed,
    })
    for i, (split, n) in enumerate(splits.items()):
        group = root.create_group(split)
        n_shards = -(-n // shard_size)
        group.attrs.update({"n_samples": n, "shard_size": shard_size, "n_shards": n_shards})
        for name, values in split_arrays(n, shard_size, hr_size, heatmap_size, seed + i).items():
            shape = values.shape[1:]
            is_str = values.dtype.kind == "U"
            arr = group.create_array(
                name,
                shape=values.shape,
                dtype=str if is_str else values.dtype,
                chunks=(min(chunk_size, shard_size),) + shape,
                shards=(shard_size,) + shape,
                compressors=ZstdCodec(level=1),
                fill_value="" if is_str else 0,
            )
            arr[:] = values
    return str(url)
