"""Build throughput: our Dask build (1 and 2 workers) against a plain one-process loop that does the same
per-sample transforms and writes PNG + .npy files. Prints samples/s, ratios to the loop measured in the same
run, bytes per sample and peak RSS.

    python benchmarks/build.py [--n 600] [--root ../shared/data/celeba]
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
from proui_data.runner import run_plan
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


def cluster_startup(workers: int) -> float:
    """Seconds to start a LocalCluster and load the models in every worker (paid once per build)."""
    from proui_data.runner import dask_client

    t0 = time.perf_counter()
    with dask_client(workers, None) as client:
        client.run(_warm)
        return time.perf_counter() - t0


def s3_build(source, recipe, n: int, startup: float) -> float | None:
    """samples/s of the same build into s3://bench/… on a moto server on 127.0.0.1 (None without moto/s3fs)."""
    try:
        import s3fs
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("S3 comparison skipped: install the test extra (s3fs, moto[server])")
        return None
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://{host}:{port}")
    try:
        s3fs.S3FileSystem().mkdir("bench")
        plan = plan_build(source, recipe, "s3://bench/build.zarr", "train", limit=n)
        t0 = time.perf_counter()
        run_plan(plan, workers=2, progress=False)
        return n / max(time.perf_counter() - t0 - startup, 1e-9)
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--scaling", action="store_true",
                    help="also: 1 vs 2 workers scaling ratio, and local disk vs S3 on a loopback moto server")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba"))
    args = ap.parse_args()
    if not Path(args.root).is_dir():
        sys.exit(f"CelebA root {args.root} not found (pass --root)")
    source = get_source("celeba", args.root)
    recipe = load_recipe(None, "celeba")
    items = source.items("train")[: args.n]
    tmp = Path(tempfile.mkdtemp(prefix="proui-bench-"))
    try:
        loop_dir = tmp / "loop"
        loop_dir.mkdir()
        t_loop = plain_loop(source, recipe, items, loop_dir)
        rows = [("plain loop, PNG+npy", len(items) / t_loop, du(loop_dir) / len(items))]
        startup = {w: cluster_startup(w) for w in (1, 2)}
        for workers in (1, 2):
            out = tmp / f"w{workers}.zarr"
            plan = plan_build(source, recipe, str(out), "train", limit=args.n)
            t0 = time.perf_counter()
            run_plan(plan, workers=workers, progress=False)
            dt = time.perf_counter() - t0  # includes cluster start-up
            rows.append((f"proui build, {workers} worker(s)", len(items) / dt, du(out) / len(items)))
            rows.append((f"  same, less start-up {startup[workers]:.1f}s", len(items) / max(dt - startup[workers], 1e-9),
                         du(out) / len(items)))
        base = rows[0][1]
        print(f"\n{len(items)} CelebA train images, recipe pipelines/celeba.toml, {os.cpu_count()} cores")
        print(f"{'run':28s} {'samples/s':>10s} {'x loop':>8s} {'bytes/sample':>13s}")
        for name, sps, bps in rows:
            print(f"{name:28s} {sps:10.1f} {sps / base:8.2f} {bps:13,.0f}")
        if args.scaling:
            w1 = rows[2][1]
            w2 = rows[4][1]
            print(f"scaling 2 workers / 1 worker (start-up excluded): {w2 / w1:.2f}x")
            s3_rate = s3_build(source, recipe, args.n, startup[2])
            if s3_rate:
                print(f"S3 on loopback (moto), 2 workers, less start-up: {s3_rate:.1f} samples/s "
                      f"= {s3_rate / w2:.2f}x local disk")
        self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS: driver {self_rss:.0f} MiB, largest worker process {child_rss:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
