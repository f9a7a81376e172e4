"""Faults and remote stores on a real Dask cluster started by the test (`dask scheduler` and `dask worker`
processes on 127.0.0.1 only): S3 through --storage-options, a scheduler killed mid-build, retried and failing
tasks. (tests/test_cluster.py covers a cluster build against a local one, a SIGKILLed worker and a killed driver.)
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from proui_data import store
from proui_data.cli import main as cli
from proui_data.pipeline import plan_build
from proui_data.recipe import load_recipe
from proui_data.runner import ShardsFailed, run_plan
from proui_data.sources import Item, Source, get_source
from proui_data.verify import verify_store

from fixtures import kill_when_finished, make_celeba_root
from s3server import S3Server
from test_build import arrays_of, assert_same_store

TESTS = Path(__file__).resolve().parent
RECIPE = '[store]\nshard_size = 2\nchunk_size = 2\n[detect]\nupsample = 1\n'


@dataclass
class Cluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen]

    def kill(self) -> None:
        for p in [self.scheduler, *self.workers]:
            if p.poll() is None:
                p.kill()
        for p in [self.scheduler, *self.workers]:
            p.wait(timeout=30)


def cluster_env() -> dict[str, str]:
    """No AWS variables (S3 settings must travel with the tasks); tests/ importable for FlakySource."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {**env, "OMP_NUM_THREADS": "1", "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])}


@pytest.fixture
def start_cluster(tmp_path):
    """Starts `dask scheduler` + two single-thread `dask worker` processes (no nanny) per call; all killed at the end."""
    from distributed import Client

    started: list[Cluster] = []

    def start() -> Cluster:
        sched_file = tmp_path / f"scheduler-{len(started)}.json"
        env = cluster_env()
        # --port 0 and a scheduler file: no race for a free port
        scheduler = subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(sched_file)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        workers = [subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(sched_file),
             "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--no-nanny"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        c = Cluster("", scheduler, workers)
        started.append(c)
        deadline = time.time() + 60
        while not sched_file.exists() or not sched_file.read_text().strip():
            assert scheduler.poll() is None, "dask scheduler exited"
            assert time.time() < deadline, "dask scheduler did not start"
            time.sleep(0.1)
        c.address = json.loads(sched_file.read_text())["address"]
        assert c.address.startswith("tcp://127.0.0.1:")
        with Client(c.address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        return c

    yield start
    for c in started:
        c.kill()


@pytest.fixture(scope="module")
def celeba40(tmp_path_factory):
    """40 CelebA-format images (20 shards of 2 over train/val/test), the recipe, and a local --workers 0 build."""
    tmp = tmp_path_factory.mktemp("celeba40")
    make_celeba_root(tmp / "celeba", n=40, with_landmarks=False)
    (tmp / "r.toml").write_text(RECIPE)
    r = CliRunner().invoke(cli, build_args(tmp / "celeba", tmp / "local.zarr", tmp / "r.toml", "--workers", "0"))
    assert r.exit_code == 0, r.output
    return tmp / "celeba", tmp / "r.toml", tmp / "local.zarr"


def build_args(root, out, recipe, *extra) -> list[str]:
    return ["build", "--source", "celeba", "--root", str(root), "--recipe", str(recipe), "--out", str(out),
            "--no-progress", *extra]


def finished(url: str, storage_options: dict | None = None) -> tuple[int, int]:
    """(finished shards, all shards) of a store, (0, 0) before it exists."""
    try:
        with warnings.catch_warnings():  # listing a group mid-write meets zarr's atomic-write temp files
            warnings.simplefilter("ignore")
            g = zarr.open_group(url, mode="r", storage_options=storage_options)
            done = [store.finished_shards(g[s]) for s in store.splits_of(g)]
    except Exception:  # noqa: BLE001 - not created yet
        return 0, 0
    return sum(int(d.sum()) for d in done), sum(d.size for d in done)


def test_s3_store_on_a_cluster_through_storage_options(celeba40, start_cluster, tmp_path, monkeypatch):
    from proui_train.data import StoreDataset

    root, recipe, local = celeba40
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)  # endpoint and credentials reach s3fs only through --storage-options
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no credential lookup off loopback
    cluster = start_cluster()
    # one split in shards of 5: every object is a request to moto, which answers a few dozen a second
    recipe5 = tmp_path / "r5.toml"
    recipe5.write_text(RECIPE.replace("= 2", "= 5"))
    with S3Server() as s3:
        url = f"{s3.make_bucket('faces')}/celeba.zarr"
        options = json.dumps(s3.storage_options)
        r = CliRunner().invoke(cli, build_args(root, url, recipe5, "--split", "val", "--scheduler", cluster.address,
                                               "--storage-options", options))
        assert r.exit_code == 0, r.output
        assert "wrote 10 samples (10 valid) in 2 shards" in r.output
        dash = ("dashboard not available" if importlib.util.find_spec("bokeh") is None
                else "dashboard http://127.0.0.1:")
        assert f"scheduler {cluster.address}: 2 workers; {dash}" in r.output
        r = CliRunner().invoke(cli, ["verify", url, "--storage-options", options])
        assert r.exit_code == 0 and "verify ok" in r.output, r.output
        opts_file = tmp_path / "s3.json"
        opts_file.write_text(options)
        r = CliRunner().invoke(cli, ["info", url, "--storage-options", f"@{opts_file}"])
        assert r.exit_code == 0 and "[val] 10/10 valid, shards 2/2 finished" in r.output, r.output
        png = tmp_path / "grid.png"
        r = CliRunner().invoke(cli, ["preview", url, "--out", str(png), "--n", "4", "--storage-options", options])
        assert r.exit_code == 0 and png.stat().st_size > 10_000, r.output

        # the same samples as the local build with shards of 2 (only the shard bookkeeping differs)
        remote = {f"{s}/{a}": v for s, a, v in _arrays(url, s3.storage_options) if a not in store.BOOKKEEPING}
        reference = {k: v for k, v in arrays_of(local).items()
                     if k.startswith("val/") and k.split("/")[-1] not in store.BOOKKEEPING}
        assert remote.keys() == reference.keys()
        for k in reference:
            np.testing.assert_array_equal(remote[k], reference[k], err_msg=k)

        ds = StoreDataset(url, "val", arrays=("hr", "landmarks"), shuffle=False, storage_options=s3.storage_options)
        rows = list(ds)
        assert sorted(int(x["index"]) for x in rows) == list(range(10))
        for x in rows:
            i = int(x["index"])
            np.testing.assert_array_equal(x["hr"].numpy(), reference["val/hr"][i])
            np.testing.assert_array_equal(x["landmarks"].numpy(), reference["val/landmarks"][i])


def _arrays(url: str, storage_options: dict):
    g = zarr.open_group(url, mode="r", storage_options=storage_options)
    for s in store.splits_of(g):
        for a in g[s].array_keys():
            yield s, a, g[s][a][:]


def test_storage_options_and_memory_stores_are_checked(tmp_path):
    r = CliRunner().invoke(cli, ["verify", str(tmp_path / "x.zarr"), "--storage-options", '{"anon": true}'])
    assert r.exit_code == 2 and "applies to fsspec URLs" in r.output
    r = CliRunner().invoke(cli, ["verify", "s3://b/x.zarr", "--storage-options", "[1, 2]"])
    assert r.exit_code == 2 and "must be a JSON object" in r.output
    r = CliRunner().invoke(cli, ["build", "--source", "demo", "--out", "memory://demo.zarr", "--workers", "2"])
    assert r.exit_code == 2 and "private to one process" in r.output


def test_scheduler_killed_mid_build_then_the_same_command_on_a_new_scheduler(celeba40, start_cluster, tmp_path):
    root, recipe, local = celeba40
    first = start_cluster()
    out = tmp_path / "cluster.zarr"

    def command(address: str) -> list[str]:
        return [sys.executable, "-m", "proui_data.cli", *build_args(root, out, recipe, "--scheduler", address)]

    driver = subprocess.Popen(command(first.address), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=cluster_env())
    with warnings.catch_warnings():  # polling a store mid-write meets zarr's atomic-write temp files
        warnings.simplefilter("ignore")
        kill_when_finished(out, 3, lambda: driver.poll() is None, first.scheduler.kill)
    stdout, stderr = driver.communicate(timeout=60)
    done_at_kill, total = finished(str(out))
    assert 3 <= done_at_kill < total == 20, f"the kill landed at {done_at_kill} of {total} shards"
    # the driver says what happened and what to do, instead of a traceback
    assert driver.returncode == 1, stderr[-2000:]
    assert "lost the Dask scheduler mid-build" in stderr and "run the same command again" in stderr
    assert "Traceback" not in stderr, stderr[-2000:]
    first.kill()  # its orphaned workers, so that nothing writes while the new cluster builds
    done_before_rerun = finished(str(out))[0]

    second = start_cluster()
    rerun = subprocess.run(command(second.address), capture_output=True, text=True, timeout=300, env=cluster_env())
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{20 - done_before_rerun} shards to write, {done_before_rerun} already finished" in rerun.stdout
    assert verify_store(str(out))[0] == []
    assert_same_store(local, out)


class FlakySource(Source):
    """A real source whose reads of `keys` raise RuntimeError for the first `failures` attempts (counted in
    files, so the count holds across worker processes): a stand-in for a flaky network file system."""

    def __init__(self, inner: Source, keys: set[str], counter_dir: Path, failures: int):
        self.inner, self.keys, self.counter_dir, self.failures = inner, keys, counter_dir, failures
        self.name, self.attribute_names, self.prior_box = inner.name, inner.attribute_names, inner.prior_box

    def splits(self) -> list[str]:
        return self.inner.splits()

    def items(self, split: str) -> list[Item]:
        return self.inner.items(split)

    def describe(self) -> dict:
        return self.inner.describe()  # the same store as the plain source's (same fingerprint)

    def read(self, item: Item) -> bytes:
        if item.key in self.keys:
            counter = self.counter_dir / item.key
            n = int(counter.read_text()) if counter.exists() else 0
            if n < self.failures:
                counter.write_text(str(n + 1))
                raise RuntimeError(f"transient read failure {n + 1} of {item.key}")
        return self.inner.read(item)


def flaky_plan(root: Path, recipe: Path, out: Path, keys: set[str], counters: Path, failures: int):
    counters.mkdir()
    source = FlakySource(get_source("celeba", str(root)), keys, counters, failures)
    return plan_build(source, load_recipe(str(recipe), "celeba"), str(out))


def test_failing_tasks_are_retried_and_a_shard_that_keeps_failing_stops_nothing_else(celeba40, start_cluster,
                                                                                     tmp_path):
    root, recipe, local = celeba40
    cluster = start_cluster()
    keys = {"000001.jpg", "000010.jpg"}  # train shard 0, train shard 2

    # two failures per key, two retries: every shard is written on its third attempt at the latest
    out = tmp_path / "retried.zarr"
    plan = flaky_plan(root, recipe, out, keys, tmp_path / "counters-retried", failures=2)
    run = run_plan(plan, scheduler=cluster.address, progress=False, retries=2)
    assert run["shards_written"] == 20 and run["samples"] == 40
    assert {p.name: p.read_text() for p in (tmp_path / "counters-retried").iterdir()} == {k: "2" for k in keys}
    assert_same_store(local, out)

    # one retry is not enough: those two shards fail, the 18 others are written, the error names the two
    out = tmp_path / "failed.zarr"
    plan = flaky_plan(root, recipe, out, keys, tmp_path / "counters-failed", failures=2)
    with pytest.raises(ShardsFailed) as e:
        run_plan(plan, scheduler=cluster.address, progress=False, retries=1)
    assert e.value.written == 18 and len(e.value.failures) == 2
    assert "train shard 0: RuntimeError: transient read failure 2 of 000001.jpg" in str(e.value)
    assert "train shard 2: RuntimeError: transient read failure 2 of 000010.jpg" in str(e.value)
    g = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(np.flatnonzero(~store.finished_shards(g["train"])), [0, 2])
    # the same command again (the source has recovered) writes just those two
    r = CliRunner().invoke(cli, build_args(root, out, recipe, "--scheduler", cluster.address))
    assert r.exit_code == 0, r.output
    assert "2 shards to write, 18 already finished" in r.output
    assert verify_store(str(out))[0] == []
    assert_same_store(local, out)
