"""What the content records cost: verify, a rerun's check and the loader, on a real store.

Copies a store written before content records (default celeba.zarr) twice: as it is, and rewritten
shard by shard through `store.write_shard` (what a build writes today, with the `_shard_digests` record),
values unchanged. Then, best of `--repeats` with the files in the page cache:

- verify on each copy (the old store: value checks plus the size check of the arrays a valid row always
  writes; the recorded one: every object hashed, then the value checks), and the hash pass alone;
- a rerun's check of finished shards (`shard_damage` by size) and `--repair`'s (by sha256);
- the loader: one in-process epoch of the train split (hr, lr_occluded, landmarks, heatmaps) from each copy
  (from the recorded one it checks the CRC-32C of every object it reads); against the direct decode of the
  same objects held in memory: their CRC-32C, their sha256, and the decode of their chunks re-compressed
  with zstd frame checksums (the alternative: zstd then hashes every decompressed byte).

    OMP_NUM_THREADS=1 python benchmarks/integrity.py [--store celeba.zarr] [--workdir /tmp/proui-integrity]

The baseline for verify before content records is the same command's `verify` of the older code, timed on
the same copy (docs/benchmarks.md gives both).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import zarr

from proui_data import store
from proui_data.schema import core_fields, occlusion_fields, prior_fields
from proui_data.verify import verify_store

LOADER_ARRAYS = ("hr", "lr_occluded", "landmarks", "heatmaps")


def best(fn, repeats: int) -> tuple[float, float]:
    """(wall s, CPU s) of the fastest of `repeats` calls."""
    runs = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return min(runs)


def rewrite_with_records(src: Path, dst: Path) -> None:
    """The store at `src` written again as a build writes it now (same values, layout and zstd level)."""
    old = zarr.open_group(str(src), mode="r")
    new = zarr.open_group(str(dst), mode="w", zarr_format=3)
    new.attrs.update(dict(old.attrs))
    for s in store.splits_of(old):
        g = old[s]
        names = set(g.array_keys()) - set(store.BOOKKEEPING)
        n_attrs = g["attributes"].shape[1] if "attributes" in names else 0
        fields = [f for f in core_fields(n_attrs) + prior_fields(g["heatmaps"].shape[-1]) + occlusion_fields()
                  if f.name in names]
        assert {f.name for f in fields} == names, names - {f.name for f in fields}
        n, size = g.attrs["n_samples"], g.attrs["shard_size"]
        level = g["hr"].metadata.codecs[0].codecs[-1].level
        group = store.create_split(new, s, n, fields, size, g["hr"].chunks[0], level)
        for k in range(g.attrs["n_shards"]):
            start, stop = store.shard_range(k, size, n)
            store.write_shard(group, fields, k, {f.name: g[f.name][start:stop] for f in fields})


def loader_epoch(url: str) -> int:
    from proui_train.data import StoreDataset

    dataset = StoreDataset(url, "train", arrays=LOADER_ARRAYS, batch_size=64, shuffle=False, rank=0, world_size=1)
    return sum(len(batch["index"]) for batch in dataset)


def shard_objects(url: str) -> list[tuple[zarr.Array, bytes]]:
    """The train split's shard objects of the loader's arrays, read into memory once."""
    g = zarr.open_group(url, mode="r")["train"]
    out = []
    for a in LOADER_ARRAYS:
        paths = [store.shard_object(g[a], k) for k in range(g.attrs["n_shards"])]
        out += [(g[a], data) for data in store.read_objects(paths)]
    return out


def decode_all(objects: list[tuple[zarr.Array, bytes]]) -> None:
    """The loader's direct decode of every object (the epoch's decompression, without its reads and copies)."""
    from proui_train.data import shard_decoder

    for arr, data in objects:
        out = np.empty((arr.shards[0],) + arr.shape[1:], arr.dtype)
        shard_decoder(arr)(data, out)


def zstd_frames(objects: list[tuple[zarr.Array, bytes]], checksum: bool) -> list[tuple[bytes, int]]:
    """Every inner chunk of the objects, re-compressed at the store's level with or without frame checksums."""
    from numcodecs import Zstd

    from proui_train.data import shard_decoder

    frames = []
    for arr, data in objects:
        out = np.empty((arr.shards[0],) + arr.shape[1:], arr.dtype)
        shard_decoder(arr)(data, out)
        codec = Zstd(level=arr.metadata.codecs[0].codecs[-1].level, checksum=checksum)
        rows = arr.chunks[0]
        frames += [(codec.encode(out[i:i + rows]), out[i:i + rows].nbytes) for i in range(0, len(out), rows)]
    return frames


def decode_frames(frames: list[tuple[bytes, int]]) -> None:
    from numcodecs import Zstd

    codec, buf = Zstd(), np.empty(max(n for _, n in frames), np.uint8)
    for frame, n in frames:
        codec.decode(frame, out=buf[:n])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default="celeba.zarr")
    ap.add_argument("--workdir", default="/tmp/proui-integrity")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    plain, recorded = work / "plain.zarr", work / "recorded.zarr"
    shutil.copytree(args.store, plain)
    t = time.perf_counter()
    rewrite_with_records(plain, recorded)
    print(f"rewrote {args.store} with content records in {time.perf_counter() - t:.1f} s")
    for path in (plain, recorded):
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        print(f"{path.name}: {size / 1e6:.1f} MB")
    assert verify_store(str(plain))[0] == [] and verify_store(str(recorded))[0] == []
    root = zarr.open_group(str(recorded), mode="r")
    groups = [root[s] for s in store.splits_of(root)]

    n = loader_epoch(str(plain))
    rows = [  # (key, label, (wall, CPU))
        ("verify_plain", "verify, store without records (values + required objects' sizes)",
         best(lambda: verify_store(str(plain)), args.repeats)),
        ("verify_recorded", "verify, store with records (sha256 of every object + values)",
         best(lambda: verify_store(str(recorded)), args.repeats)),
        ("deep", "  of it: the hash pass alone (shard_damage by sha256: build --repair's check)",
         best(lambda: [store.shard_damage(g, deep=True) for g in groups], args.repeats)),
        ("shallow", "a rerun's check of the finished shards (shard_damage by size)",
         best(lambda: [store.shard_damage(g, deep=False) for g in groups], args.repeats)),
        ("load_plain", f"loader epoch, store without records ({n} samples)",
         best(lambda: loader_epoch(str(plain)), args.repeats)),
        ("load_recorded", f"loader epoch, store with records ({n} samples)",
         best(lambda: loader_epoch(str(recorded)), args.repeats)),
    ]
    objects = shard_objects(str(recorded))
    frames = {c: zstd_frames(objects, c) for c in (False, True)}
    rows += [
        ("decode", "  the direct decode of the epoch's shard objects, in memory",
         best(lambda: decode_all(objects), args.repeats)),
        ("crc", "  CRC-32C of those objects (the loader's check)",
         best(lambda: [store.crc32c(d) for _, d in objects], args.repeats)),
        ("sha", "  sha256 of those objects",
         best(lambda: [hashlib.sha256(d).digest() for _, d in objects], args.repeats)),
        ("zstd_plain", "  zstd decode of their chunks re-compressed without frame checksums",
         best(lambda: decode_frames(frames[False]), args.repeats)),
        ("zstd_checked", "  the same with frame checksums",
         best(lambda: decode_frames(frames[True]), args.repeats)),
    ]
    width = max(len(label) for _, label, _ in rows)
    print(f"{'':{width}s}  {'wall s':>7s}  {'CPU s':>7s}")
    for _, label, (wall, cpu) in rows:
        print(f"{label:{width}s}  {wall:7.2f}  {cpu:7.2f}")
    cpu = {key: t[1] for key, _, t in rows}
    print(f"CPU ratios: verify with records / without {cpu['verify_recorded'] / cpu['verify_plain']:.2f}x; "
          f"loader epoch with records / without {cpu['load_recorded'] / cpu['load_plain']:.2f}x; "
          f"per decode of the objects: CRC-32C {cpu['crc'] / cpu['decode']:.3f}x, "
          f"sha256 {cpu['sha'] / cpu['decode']:.2f}x, "
          f"zstd frame checksums +{cpu['zstd_checked'] / cpu['zstd_plain'] - 1:.2f}x")
    np.testing.assert_array_equal(zarr.open_group(str(plain))["train"]["hr"][:64], root["train"]["hr"][:64])


if __name__ == "__main__":
    main()
