"""Builds on a real Dask cluster started by the test (scheduler + worker processes on 127.0.0.1 only)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import zarr
from click.testing import CliRunner

from proui_data import store
from proui_data.cli import main as cli
from proui_data.verify import verify_store

from fixtures import kill_when_finished, make_celeba_root
from test_build import assert_same_store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster():
    """A `dask scheduler` and two single-thread `dask worker` processes; yields (address, worker processes)."""
    from distributed import Client

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--no-dashboard"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                 "--host", "127.0.0.1", "--no-dashboard", "--no-nanny"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
    procs += workers
    try:
        deadline = time.time() + 60
        while True:
            try:
                with Client(address, timeout=5) as c:
                    c.wait_for_workers(2, timeout=60)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield address, workers
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=30)


def _build_args(root, out, recipe, *extra):
    return ["build", "--source", "celeba", "--root", str(root), "--recipe", str(recipe), "--out", str(out),
            "--no-progress", *extra]


def test_cluster_build_equals_local_build_and_survives_a_killed_worker(cluster, tmp_path):
    address, workers = cluster
    make_celeba_root(tmp_path / "celeba", n=40, with_landmarks=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[store]\nshard_size = 2\nchunk_size = 2\n[detect]\nupsample = 1\n')
    local = tmp_path / "local.zarr"
    r = CliRunner().invoke(cli, _build_args(tmp_path / "celeba", local, recipe, "--workers", "0"))
    assert r.exit_code == 0, r.output

    # a whole build on the cluster
    remote = tmp_path / "cluster.zarr"
    r = CliRunner().invoke(cli, _build_args(tmp_path / "celeba", remote, recipe, "--scheduler", address))
    assert r.exit_code == 0, r.output
    assert_same_store(local, remote)

    # again, with one worker SIGKILLed once a few shards are done: the scheduler reruns its tasks elsewhere
    killed = tmp_path / "killed.zarr"
    result = {}
    t = threading.Thread(target=lambda: result.update(r=CliRunner().invoke(
        cli, _build_args(tmp_path / "celeba", killed, recipe, "--scheduler", address))))
    t.start()
    done = kill_when_finished(killed, 3, t.is_alive, lambda: os.kill(workers[0].pid, signal.SIGKILL))
    t.join(timeout=300)
    total = 40 // 2
    assert 3 <= done < total, f"kill landed at {done} of {total} shards"
    assert workers[0].wait(timeout=10) == -signal.SIGKILL
    assert result["r"].exit_code == 0, result["r"].output
    assert verify_store(str(killed))[0] == []
    assert_same_store(local, killed)


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1, reached through s3fs via AWS_ENDPOINT_URL (also by spawned workers)."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(k, v)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("faces")
    yield "s3://faces"
    server.stop()


def test_s3_store_build_verify_and_load(s3, tmp_path):
    import numpy as np

    from proui_train.data import StoreDataset

    make_celeba_root(tmp_path / "celeba", n=8, with_landmarks=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[store]\nshard_size = 2\nchunk_size = 2\n')
    local, remote = tmp_path / "local.zarr", f"{s3}/celeba.zarr"
    for out, workers in ((local, "0"), (remote, "1")):
        r = CliRunner().invoke(cli, _build_args(tmp_path / "celeba", out, recipe, "--workers", workers))
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["verify", remote])
    assert r.exit_code == 0, r.output
    a, b = zarr.open_group(str(local), mode="r"), zarr.open_group(remote, mode="r")
    for s in store.splits_of(a):
        for name in a[s].array_keys():
            np.testing.assert_array_equal(a[s][name][:], b[s][name][:], err_msg=f"{s}/{name}")
    ds = StoreDataset(remote, "train", arrays=("hr", "landmarks"), shuffle=False)
    rows = list(ds)
    assert sorted(int(x["index"]) for x in rows) == list(range(4))
    np.testing.assert_array_equal(rows[0]["hr"].numpy(), a["train"]["hr"][int(rows[0]["index"])])


def test_driver_killed_on_a_cluster_then_rerun(cluster, tmp_path):
    address, _ = cluster
    make_celeba_root(tmp_path / "celeba", n=40, with_landmarks=False)
    recipe = tmp_path / "r.toml"
    recipe.write_text('[store]\nshard_size = 2\nchunk_size = 2\n[detect]\nupsample = 1\n')
    local = tmp_path / "local.zarr"
    assert CliRunner().invoke(cli, _build_args(tmp_path / "celeba", local, recipe, "--workers", "0")).exit_code == 0
    out = tmp_path / "cluster.zarr"
    cmd = [sys.executable, "-m", "proui_data.cli", *_build_args(tmp_path / "celeba", out, recipe, "--scheduler", address)]
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when_finished(out, 3, lambda: driver.poll() is None, lambda: driver.send_signal(signal.SIGKILL))
    assert driver.wait(timeout=30) == -signal.SIGKILL, "the build finished before the driver could be killed"
    time.sleep(1.0)  # tasks already on the workers may still finish their shards: that is allowed
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "already finished" in rerun.stdout
    assert verify_store(str(out))[0] == []
    assert_same_store(local, out)
