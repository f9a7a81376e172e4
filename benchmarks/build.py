"""Build throughput: our Dask build (1 and 2 workers) against a plain one-process loop that does the same
per-sample transforms and writes PNG + .npy files. Prints samples/s, ratios to the loop measured in the same
run, bytes per sample and peak RSS. Cluster builds are timed on a started cluster whose workers have loaded
the models; the start-up is shown apart.

    python benchmarks/build.py [--n 1024] [--shard-size 64] [--root ../shared/data/celeba] [--scaling]

--scaling adds the 2-worker / 1-worker ratio and the same 2-worker build into S3 on a moto server on
127.0.0.1 (its own process; needs s3fs and moto[server], the test extra; --no-s3 leaves it out). With it,
each run also reports the CPU its whole process tree used while timed (the driver, which holds the
scheduler and the nannies, plus the worker processes), hence cores busy and CPU-ms per sample, split by
thread (task thread, event loop, zarr's and OpenCV's pools); when each worker began its first shard and how
busy it stayed; and a machine ceiling: `process_item` on in-memory images, single-threaded, no Dask, no
writes, in 1 vs 2 spawned processes. Read the scaling ratio against that ceiling: on a machine shared with
other jobs neither reaches 2x. Every timed run starts warm (models loaded on each task thread).

    python benchmarks/build.py --wild ../shared/data/wild/celeba_in_the_wild

--wild DIR builds a folder of photos in this process (one core), with today's folder recipe, the one it replaced
(HOG upsample 1 + fallback chain, min eye distance 8), today's kept to the largest face (the old recipe's work),
today's with HOG alone (with and without the recheck), and
today's at the larger size floors of --floors (a higher floor lets the detectors search smaller copies), and
prints photos/s, CPU-ms per photo and where the CPU went, stage by stage (exclusive: a stage's time leaves out
the stages it calls).

    python benchmarks/build.py --stages --n 512

--stages: the same stage-by-stage CPU for the CelebA recipe on aligned CelebA train images.
"""
from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import os
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import psutil
from distributed import get_task_stream

from proui_data import align, detect, pipeline, search, store
from proui_data.pipeline import fields_for, plan_build, process_item
from proui_data.recipe import DetectRecipe, load_recipe
from proui_data.runner import dask_client, run_plan
from proui_data.sources import Item, Source, get_source


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


def warm(source, recipe, items) -> int:
    """Process a few samples on the calling thread: loads the dlib models (the HOG detector is per thread, so
    on a worker this must run as a task, on its task thread), the lazily imported modules and the occluders."""
    fields = fields_for(recipe, source)
    for it in items:
        process_item(it, source, recipe, fields)
    return len(items)


def warm_workers(client, source, recipe, items) -> None:
    """`warm` as one task on each worker (images from memory: the source's tables do not travel)."""
    mem = MemorySource(source, items)
    futures = [client.submit(warm, mem, recipe, items, workers=[w], allow_other_workers=False, pure=False)
               for w in client.nthreads()]
    client.gather(futures)


def timed_build(source, recipe, url: str, n: int, address: str, storage_options: dict | None = None) -> float:
    """Seconds for plan + build of the first n train samples into `url` on the running cluster at `address`."""
    t0 = time.perf_counter()
    plan = plan_build(source, recipe, url, "train", limit=n, storage_options=storage_options)
    run_plan(plan, scheduler=address, progress=False, storage_options=storage_options)
    return time.perf_counter() - t0


def proc_cpu(pid: int) -> tuple[float, dict[int, float]]:
    """CPU seconds (user + system) of process `pid`, all threads including ended ones, and of each live
    thread."""
    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        return t.user + t.system, {th.id: th.user_time + th.system_time for th in p.threads()}
    except psutil.NoSuchProcess:
        return 0.0, {}


def tree_cpu(pids: dict[str, int]) -> dict[str, tuple[float, dict[int, float]]]:
    """`proc_cpu` of each named process (the driver and the worker processes)."""
    return {name: proc_cpu(pid) for name, pid in pids.items()}


def thread_names() -> dict[int, str]:
    """This process's Python threads by native id, their names without the numbering (threads Python did not
    start, such as OpenCV's pool, are absent)."""
    import re
    import threading

    main = threading.main_thread().native_id
    return {t.native_id: "main" if t.native_id == main else re.sub(r"^\d+-|[-_]?[\d_-]+$", "", t.name)
            for t in threading.enumerate()}


def tree_names(client=None) -> dict[str, dict[int, str]]:
    """`thread_names` of the driver and of each worker, keyed like `process_pids`."""
    names = {"driver": thread_names()}
    workers = client.run(thread_names) if client is not None else {}
    for i, (_, v) in enumerate(sorted(workers.items())):
        names[f"worker{i}"] = v
    return names


def process_pids(client=None) -> dict[str, int]:
    """The processes that work during a build: this one (driver: main thread, plus the scheduler's and
    nannies' event loop in another thread) and each worker process. Anything else in the tree (the
    multiprocessing resource tracker) is listed as well so that no CPU goes uncounted."""
    pids = {"driver": os.getpid()}
    workers = client.run(os.getpid) if client is not None else {}
    for i, (_, pid) in enumerate(sorted(workers.items())):
        pids[f"worker{i}"] = pid
    for child in psutil.Process().children(recursive=True):
        if child.pid not in pids.values():
            pids[f"other{child.pid}"] = child.pid
    return pids


def cpu_report(name: str, n: int, wall: float, before: dict, after: dict, names: dict) -> dict:
    """CPU used between two `tree_cpu` snapshots: total, the driver's share, and per thread kind (`names`,
    summed over the worker processes; over the driver when there are none), in ms per sample."""
    per, kinds = {}, Counter()
    only_driver = not any(p.startswith("worker") for p in after)
    for proc, (total, threads) in after.items():
        t0, threads0 = before.get(proc, (0.0, {}))
        per[proc] = total - t0
        if proc.startswith("worker") or (proc == "driver" and only_driver):
            seen = 0.0
            for tid, t in threads.items():
                d = t - threads0.get(tid, 0.0)
                seen += d
                kinds[names.get(proc, {}).get(tid, "non-Python")] += d
            kinds["ended threads"] += per[proc] - seen
    total = sum(per.values())
    return {"name": name, "wall": wall, "sps": n / wall, "cpu": total, "cores": total / wall,
            "load": os.getloadavg()[0], "ms": 1000 * total / n, "driver_ms": 1000 * per["driver"] / n,
            "kinds": {k: 1000 * v / n for k, v in kinds.most_common() if 1000 * v / n >= 0.05}}


def print_cpu(reports: list[dict]) -> None:
    print("\nCPU of the whole process tree during each timed run (user + system, all threads; load average "
          "at its end):")
    print(f"{'run':22s} {'samples/s':>9s} {'CPU s':>7s} {'cores busy':>10s} {'CPU-ms/sample':>13s} "
          f"{'of it driver':>12s} {'load 1 min':>10s}")
    for r in reports:
        print(f"{r['name']:22s} {r['sps']:9.1f} {r['cpu']:7.1f} {r['cores']:10.2f} {r['ms']:13.1f} "
              f"{r['driver_ms']:12.1f} {r['load']:10.2f}")
    print("CPU-ms/sample by thread, in the worker processes (the loop: its one process):")
    for r in reports:
        print(f"  {r['name']:20s} " + ", ".join(f"{k} {v:.1f}" for k, v in r["kinds"].items()))
    print("  (driver: plan, client, and in cluster runs the scheduler and nannies; Dask-Default-Threads: the "
          "task thread; non-Python: threads of C libraries, e.g. OpenCV's pool)")


def worker_busy(stream: list[dict], t_start: float, wall: float) -> str:
    """How much of the timed run (from `t_start`, time.time()) each worker's task thread spent in shard tasks,
    when its first one began, and how long it idled at the end."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for t in stream:
        for ss in t.get("startstops", []):
            if ss["action"] == "compute":
                spans.setdefault(t["worker"], []).append((ss["start"], ss["stop"]))
    if not spans:
        return "no task stream"
    end = max(b for v in spans.values() for _, b in v)
    parts = []
    for i, (_, v) in enumerate(sorted(spans.items())):
        busy, first, last = sum(b - a for a, b in v), min(a for a, _ in v), max(b for _, b in v)
        parts.append(f"worker{i}: {len(v)} shards, in them {busy / wall:.0%} of the run, first began "
                     f"{first - t_start:.1f}s in, done {end - last:.1f}s before the last")
    return "; ".join(parts)


class MemorySource:
    """A source whose images are already in memory: the ceiling measures compute, not file reads."""

    def __init__(self, source: Source, items: list[Item]):
        self.blobs = {it.key: source.read(it) for it in items}
        self.prior_box, self.attribute_names = source.prior_box, source.attribute_names

    def read(self, item: Item) -> bytes:
        return self.blobs[item.key]


def _ceiling_proc(source: MemorySource, recipe, items: list[Item], barrier, out) -> None:
    """Spawned: warm up, wait for the others, then time `process_item` over `items` on one thread."""
    cv2.setNumThreads(1)
    fields = fields_for(recipe, source)
    for it in items[:4]:
        process_item(it, source, recipe, fields)
    barrier.wait()
    t0, c0 = time.monotonic(), time.process_time()
    for it in items:
        process_item(it, source, recipe, fields)
    out.put((t0, time.monotonic(), time.process_time() - c0))


def ceiling(source: Source, recipe, items: list[Item], procs: int) -> tuple[float, float]:
    """(samples/s, CPU-ms/sample) of `items` split over `procs` spawned single-threaded processes."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(procs), ctx.Queue()
    mem = MemorySource(source, items)
    env = {"OMP_NUM_THREADS": "1", "OPENCV_FOR_THREADS_NUM": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # inherited by the spawned interpreters from the start
    try:
        ps = [ctx.Process(target=_ceiling_proc, args=(mem, recipe, items[i::procs], barrier, out))
              for i in range(procs)]
        for p in ps:
            p.start()
        res = [out.get(timeout=1800) for _ in ps]  # a crashed child raises queue.Empty, not a hang
        for p in ps:
            p.join()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    wall = max(r[1] for r in res) - min(r[0] for r in res)
    return len(items) / wall, 1000 * sum(r[2] for r in res) / len(items)


# stage -> (module, function): the names the build calls them by
# stage -> the functions it times, as (module, name) where callers look them up (the face search, `search`, imports
# `detect` and `decode_image` by name; the predictor inside the recheck counts as landmarks)
STAGES = {"decode": [(pipeline, "decode_image"), (search, "decode_image")],
          "detect": [(detect, "detect"), (search, "detect"), (search, "blazeface_faces")],
          "landmarks": [(detect, "predict_in_box")], "align": [(align, "warp_to_template")],
          "degrade": [(pipeline, "degrade")], "priors": [(pipeline, "add_priors")],
          "occlusion": [(pipeline, "occlude_sample")], "compress/write": [(store, "write_shard")]}


class StageClock:
    """Process CPU per stage, exclusive of nested stages (zarr compresses in its own threads: process time)."""

    def __init__(self) -> None:
        self.cpu: Counter = Counter()
        self._inner: list[float] = []

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t = time.process_time()
            self._inner.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                spent = time.process_time() - t
                self.cpu[name] += spent - self._inner.pop()
                if self._inner:
                    self._inner[-1] += spent
        return timed

    def run(self, fn, *args):
        saved = [(m, f, getattr(m, f)) for targets in STAGES.values() for m, f in targets]
        for k, targets in STAGES.items():
            for m, f in targets:
                setattr(m, f, self.wrap(k, getattr(m, f)))
        try:
            return fn(*args)
        finally:
            for m, f, original in saved:
                setattr(m, f, original)


def staged_build(source, recipe, url: str, limit: int | None = None) -> tuple:
    """One build in this process (planning included: a detect.faces = "all" build detects there, on one thread),
    timed stage by stage: (samples/s, CPU-ms per sample, valid/rows, rejects, CPU s per stage)."""
    def build():
        return run_plan(plan_build(source, recipe, url, "train", limit=limit, detect_threads=1), workers=0,
                        progress=False)

    clock, cpu, wall = StageClock(), time.process_time(), time.perf_counter()
    run = clock.run(build)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    clock.cpu["other"] = cpu - sum(clock.cpu.values())
    n = limit or len(source.items("train"))
    return n / wall, 1000 * cpu / n, f"{run['valid']}/{run['samples']}", run["rejects"], clock.cpu, n


def print_stages(rows: dict[str, tuple], unit: str) -> None:
    print(f"| recipe | {unit}s/s | CPU-ms/{unit} | valid/rows | rejects | " + " | ".join(list(STAGES) + ["other"]) + " |")
    print("|---|---:|---:|---:|---|" + "---:|" * (len(STAGES) + 1))
    for name, (pps, ms, valid, rejects, stages, n) in rows.items():
        per = " | ".join(f"{1000 * stages[k] / n:.1f}" for k in list(STAGES) + ["other"])
        print(f"| {name} | {pps:.2f} | {ms:.1f} | {valid} | {dict(sorted(rejects.items()))} | {per} |")


def wild_builds(folder: str, floors: list[float]) -> None:
    """Old vs new folder recipe on one core, in this process, with the per-stage CPU breakdown; `floors`: the new
    recipe again at these minimum eye distances (source px), which set the scale HOG searches at."""
    source, new = get_source("folder", folder), load_recipe(None, "folder")
    old = new.replace(detect=DetectRecipe(landmarks="dlib", upsample=1, prior_box=False, min_eye_distance=8.0))
    n = len(source.items("train"))
    print(f"{n} photos in {folder}; one process, one core; at start: {load()}")
    hog = new.replace(detect=dataclasses.replace(new.detect, search="min-face"))
    recipes = [("old: upsample 1 + fallback, largest face", old), ("new: folder recipe (BlazeFace first)", new),
               ("new, largest face only (the old recipe's work)", new.replace(detect=dataclasses.replace(new.detect,
                                                                                                       faces=None))),
               ("HOG min-face search + recheck, no BlazeFace", hog),
               ("HOG min-face search, no recheck", hog.replace(detect=dataclasses.replace(hog.detect, recheck=None)))]
    for eyes in floors:
        name = f"new, min eye distance {eyes:g} (search scale {detect.search_scale(eyes):.2f})"
        recipes.append((name, new.replace(detect=dataclasses.replace(new.detect, min_eye_distance=eyes))))
    rows = {}
    tmp = Path(tempfile.mkdtemp(prefix="proui-wild-"))
    try:
        warm(source, old, source.items("train")[:4])
        warm(source, new, source.items("train")[:4])  # BlazeFace's interpreter on this thread
        detect.mmod_boxes(np.zeros((64, 64, 3), np.uint8))  # load MMOD too: the old recipe falls back to it
        for name, recipe in recipes:
            rows[name] = staged_build(source, recipe, str(tmp / f"{len(rows)}.zarr"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_stages(rows, "photo")
    a, b, c = list(rows.values())[:3]
    faces = int(b[2].split("/")[1])
    print(f"new / old: {b[0] / a[0]:.2f}x photos/s, {a[1] / b[1]:.2f}x less CPU per photo (stages: CPU-ms per photo); "
          f"the new recipe makes {faces / n:.2f} rows per photo, the old one 1: {a[1] / (b[1] * n / faces):.2f}x less "
          f"CPU per row; largest face only / old: {c[0] / a[0]:.2f}x photos/s, {a[1] / c[1]:.2f}x less CPU per photo")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; at end: {load()}")


def celeba_stages(root: str, n: int) -> None:
    """The CelebA recipe on n aligned train images, one core, in this process: CPU per sample by stage."""
    source, recipe = get_source("celeba", root), load_recipe(None, "celeba")
    print(f"{n} aligned CelebA train images, pipelines/celeba.toml; one process, one core; at start: {load()}")
    tmp = Path(tempfile.mkdtemp(prefix="proui-celeba-"))
    try:
        warm(source, recipe, source.items("train")[:8])
        rows = {"celeba": staged_build(source, recipe, str(tmp / "c.zarr"), limit=n)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_stages(rows, "sample")
    print(f"at end: {load()}")


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--shard-size", type=int, default=64,
                    help="small enough that both workers stay busy to the end (n / shard-size shards)")
    ap.add_argument("--scaling", action="store_true",
                    help="also: 1 vs 2 workers scaling ratio, and local disk vs S3 on a loopback moto server")
    ap.add_argument("--no-s3", action="store_true", help="with --scaling: leave out the S3 build")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba"))
    ap.add_argument("--wild", metavar="DIR", help="instead: old vs new folder recipe on DIR, stage by stage")
    ap.add_argument("--floors", default="27.5,34.4", metavar="EYES,...",
                    help="with --wild: the new recipe again at these min eye distances (source px)")
    ap.add_argument("--stages", action="store_true",
                    help="instead: the CelebA recipe on --n aligned images, one core, CPU per sample by stage")
    args = ap.parse_args()
    if args.wild:
        return wild_builds(args.wild, [float(v) for v in args.floors.split(",") if v])
    if args.stages:
        return celeba_stages(args.root, args.n)
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
        warm(source, recipe, items[:16])
        pids = process_pids()
        before = tree_cpu(pids)
        t_loop = plain_loop(source, recipe, items, loop_dir)
        cpu = [cpu_report("plain loop", n, t_loop, before, tree_cpu(pids), tree_names())]
        rows = [("plain loop, PNG+npy", n / t_loop, du(loop_dir) / n)]
        rates, s3_rate, busy = {}, None, {}
        for workers in (1, 2):
            t0 = time.perf_counter()
            with dask_client(workers, None) as client:
                warm_workers(client, source, recipe, items[:16])
                startup = time.perf_counter() - t0
                address = client.scheduler.address
                out = tmp / f"w{workers}.zarr"
                pids = process_pids(client)
                before = tree_cpu(pids)
                with get_task_stream(client) as ts:
                    t_start = time.time()
                    dt = timed_build(source, recipe, str(out), n, address)
                cpu.append(cpu_report(f"proui, {workers} worker(s)", n, dt, before, tree_cpu(pids),
                                      tree_names(client)))
                busy[workers] = worker_busy([t for t in ts.data if str(t["key"]).startswith("proui-")
                                             and "source" not in str(t["key"])], t_start, dt)
                rates[workers] = n / dt
                rows.append((f"proui build, {workers} worker(s)", n / dt, du(out) / n))
                rows.append((f"  same, with start-up {startup:.1f}s", n / (dt + startup), du(out) / n))
                if args.scaling and workers == 2 and not args.no_s3:
                    s3_rate = s3_build(source, recipe, n, address)
        base = rows[0][1]
        print(f"{'run':32s} {'samples/s':>10s} {'x loop':>8s} {'bytes/sample':>13s}")
        for name, sps, bps in rows:
            print(f"{name:32s} {sps:10.1f} {sps / base:8.2f} {bps:13,.0f}")
        if args.scaling:
            print_cpu(cpu)
            for w, text in busy.items():
                print(f"  {w} worker(s): {text}")
            print(f"at the ceiling's start: {load()}", flush=True)
            c1, ms1 = ceiling(source, recipe, items, 1)
            c2, ms2 = ceiling(source, recipe, items, 2)
            print(f"machine ceiling, process_item on in-memory images, 1 thread per process, no Dask, no writes: "
                  f"1 process {c1:.1f} samples/s ({ms1:.1f} CPU-ms/sample), 2 processes {c2:.1f} samples/s "
                  f"({ms2:.1f} CPU-ms/sample) = {c2 / c1:.2f}x")
            print(f"scaling 2 workers / 1 worker (start-up excluded): {rates[2] / rates[1]:.2f}x "
                  f"(machine ceiling {c2 / c1:.2f}x)")
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
