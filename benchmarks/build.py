"""Build throughput: our Dask build (1 and 2 workers) against a plain one-process loop that does the same
per-sample transforms and writes PNG + .npy files. Prints samples/s, ratios to the loop measured in the same
run, bytes per sample and peak RSS. Cluster builds are timed on a started cluster whose workers have loaded
the models; the start-up is shown apart.

    python benchmarks/build.py [--n 1024] [--shard-size 64] [--root ../shared/data/celeba] [--scaling]

--scaling adds the 2-worker / 1-worker ratio and the same 2-worker build into S3 on a moto server on
127.0.0.1 (its own process; needs s3fs and moto[server], the test extra).
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from proui_data.pipeline import fields_for, plan_build, process_item
from proui_data.recipe import load_recipe
from proui_data.runner import dask_client, run_plan
from proui_data.sources import get_source


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def plain_loop(source, recipe, items, out: Path) -> float:
    fields = fields_for(recipe, source)
    t0 = time.perf_counter()
    for it in items:
        row = process_item(it, source, recipe, fields)
        stem = out / it.key.replace("/", "_")
        if row["valid"]:
            cv2.imwrite(f"{stem}_hr.png", cv2.cvtColor(row["hr"], cv2.COLOR_RGB2BGR))
            cv2.imwrite(f"{stem}_lr.png", cv2.cvtColor(row["lr"], cv2.COLOR_RGB2BGR))
            if "parsing" in row:
                cv2.imwrite(f"{stem}_parsing.png", row["parsing"])
            np.save(f"{stem}_landmarks.npy", row["landmarks"])
            if "heatmaps" in row:
                np.save(f"{stem}_heatmaps.npy", row["heatmaps"])
    return time.perf_counter() - t0


def _warm() -> int:
    from proui_data.detect import _dlib_models

    _dlib_models()
    import proui_data.pipeline  # noqa: F401 - the imports every task needs

    return 1


def timed_build(source, recipe, url: str, n: int, address: str, storage_options: dict | None = None) -> float:
    """Seconds for plan + build of the first n train samples into `url` on the running cluster at `address`."""
    t0 = time.perf_counter()
    plan = plan_build(source, recipe, url, "train", limit=n, storage_options=storage_options)
    run_plan(plan, scheduler=address, progress=False, storage_options=storage_options)
    return time.perf_counter() - t0


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--shard-size", type=int, default=64,
                    help="small enough that both workers stay busy to the end (n / shard-size shards)")
    ap.add_argument("--scaling", action="store_true",
                    help="also: 1 vs 2 workers scaling ratio, and local disk vs S3 on a loopback moto server")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba"))
    args = ap.parse_args()
    if not Path(args.root).is_dir():
        sys.exit(f"CelebA root {args.root} not found (pass --root)")
    source = get_source("celeba", args.root)
    recipe = load_recipe(None, "celeba")
    recipe = recipe.replace(store=recipe.store.__class__(shard_size=args.shard_size,
                                                         chunk_size=min(recipe.store.chunk_size, args.shard_size),
                                                         zstd_level=recipe.store.zstd_level))
    items = source.items("train")[: args.n]
    n = len(items)
    print(f"{n} CelebA train images, recipe pipelines/celeba.toml with shards of {args.shard_size}, "
          f"{os.cpu_count()} cores; at start: {load()}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="proui-bench-"))
    try:
        loop_dir = tmp / "loop"
        loop_dir.mkdir()
        t_loop = plain_loop(source, recipe, items, loop_dir)
        rows = [("plain loop, PNG+npy", n / t_loop, du(loop_dir) / n)]
        rates, s3_rate = {}, None
        for workers in (1, 2):
            t0 = time.perf_counter()
            with dask_client(workers, None) as client:
                client.run(_warm)
                startup = time.perf_counter() - t0
                address = client.scheduler.address
                out = tmp / f"w{workers}.zarr"
                dt = timed_build(source, recipe, str(out), n, address)
                rates[workers] = n / dt
                rows.append((f"proui build, {workers} worker(s)", n / dt, du(out) / n))
                rows.append((f"  same, with start-up {startup:.1f}s", n / (dt + startup), du(out) / n))
                if args.scaling and workers == 2:
                    s3_rate = s3_build(source, recipe, n, address)
        base = rows[0][1]
        print(f"{'run':32s} {'samples/s':>10s} {'x loop':>8s} {'bytes/sample':>13s}")
        for name, sps, bps in rows:
            print(f"{name:32s} {sps:10.1f} {sps / base:8.2f} {bps:13,.0f}")
        if args.scaling:
            print(f"scaling 2 workers / 1 worker (start-up excluded): {rates[2] / rates[1]:.2f}x")
            if s3_rate:
                print(f"S3 on loopback (moto), 2 workers: {s3_rate:.1f} samples/s = {s3_rate / rates[2]:.2f}x local disk")
        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS: driver {self_rss:.0f} MiB, largest worker process {child_rss:.0f} MiB")
        print(f"at end: {load()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def s3_build(source, recipe, n: int, address: str) -> float | None:
    """samples/s of the same build into s3://bench/… on a moto server on 127.0.0.1 (None without moto/s3fs)."""
    try:
        import s3fs  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError:
        print("S3 comparison skipped: install the test extra (s3fs, moto[server])")
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from s3server import S3Server

    with S3Server() as s3:
        url = f"{s3.make_bucket('bench')}/build.zarr"
        return n / timed_build(source, recipe, url, n, address, s3.storage_options)


if __name__ == "__main__":
    main()
