"""Run a build plan on Dask: a LocalCluster (`workers=N`), an existing scheduler (`scheduler=ADDRESS`),
or in this process (`workers=0`, for debugging). One task per shard; finished shards were already
skipped by the plan, so rerunning the same command resumes.

Faults: a task that raises is retried (`retries`); a worker that dies has its tasks rerun elsewhere by the
scheduler (a shard is written whole by one task, so a rerun overwrites, never mixes); a shard that still
fails does not stop the others (`ShardsFailed` lists it afterwards); a scheduler that goes away ends the run
with `ClusterError`, and the same command run again against a live scheduler finishes the job.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import Counter
from typing import Any, Iterator

from tqdm import tqdm

from .pipeline import Plan, build_shard, shard_items

log = logging.getLogger(__name__)


class ClusterError(RuntimeError):
    """The scheduler cannot be reached or went away mid-build; finished shards stay finished."""


class ShardsFailed(RuntimeError):
    """Some shards failed after their retries; every other shard was written."""

    def __init__(self, failures: list[str], written: int):
        self.failures, self.written = failures, written
        super().__init__(f"{len(failures)} shard(s) failed after retries ({written} written this run); "
                         "run the same command again to retry them:\n  " + "\n  ".join(failures))


def check_url_for_cluster(url: str) -> None:
    """A `memory://` store lives in one process: workers would each write their own."""
    if url.startswith("memory://"):
        raise ValueError(f"{url} is private to one process; build it with workers=0 (--workers 0) "
                         "or choose a store every worker can reach")


class _DropCancelledReconnect(logging.Filter):
    """distributed logs its reconnect loop, cancelled when a client that lost the scheduler closes, as an
    ERROR with a traceback; ClusterError already says what happened and what to do."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError))


# Settings of the LocalCluster that `dask_client` starts (not of a cluster it connects to).
LOCAL_CLUSTER_CONFIG: dict[str, Any] = {
    # The nanny's MALLOC_TRIM_THRESHOLD_ also freezes glibc's mmap threshold, so every array over 128 KiB
    # (a sample's heatmaps) is a fresh mmap: 4x the page faults and ~10 % less throughput; left unset.
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    # The statistical profiler (stack samples every 10 ms, the dashboard's Profile page) and the 20 ms
    # event-loop tick kept each process's event loop busy: 22 % of a core for an idle 2-worker cluster
    # (driver and workers), 7 % with these two settings, which distributed's own test suite also uses. With
    # one worker that work ran on the otherwise idle core; with one worker per core it is taken from the shards.
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "500ms",
}


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None, connect_timeout: float = 30) -> Iterator[Any]:
    """A distributed Client on the scheduler at `scheduler`, or on a new LocalCluster of `workers` processes."""
    from distributed import Client, LocalCluster

    # distributed logs cluster start/stop at INFO through its own handler: keep the build's output readable.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    if scheduler:
        try:
            client = Client(scheduler, timeout=connect_timeout)
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from e
        noise = _DropCancelledReconnect()
        logging.getLogger("distributed.client").addFilter(noise)
        try:
            with client:
                yield client
        finally:
            logging.getLogger("distributed.client").removeFilter(noise)
        return
    import dask

    # One thread per process: the per-sample work is CPU-bound Python/OpenCV/dlib holding the GIL.
    # The dashboard listens on loopback only (reach it from elsewhere through an SSH tunnel).
    with dask.config.set(LOCAL_CLUSTER_CONFIG), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                         silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def dashboard(client: Any) -> str:
    """The scheduler's dashboard link, or why there is none."""

    def bokeh_dashboard_running(dask_scheduler=None) -> bool:
        # Nested, so pickled by value: the scheduler needs no proui installed. distributed imports this module
        # only when it starts the bokeh dashboard (bokeh installed, no --no-dashboard).
        import sys

        return "distributed.dashboard.scheduler" in sys.modules

    if "dashboard" not in client.scheduler_info().get("services", {}):
        return "off"
    try:
        running = client.run_on_scheduler(bokeh_dashboard_running)
    except Exception as e:  # noqa: BLE001 - a locked-down scheduler may refuse run_on_scheduler
        return f"{client.dashboard_link} (not checked: {type(e).__name__})"
    if not running:
        return "not available (bokeh is not installed on the scheduler, or it runs with --no-dashboard)"
    return client.dashboard_link


def _value(x: Any) -> Any:
    return x


def run_plan(plan: Plan, workers: int = 1, scheduler: str | None = None, progress: bool = True,
             storage_options: dict | None = None, retries: int = 2) -> dict[str, Any]:
    """Execute the plan's remaining shards; returns timing and per-reason counts for this run.

    Raises ClusterError when the scheduler is unreachable or lost, ShardsFailed when shards failed after
    `retries` (the others are written). With workers=0 and no scheduler, the first error propagates as is.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if scheduler or workers > 0:
        check_url_for_cluster(plan.url)
    t0 = time.perf_counter()
    results: list[dict] = []
    total = sum(len(shard_items(plan, s, k)) for s, k in plan.todo)
    bar = tqdm(total=total, unit="img", disable=not progress, dynamic_ncols=True)
    if workers == 0 and not scheduler:
        for s, k in plan.todo:
            r = build_shard(plan.source, shard_items(plan, s, k), plan.recipe, plan.url, s, k, storage_options)
            results.append(r)
            bar.update(r["n"])
    elif plan.todo:
        results = _run_on_cluster(plan, workers, scheduler, storage_options, retries, bar)
    bar.close()
    seconds = time.perf_counter() - t0
    rejects: Counter = Counter()
    for r in results:
        rejects.update(r["rejects"])
    n = sum(r["n"] for r in results)
    return {"samples": n, "valid": sum(r["valid"] for r in results), "rejects": dict(rejects),
            "seconds": seconds, "samples_per_s": n / seconds if seconds > 0 else 0.0,
            "shards_written": len(results), "shards_skipped": plan.skipped}


def _run_on_cluster(plan: Plan, workers: int, scheduler: str | None, storage_options: dict | None,
                    retries: int, bar: tqdm) -> list[dict]:
    from distributed import as_completed
    from distributed.client import FutureCancelledError

    results: list[dict] = []
    failures: list[str] = []
    with dask_client(workers, scheduler) as client:
        n_workers = len(client.nthreads())
        where = f"scheduler {scheduler}" if scheduler else "LocalCluster"
        note = "" if n_workers else " (the build waits for workers to join)"
        tqdm.write(f"{where}: {n_workers} workers{note}; dashboard {dashboard(client)}")
        # The source goes to the cluster once, as a task every shard depends on, without its planning caches
        # (sources drop them when pickled). Being a task, not scattered data, the scheduler can recompute it
        # when the worker holding it dies.
        source = client.submit(_value, plan.source, key=f"proui-source-{plan.fingerprint}", pure=False)
        shard_of = {}
        futures = []
        for s, k in plan.todo:
            # Deterministic keys: a rerun after a lost driver meets the same keys, never a second copy.
            fut = client.submit(build_shard, source, shard_items(plan, s, k), plan.recipe, plan.url, s, k,
                                storage_options, key=f"proui-{plan.fingerprint}-{s}-{k}", pure=False,
                                retries=retries)
            shard_of[fut.key] = (s, k)
            futures.append(fut)
        try:
            for fut in as_completed(futures):
                if fut.status == "error":
                    s, k = shard_of[fut.key]
                    exc = fut.exception()
                    failures.append(f"{s} shard {k}: {type(exc).__name__}: {exc}")
                    log.error("%s shard %d failed after %d retries:\n%s", s, k, retries,
                              "".join(traceback.format_tb(fut.traceback())))
                    continue
                r = fut.result()
                results.append(r)
                bar.update(r["n"])
                bar.set_postfix(shards=f"{len(results)}/{len(futures)}", failed=len(failures))
        except (FutureCancelledError, OSError) as e:
            raise ClusterError(
                f"lost the Dask scheduler mid-build ({len(results)} of {len(futures)} shards written this run, "
                "and they stay written); start the scheduler and run the same command again to finish") from e
    if failures:
        raise ShardsFailed(failures, len(results))
    return results
