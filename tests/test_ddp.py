"""`proui-train run` under torchrun: two CPU ranks (gloo) on the demo store, then a resume under torchrun.

Each run is a real `python -m torch.distributed.run --standalone --nproc_per_node 2` launch, bounded by a
timeout (a rank stuck in a collective would otherwise hang the suite).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from proui_train.checkpoint import load_checkpoint
from proui_train.config import load_config
from proui_train.data import StoreDataset, make_loader
from proui_train.models import global_discriminator
from proui_train.runtime import build_generator
from proui_train.trainer import weights_sha256

REPO = Path(__file__).resolve().parents[1]
TIMEOUT_S = 240  # per launch; ~15-25 s on an idle 2-core machine


def torchrun(store: str, run_dir: Path, steps: int, *extra: str) -> subprocess.CompletedProcess:
    """Two ranks of `proui-train run` at batch 1 per rank: checkpoint and validate every 3 steps."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "proui_train.cli", "run", "--data", store, "--run-dir", str(run_dir), "--steps", str(steps),
           "--batch-size", "1", "--no-progress", "--set", "ckpt_every=3", "--set", "val_every=3",
           "--set", "log_every=1", "--set", "image_every=0", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: a timeout kills the ranks too
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s (a rank stuck in a collective?)")
    assert proc.returncode == 0, err[-4000:]
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def metric_steps(run_dir: Path) -> tuple[list[int], list[int]]:
    """Steps of the loss lines and of the validation lines in metrics.jsonl."""
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["step"] for x in lines if "loss/g" in x], [x["step"] for x in lines if "val/psnr_y" in x]


def saved_weights_sha256(ck: dict) -> str:
    generator, discriminator = build_generator(load_config(None)), global_discriminator()
    generator.load_state_dict(ck["generator"])
    discriminator.load_state_dict(ck["discriminator"])
    return weights_sha256(generator, discriminator)


def replay_indices(store: str, loader_state: dict) -> list[list[int]]:
    """The train rows a rank's loader handed out, epoch by epoch, up to the position saved in `loader_state`."""
    s = loader_state
    ds = StoreDataset(store, s["split"], arrays=("landmarks",), seed=s["seed"], shuffle=s["shuffle"],
                      shuffle_shards=s["shuffle_shards"], rank=s["rank"], world_size=s["world_size"])
    loader = make_loader(ds, batch_size=s["batch_size"], num_workers=0)
    epochs = []
    for epoch in range(s["epoch"] + 1):
        loader.set_epoch(epoch)
        rows = [int(i) for batch in loader for i in batch["index"]]
        epochs.append(rows if epoch < s["epoch"] else rows[:s["samples_seen"]])
    return epochs


def test_torchrun_two_ranks_train_in_sync_on_disjoint_shares_and_resume(demo_store, tmp_path):
    # 6 train rows, 2 ranks: 3 rows per rank per epoch, so 4 steps at batch 1 end 1 row into epoch 1.
    full = tmp_path / "full"
    r = torchrun(demo_store, full, 4)
    assert json.loads(r.stdout)["step"] == 4  # one result printed: rank 0's (two would not parse)
    assert r.stderr.count("INFO proui_train.train: generator ") == 1  # only rank 0 logs at INFO
    # rank 0 alone writes: one folder per checkpoint step, nothing half-written, each metric line once
    assert sorted(p.name for p in full.iterdir() if p.name.startswith(("step-", "."))) == [
        "step-00000003", "step-00000004"]
    assert metric_steps(full) == ([1, 2, 3, 4], [3])

    ck = load_checkpoint(full)
    assert (ck["step"], ck["epoch"], ck["nonfinite"]) == (4, 1, 0)
    ranks = ck["ranks"]
    assert [(s["loader"]["rank"], s["loader"]["world_size"]) for s in ranks] == [(0, 2), (1, 2)]
    assert [(s["loader"]["epoch"], s["loader"]["samples_seen"]) for s in ranks] == [(1, 1), (1, 1)]
    # DDP kept the replicas identical: both ranks' G and D parameters hash to what rank 0 saved
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"] == saved_weights_sha256(ck)
    assert not torch.equal(ranks[0]["aug_rng"], ranks[1]["aug_rng"])  # but each rank drew its own flips

    # the ranks read disjoint halves of the split in every epoch
    seen = [replay_indices(demo_store, s["loader"]) for s in ranks]
    assert [len(e) for e in seen[0]] == [len(e) for e in seen[1]] == [3, 1]
    assert sorted(seen[0][0] + seen[1][0]) == list(range(6))
    assert not set(seen[0][1]) & set(seen[1][1])

    # resume under torchrun from the step-3 checkpoint (the end of epoch 0): the same weights and loader
    # positions as the uninterrupted run
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(full / "step-00000003", part / "step-00000003")
    (part / "latest").write_text("step-00000003")
    r = torchrun(demo_store, part, 4, "--resume")
    assert r.stderr.count("resumed from") == 1 and "at step 3 (epoch 0)" in r.stderr
    assert metric_steps(part) == ([4], [])  # it went on from step 3, not from 0
    resumed = load_checkpoint(part)
    assert resumed["step"] == 4
    assert [s["loader"] for s in resumed["ranks"]] == [s["loader"] for s in ranks]
    assert [s["weights_sha256"] for s in resumed["ranks"]] == [s["weights_sha256"] for s in ranks]
    worst = max((resumed["ema"][k].float() - ck["ema"][k].float()).abs().max().item() for k in ck["ema"])
    assert worst <= 1e-6
