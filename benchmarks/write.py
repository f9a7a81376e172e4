"""A shard's write (`store.write_shard`: zarr's writes of every array, the read-back for the content record, the
marks) with zarr's default `write_empty_chunks = False`, which compares every chunk with the fill value before
writing it (twice per sharded array: the inner chunk, then the shard), against today's `True`, which does not.

    OMP_NUM_THREADS=1 python benchmarks/write.py [--folder ../shared/data/wild/celeba_in_the_wild] [--shards 12]

The rows are real: the first shard of a folder build (the folder recipe, every field, rejected rows included).
Both modes write the same rows into the same layout, --shards times each; prints CPU-ms per shard and per array,
the ratio, bytes stored and peak RSS.
"""
from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import zarr

from proui_data import store
from proui_data.pipeline import fields_for, plan_build
from proui_data.recipe import load_recipe
from proui_data.runner import run_plan
from proui_data.sources import get_source


def first_shard(folder: str, tmp: Path):
    """(fields, rows of shard 0, shard size) of a folder build of `folder`."""
    source, recipe = get_source("folder", folder), load_recipe(None, "folder")
    run_plan(plan_build(source, recipe, str(tmp / "src.zarr"), "train"), workers=0, progress=False)
    group = zarr.open_group(str(tmp / "src.zarr"), mode="r")["train"]
    fields, size = fields_for(recipe, source), group.attrs["shard_size"]
    return fields, {f.name: group[f.name][:size] for f in fields}, size


@contextlib.contextmanager
def default_write_empty_chunks():
    """write_shard as zarr's default array config has it (what builds did before)."""
    original = zarr.Array.with_config
    zarr.Array.with_config = lambda self, config: self
    try:
        yield
    finally:
        zarr.Array.with_config = original


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="../shared/data/wild/celeba_in_the_wild")
    ap.add_argument("--shards", type=int, default=12)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="proui-write-"))
    try:
        fields, rows, size = first_shard(args.folder, tmp)
        valid = int(rows["valid"].sum())
        print(f"shard of {size} rows ({valid} valid) from a folder build of {args.folder}, {len(fields)} arrays; "
              f"{args.shards} shards per mode, one process")
        results = {}
        for name, mode in (("write_empty_chunks = False (zarr's default, before)", default_write_empty_chunks),
                           ("write_empty_chunks = True (today)", contextlib.nullcontext)):
            with mode():
                results[name] = timed_shards(fields, rows, size, args.shards, str(tmp / f"{len(results)}.zarr"))
        print("| mode | CPU-ms per shard | " + " | ".join(f.name for f in fields) + " | bytes stored |")
        print("|---|---:|" + "---:|" * (len(fields) + 1))
        for name, (cpu, per_array, stored) in results.items():
            print(f"| {name} | {cpu:.1f} | " + " | ".join(f"{per_array[f.name]:.1f}" for f in fields) +
                  f" | {stored:,} |")
        (before, *_), (today, *_) = results.values()
        print(f"before / today: {before / today:.2f}x CPU per shard, {(before - today) / size:.2f} CPU-ms less per row")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def timed_shards(fields, rows, size: int, shards: int, url: str) -> tuple[float, Counter, int]:
    """(CPU-ms per shard of write_shard, CPU-ms per shard of each array's write alone, bytes stored), the layout
    of `size`-row shards, `shards` of them, each written by write_shard, then each array's write timed alone."""
    group = store.create_split(zarr.open_group(url, mode="w"), "train", size * shards, fields, size, size, 3)
    t = time.process_time()
    for k in range(shards):
        store.write_shard(group, fields, k, rows)
    cpu = (time.process_time() - t) * 1000 / shards
    stored = sum(p.stat().st_size for p in Path(url).rglob("*") if p.is_file())
    arrays = {name: a.with_config({"write_empty_chunks": True}) for name, a in group.arrays()}
    per_array: Counter = Counter()
    for k in range(shards):
        for f in fields:
            t = time.process_time()
            arrays[f.name][k * size:(k + 1) * size] = rows[f.name]
            per_array[f.name] += (time.process_time() - t) * 1000 / shards
    return cpu, per_array, stored


if __name__ == "__main__":
    main()
