"""Sharded zarr v3 store I/O: create the layout, write whole shards, track finished shards.

The I/O boundary of the build. A shard is the unit of work: the task that owns shard k writes rows
[k*S, (k+1)*S) of every array in one call each (a full-shard write is one object per array), then sets
`_shard_done[k]`, an unsharded one-element-per-chunk array, so no two tasks ever touch the same object
(partial concurrent writes into one shard lose data: zarr-python issue 3682). A killed build leaves
shards that are either finished and marked or not marked; a rerun rewrites the unmarked ones.

Before the mark, the task records what it stored (`_shard_digests[k]`: size, sha256 and CRC-32C of each
array's shard object, read back through the store), so that `shard_damage` can name every object lost,
truncated or changed after the build without decoding anything, and a rerun can rewrite those shards.
"""
from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata as md
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import zarr
from zarr.buffer import default_buffer_prototype
from zarr.codecs import ZstdCodec
from zarr.storage import StorePath

from . import __version__
from .schema import FORMAT_VERSION, SPLITS, Field

T = TypeVar("T")

DONE = "_shard_done"
# Per finished shard k, a JSON object {array: [bytes, sha256 hex, crc32c] of its shard-k object as stored, or
# null where zarr stored none: builds before `write_shard` stored all-fill objects left those out, absent was
# then the right state}. sha256 for verify and --repair; crc32c for the loader, which checks the bytes it reads
# at a fraction of a decode's cost (zstd's frame checksums would cost a third of the decode:
# docs/benchmarks.md#integrity). Stores written before it have no such array: they verify by their values only.
DIGESTS = "_shard_digests"
BOOKKEEPING = (DONE, DIGESTS)
# Arrays of which a shard with a valid row always has an object (a valid face's pixels, maps and key are never
# all the fill value, so zarr cannot have skipped them): what a store without content records is checked for.
WRITTEN_WHEN_VALID = ("key", "hr", "lr", "lr_occluded", "heatmaps")
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
    if DONE not in existing:  # a new split; a split of an older build gets no digests (its shards have none)
        group.create_array(DONE, shape=(n_shards,), dtype="uint8", chunks=(1,), fill_value=0,
                           compressors=None, dimension_names=("shard",))
        group.create_array(DIGESTS, shape=(n_shards,), dtype=str, chunks=(1,), fill_value="",
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
    """Write shard k of every field, record what was stored, then mark it finished (the mark goes last).

    What a shard held before is deleted first: zarr completes a short last shard from the stored one, which
    would carry a damaged or half-written object into the new one.
    """
    shard_size, n = group.attrs["shard_size"], group.attrs["n_samples"]
    start, stop = shard_range(k, shard_size, n)
    for f in fields:
        if rows[f.name].shape[0] != stop - start:
            raise ValueError(f"shard {k} of {f.name}: {rows[f.name].shape[0]} rows, expected {stop - start}")
    # their metadata read once (each `group[name]` reads it from the store again); write_empty_chunks: zarr's
    # default compares each chunk with the fill value before writing it, a full pass per array (twice when
    # sharded: the chunk, then the shard) that took most of a shard's write (benchmarks/write.py), and skips an
    # all-fill object: written, every object of a finished shard exists, and a lost one is always seen
    arrays = {name: a.with_config({"write_empty_chunks": True}) for name, a in group.arrays()}
    delete_objects([shard_object(arrays[f.name], k) for f in fields])
    for f in fields:
        arrays[f.name][start:stop] = rows[f.name]
    if DIGESTS in arrays:  # stores written before digests were recorded have none
        stored = read_objects([shard_object(arrays[f.name], k) for f in fields])
        record = {f.name: object_digest(data) for f, data in zip(fields, stored)}
        arrays[DIGESTS][k] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    arrays[DONE][k] = 1


# ----- integrity: what the build recorded against what the store holds -----


def run_store_io(coro: Coroutine[Any, Any, T]) -> T:
    """Run a zarr store coroutine (`StorePath.get`, ...) to completion from a plain (non-async) thread.

    A private zarr call: zarr 3.1 has no public synchronous read of a raw key for every store, and a store must
    be driven from zarr's own event-loop thread (an fsspec HTTP or S3 session made on that loop fails on any
    other). `zarr.core.sync.sync` is what zarr's synchronous API uses for exactly this; tests/test_zarr_private.py
    fails, naming this function, if a zarr release moves or changes it.
    """
    from zarr.core.sync import sync

    return sync(coro)


def shard_object(arr: zarr.Array, k: int) -> StorePath:
    """Where shard k of `arr` (sharded, or chunked one chunk per shard, along the sample axis) is stored."""
    return arr.store_path / arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))


def read_objects(paths: list[StorePath]) -> list[bytes | None]:
    """The stored bytes of each object (None: absent), read concurrently through the store."""
    async def one(path: StorePath) -> bytes | None:
        data = await path.get(prototype=default_buffer_prototype())
        return None if data is None else data.to_bytes()

    async def every() -> list[bytes | None]:
        return list(await asyncio.gather(*(one(p) for p in paths)))

    return run_store_io(every())


def delete_objects(paths: list[StorePath]) -> None:
    """Delete the objects (absent ones are no error), concurrently."""
    async def every() -> None:
        await asyncio.gather(*(p.delete() for p in paths))

    run_store_io(every())


def object_sizes(paths: list[StorePath]) -> list[int | None]:
    """The size in bytes of each object (None: absent), asked concurrently without reading them."""
    async def one(path: StorePath) -> int | None:
        try:
            return await path.store.getsize(path.path)
        except FileNotFoundError:
            return None

    async def every() -> list[int | None]:
        return list(await asyncio.gather(*(one(p) for p in paths)))

    return run_store_io(every())


def object_digest(data: bytes | None) -> list | None:
    """[size, sha256 hex, crc32c] of an object's stored bytes; None for an absent object."""
    return None if data is None else [len(data), hashlib.sha256(data).hexdigest(), crc32c(data)]


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C of a buffer (hardware-accelerated; a reused buffer's view is read without a copy)."""
    import google_crc32c

    view = np.frombuffer(data, np.uint8)
    view.flags.writeable = False  # google_crc32c takes read-only buffers only
    return int(google_crc32c.value(view))


@dataclass(frozen=True)
class Damage:
    """One shard object that is not what the build stored."""

    array: str
    shard: int
    rows: tuple[int, int]
    detail: str

    def __str__(self) -> str:
        return f"{self.array} shard {self.shard} (rows {self.rows[0]}:{self.rows[1]}): {self.detail}"


def has_digests(group: zarr.Group) -> bool:
    """Whether the split records its shards' contents (stores written before that do not)."""
    return DIGESTS in group.array_keys()


@dataclass(frozen=True)
class Expected:
    """What a reader may expect of one array's shard objects."""

    required: np.ndarray  # bool per shard: the object must be in the store (absent, zarr reads fill values)
    crc32c: dict[int, int]  # shard -> CRC-32C of the object's bytes, where recorded


def expected_objects(group: zarr.Group, names: list[str], valid: np.ndarray, size: int) -> dict[str, Expected]:
    """Per array of `names`, which shard objects must exist and their recorded CRC-32C: from the content records
    where the split has them (one small read per shard), else only that `WRITTEN_WHEN_VALID` arrays exist in
    shards with a valid row; `size`: the split's shard size."""
    n_shards = -(-valid.size // size)
    has_valid = np.array([valid[k * size:(k + 1) * size].any() for k in range(n_shards)], dtype=bool)
    out = {a: Expected(has_valid.copy() if a in WRITTEN_WHEN_VALID else np.zeros(n_shards, bool), {})
           for a in names}
    if not has_digests(group):
        return out
    for k, text in enumerate(group[DIGESTS][:].tolist()):
        try:
            record = json.loads(str(text))
        except ValueError:
            continue  # a lost record: the rule of older stores for this shard (verify names it)
        for a in names:
            if isinstance(record, dict) and a in record:
                out[a].required[k] = record[a] is not None
                if record[a] is not None:
                    out[a].crc32c[k] = int(record[a][2])
    return out


def shard_damage(group: zarr.Group, shards: list[int] | None = None, deep: bool = True) -> list[Damage]:
    """The recorded objects of the finished shards `shards` (default: all) that are absent, absent from the
    record, or not as recorded: by size and sha256 when `deep` (every object read once), by size alone
    otherwise (one size request per object: finds deleted and truncated objects, not changed bytes). A split
    without digests (an older store) gives []."""
    if not has_digests(group):
        return []
    n, size = group.attrs["n_samples"], group.attrs["shard_size"]
    done = finished_shards(group)
    shards = [k for k in (range(done.size) if shards is None else shards) if done[k]]
    names = sorted(a for a in group.array_keys() if a not in BOOKKEEPING)
    arrays = {a: group[a] for a in names}
    digests = group[DIGESTS]
    damage: list[Damage] = []
    for k in shards:
        rows = shard_range(k, size, n)
        try:
            record = json.loads(str(digests[k]))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, TypeError) as e:  # the record itself is lost or damaged: the shard is not trusted
            damage.append(Damage(DIGESTS, k, rows, f"no readable content record ({e}): the shard is not trusted"))
            continue
        paths = [shard_object(arrays[a], k) for a in names]
        if deep:
            stored = [object_digest(d) for d in read_objects(paths)]
        else:
            stored = [None if s is None else [s, None] for s in object_sizes(paths)]
        for a, path, got in zip(names, paths, stored):
            if a not in record:
                damage.append(Damage(a, k, rows, "not in the shard's content record"))
                continue
            problem = _compare(record[a], got, path.path)
            if problem:
                damage.append(Damage(a, k, rows, problem))
    return damage


def _compare(want: list | None, got: list | None, key: str) -> str | None:
    """What is wrong with a stored object `got` ([size, sha256 or None]) against its record `want`, or None."""
    if want is None:
        return None if got is None else f"object {key} ({got[0]} bytes) present where the build stored none"
    if got is None:
        return f"object {key} missing (recorded {want[0]} bytes)"
    if got[0] < want[0]:
        return f"object {key} truncated: {got[0]} of {want[0]} recorded bytes"
    if got[0] != want[0]:
        return f"object {key} changed: {got[0]} bytes, recorded {want[0]}"
    if got[1] is not None and got[1] != want[1]:
        return f"object {key} changed: sha256 {got[1][:12]}..., recorded {want[1][:12]}..."
    return None


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
