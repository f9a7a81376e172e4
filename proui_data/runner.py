"""Run a build plan on Dask: a LocalCluster (`workers=N`), an existing scheduler (`scheduler=ADDRESS`),
or in this process (`workers=0`, for debugging). One task per shard; finished shards were already
skipped by the plan, so rerunning the same command resumes."""
from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from typing import Any, Iterator

from tqdm import tqdm

from .pipeline import Plan, build_shard, shard_items

log = logging.getLogger(__name__)


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    # distributed logs cluster start/stop at INFO through its own handler: keep the build's output readable.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    # One thread per process: the per-sample work is CPU-bound Python/OpenCV/dlib holding the GIL.
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def run_plan(plan: Plan, workers: int = 1, scheduler: str | None = None, progress: bool = True,
             storage_options: dict | None = None, retries: int = 2) -> dict[str, Any]:
    """Execute the plan's remaining shards; returns timing and per-reason counts for this run."""
    t0 = time.perf_counter()
    results: list[dict] = []
    total = sum(len(shard_items(plan, s, k)) for s, k in plan.todo)
    bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True)
    args = lambda s, k: (plan.source, shard_items(plan, s, k), plan.recipe, plan.url, s, k, storage_options)
    if workers == 0 and not scheduler:
        for s, k in plan.todo:
            r = build_shard(*args(s, k))
            results.append(r)
            bar.update(r["n"])
    elif plan.todo:
        from distributed import as_completed

        with dask_client(workers, scheduler) as client:
            if scheduler:
                link = client.dashboard_link if "dashboard" in client.scheduler_info().get("services", {}) else None
                print(f"scheduler {scheduler}: {len(client.scheduler_info()['workers'])} workers; "
                      f"dashboard {link or 'not available (install bokeh on the scheduler)'}", flush=True)
            futures = [client.submit(build_shard, *args(s, k), key=f"proui-{plan.fingerprint}-{s}-{k}",
                                     pure=False, retries=retries) for s, k in plan.todo]
            for fut in as_completed(futures):
                r = fut.result()
                results.append(r)
                bar.update(r["n"])
                bar.set_postfix(shards=f"{len(results)}/{len(futures)}")
    bar.close()
    seconds = time.perf_counter() - t0
    rejects: Counter = Counter()
    for r in results:
        rejects.update(r["rejects"])
    n = sum(r["n"] for r in results)
    return {"samples": n, "valid": sum(r["valid"] for r in results), "rejects": dict(rejects),
            "seconds": seconds, "samples_per_s": n / seconds if seconds > 0 else 0.0,
            "shards_written": len(results), "shards_skipped": plan.skipped}
