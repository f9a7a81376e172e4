"""The store as a Hugging Face `datasets` table: features, row encoding and `to_hf_dataset`.

One schema serves the parquet export (`proui-data publish`) and `to_hf_dataset`, so a published
dataset and one built in memory from the store have the same columns and the same bytes:
images (`hr`, `lr`, `lr_occluded`, and `parsing` / `occlusion_mask` as single-channel images) are
PNG-encoded `datasets.Image` cells, `landmarks` and `transform` are `Array2D`, heatmaps (optional,
they can be rendered from the landmarks) `Array3D`. Reading goes store shard by store shard, so
memory stays bounded by one shard whatever the split size. `datasets` is imported on use.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from . import store

# Store split name -> Hub split name (the Hub's convention is `validation`).
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
IMAGE_COLUMNS = ("hr", "lr", "lr_occluded", "parsing", "occlusion_mask")
STRING_COLUMNS = ("key", "reject_reason", "landmark_source", "parsing_source", "occlusion_kind", "occlusion_anchor")
# Export order; `hr` is the first image column, the one `--source hf` aligns.
COLUMN_ORDER = ("key", "hr", "lr", "lr_occluded", "landmarks", "transform", "parsing", "occlusion_mask", "heatmaps",
                "identity", "valid", "reject_reason", "landmark_source", "parsing_source", "occlusion_kind",
                "occlusion_anchor", "occlusion_ratio", "occlusion_variant", "attributes")
COLUMN_DOCS = {
    "key": "source-relative file name of the sample",
    "hr": "aligned face, RGB (PNG)",
    "lr": "8x antialiased downsample of hr, RGB (PNG)",
    "lr_occluded": "occluded LR input, RGB (PNG)",
    "landmarks": "iBUG 300-W 68 points (x, y) in hr pixels, pixel centres at integer coordinates",
    "transform": "2x3 affine map from source-image pixels to hr pixels",
    "parsing": "11 Helen face classes per hr pixel (single-channel PNG, values 0..10)",
    "occlusion_mask": "occluder alpha per hr pixel, 255 = fully occluded (single-channel PNG)",
    "heatmaps": "68 Gaussian landmark heatmaps, peak 255",
    "identity": "identity label, -1 unknown",
    "valid": "False: rejected by the build (only with --include-rejected)",
    "reject_reason": "why the build rejected the sample, empty when valid",
    "landmark_source": "where the 68 points came from (annotation, dlib-hog, ...)",
    "parsing_source": "where the parsing map came from",
    "occlusion_kind": "synthetic occluder kind",
    "occlusion_anchor": "face region the occluder was placed on",
    "occlusion_ratio": "achieved occluded share of the face region",
    "occlusion_variant": "k of the K occlusion variants of the same face (rows with the same key)",
    "attributes": "binary attributes, +1 / -1, 0 unknown (names in the card)",
}


def hub_split(split: str) -> str:
    return HUB_SPLITS.get(split, split)


def store_split(root, split: str) -> str:
    """The store group for a store or Hub split name (`validation` -> `val`)."""
    names = store.splits_of(root)
    if split in names:
        return split
    for s, h in HUB_SPLITS.items():
        if h == split and s in names:
            return s
    raise ValueError(f"split {split!r} not in the store (it has {', '.join(names) or 'none'})")


def export_columns(group, with_heatmaps: bool = False, include_rejected: bool = False) -> list[str]:
    """The store arrays a split exports, in export order."""
    have = set(group.array_keys())
    if "hr" not in have or "key" not in have or "valid" not in have:
        raise ValueError(f"{group.path}: not a proui split group (needs hr, key and valid arrays)")
    skip = set()
    if not with_heatmaps:
        skip.add("heatmaps")
    if not include_rejected:
        skip.add("reject_reason")
    return [c for c in COLUMN_ORDER if c in have and c not in skip]


def features_for(group, columns: list[str]):
    """`datasets.Features` of the exported columns of a split group."""
    import datasets

    out = {}
    for name in columns:
        arr = group[name]
        shape = tuple(arr.shape[1:])
        if name in IMAGE_COLUMNS:
            out[name] = datasets.Image()
        elif name in STRING_COLUMNS:
            out[name] = datasets.Value("string")
        elif len(shape) == 2:
            out[name] = datasets.Array2D(shape, str(arr.dtype))
        elif len(shape) == 3:
            out[name] = datasets.Array3D(shape, str(arr.dtype))
        elif len(shape) == 1:
            out[name] = datasets.List(datasets.Value(str(arr.dtype)), length=shape[0])
        elif len(shape) == 0:
            out[name] = datasets.Value(str(arr.dtype))
        else:
            raise ValueError(f"{name}: no datasets feature for per-sample shape {shape}")
    return datasets.Features(out)


def encode_png(img: np.ndarray, level: int = 6) -> bytes:
    """Lossless PNG of an RGB (H, W, 3) or single-channel (H, W) uint8 image."""
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise ValueError(f"PNG encoding failed for an image of shape {img.shape}")
    return buf.tobytes()


def iter_blocks(group, columns: list[str], include_rejected: bool = False) -> Iterator[dict[str, np.ndarray]]:
    """Per store shard, the exported rows of `columns` (valid rows only unless `include_rejected`).

    Each array is read one whole shard at a time (one object per array), so memory is one shard.
    """
    n, shard_size = int(group.attrs["n_samples"]), int(group.attrs["shard_size"])
    n_shards = max(1, -(-n // shard_size))
    for k in range(n_shards):
        start, stop = store.shard_range(k, shard_size, n)
        if stop <= start:
            continue
        keep = np.ones(stop - start, bool) if include_rejected else group["valid"][start:stop].astype(bool)
        if not keep.any():
            continue
        block = {}
        for name in columns:
            values = group[name][start:stop]
            if name in STRING_COLUMNS:
                values = np.asarray(values, dtype=object)
            block[name] = values if keep.all() else values[keep]
        yield block


def encode_block(block: dict[str, np.ndarray], png_level: int = 6) -> dict[str, list]:
    """Column-wise cells of a block: PNG dicts for images, numpy rows for arrays, python scalars."""
    out: dict[str, list] = {}
    for name, values in block.items():
        if name in IMAGE_COLUMNS:
            out[name] = [{"bytes": encode_png(v, png_level), "path": None} for v in values]
        elif name in STRING_COLUMNS:
            out[name] = [str(v) for v in values]
        elif values.ndim == 1:
            out[name] = values.tolist()
        else:
            out[name] = list(values)
    return out


def _rows(url: str, split: str, columns: tuple[str, ...], include_rejected: bool, storage_options: dict | None,
          signature: str) -> Iterator[dict[str, Any]]:
    del signature  # only part of the cache fingerprint
    group = store.open_root(url, mode="r", storage_options=storage_options)[split]
    for block in iter_blocks(group, list(columns), include_rejected):
        cells = encode_block(block)
        for i in range(len(cells["key"])):
            yield {name: cells[name][i] for name in columns}


def content_signature(url: str, split: str, storage_options: dict | None = None) -> str:
    """A cheap digest that changes when a split's files change (local stores: sizes and mtimes)."""
    root = store.open_root(url, mode="r", storage_options=storage_options)
    h = hashlib.sha256(json.dumps([url, split, dict(root.attrs), dict(root[split].attrs)], sort_keys=True,
                                  default=str).encode())
    local = Path(url)
    if local.is_dir():
        for dirpath, _, files in sorted(os.walk(local / split)):
            for f in sorted(files):
                st = os.stat(os.path.join(dirpath, f))
                h.update(f"{dirpath}/{f}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:32]


def to_hf_dataset(url: str | os.PathLike, split: str, *, with_heatmaps: bool = False, include_rejected: bool = False,
                  storage_options: dict | None = None, cache_dir: str | None = None, keep_in_memory: bool = False):
    """One split of a store as a `datasets.Dataset` with the parquet export's features.

    Built with `Dataset.from_generator`, reading the store one shard at a time. `split` is a store
    split (`val`) or its Hub name (`validation`). Only valid samples unless `include_rejected`.
    The cache fingerprint covers the store's files, so a rebuilt store is not served from a stale cache.
    """
    import datasets

    url = str(url)
    root = store.open_root(url, mode="r", storage_options=storage_options)
    name = store_split(root, split)
    group = root[name]
    columns = export_columns(group, with_heatmaps, include_rejected)
    features = features_for(group, columns)
    signature = content_signature(url, name, storage_options)
    fingerprint = hashlib.sha256(json.dumps([signature, columns, include_rejected]).encode()).hexdigest()[:32]
    return datasets.Dataset.from_generator(
        _rows,
        features=features,
        cache_dir=cache_dir,
        keep_in_memory=keep_in_memory,
        # A list in gen_kwargs is taken for a list of shards and split up: pass a tuple.
        gen_kwargs={"url": url, "split": name, "columns": tuple(columns), "include_rejected": include_rejected,
                    "storage_options": storage_options, "signature": signature},
        split=datasets.NamedSplit(hub_split(name)),
        fingerprint=fingerprint,
    )
