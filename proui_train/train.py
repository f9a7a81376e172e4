"""Pro-UIGAN training, top to bottom: shard reader -> batch on device -> `train_step` -> log -> validate ->
checkpoint.

Single process by default; under `torchrun` each rank reads its own share of the store (the loader splits
by rank) and the trainer wraps the networks in DistributedDataParallel.
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import zarr

from proui_data.schema import HR_SIZE

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import DeviceBatcher, StoreDataset, make_loader
from .metrics import quality
from .runtime import build_generator, pick_device, seed_everything, to_uint8  # noqa: F401 - re-exported
from .trainer import ProUIGANTrainer, unwrap, weights_sha256  # noqa: F401 - re-exported

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    pass


def rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": json.dumps(np.random.get_state()[1].tolist()),
             "numpy_pos": int(np.random.get_state()[2]), "python": json.dumps(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.set_state(("MT19937", np.array(json.loads(state["numpy"]), dtype=np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(json.loads(state["python"])), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


@torch.no_grad()
def validate(generator: torch.nn.Module, cfg: TrainConfig, device: torch.device, prefix: str = "val"
             ) -> dict[str, float]:
    """PSNR/SSIM (Y) on the first `val_batches` batches of the store's val split, overall and inside/outside
    the occlusion mask: {f"{prefix}/{metric}": value}."""
    arrays = ["hr", cfg.data.input] + (["occlusion_mask"] if cfg.data.input == "lr_occluded" else [])
    # rank 0 validates alone, on the whole split (not the rank's share torch.distributed would give it)
    ds = StoreDataset(cfg.data.store, cfg.data.val_split, arrays=tuple(arrays), seed=0, shuffle=False,
                      rank=0, world_size=1)
    loader = make_loader(ds, batch_size=cfg.val_batch_size or cfg.data.batch_size, num_workers=0)
    sums: dict[str, float] = {}
    n = 0
    was_training = generator.training
    generator.eval()
    for i, batch in enumerate(DeviceBatcher(loader, device)):
        if i >= cfg.val_batches:
            break
        sr = generator(batch[cfg.data.input])["final"]
        q = quality(to_uint8(sr), to_uint8(batch["hr"]), batch.get("occlusion_mask"))
        for k, v in q.items():
            sums[k] = sums.get(k, 0.0) + float(v[torch.isfinite(v)].sum())
        n += sr.shape[0]
    generator.train(was_training)
    return {f"{prefix}/{k}": v / max(n, 1) for k, v in sums.items()}


def _has_split(cfg: TrainConfig) -> bool:
    try:
        return cfg.data.val_split in zarr.open_group(cfg.data.store, mode="r").group_keys()
    except Exception:  # noqa: BLE001 - remote stores etc.: validation is best effort
        return False


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train for `cfg.steps` generator steps; returns the final losses and throughput.

    Under `torchrun` (WORLD_SIZE > 1) every rank calls this: one process per device (gloo on CPU, nccl on
    CUDA), torn down again even when training fails."""
    device = pick_device(cfg.device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _train(cfg, resume, progress, 0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        return _train(cfg, resume, progress, dist.get_rank(), dist.get_world_size(), device)
    finally:
        dist.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, progress: bool, rank: int, world: int,
           device: torch.device) -> dict[str, Any]:
    master = rank == 0
    run_dir = Path(cfg.run_dir)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest conv kernels once
    seed_everything(cfg.seed)  # every rank starts from the same weights, so its EMA copy does too
    trainer = ProUIGANTrainer(cfg, device, rank, world)
    seed_everything(cfg.seed + rank)  # from here on each rank draws its own random stream
    if master:
        log.info(trainer.describe())

    # data
    arrays = ("hr", cfg.data.input, "landmarks")
    if cfg.data.input == "lr_occluded" and (cfg.loss.mask_weight or cfg.loss.local_adversarial):
        arrays += ("occlusion_mask",)
    dataset = StoreDataset(cfg.data.store, cfg.data.train_split, arrays=arrays, seed=cfg.seed, shuffle=True,
                           shuffle_shards=cfg.data.shuffle_shards, rank=rank, world_size=world)
    # DeviceBatcher copies each batch before asking for the next, so the loader's slots need no copy of their own
    loader = make_loader(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.workers,
                         reuse_batches=True)
    batcher = DeviceBatcher(loader, device)  # its state counts only batches handed to the loop

    # Augmentation draws come from their own generator: the DataLoader draws from the global one whenever an
    # iterator is made, which a resumed run does at a different point.
    aug_rng = torch.Generator(device).manual_seed(cfg.seed * 1000 + rank)
    step, epoch, nonfinite = 0, 0, 0
    if resume and (run_dir / "latest").is_file():
        ck = load_checkpoint(run_dir, device="cpu")
        trainer.load_state_dict(ck)
        step, epoch, nonfinite = ck["step"], ck["epoch"], ck["nonfinite"]
        ranks = ck.get("ranks", [ck])  # each rank's loader position and random streams (older: top level)
        if len(ranks) != world:
            raise ValueError(f"{run_dir / 'latest'} was written by {len(ranks)} rank(s); resume it with as many, "
                             f"not {world}")
        batcher.load_state_dict(ranks[rank]["loader"])
        set_rng_state(ranks[rank]["rng"], device)
        aug_rng.set_state(ranks[rank]["aug_rng"].to(torch.uint8).cpu())
        if master:
            log.info("resumed from %s at step %d (epoch %d)", run_dir / "latest", step, epoch)
    else:
        loader.set_epoch(epoch)

    writer = None
    if master:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            log.warning("tensorboard is not installed: scalars go to %s only", run_dir / "metrics.jsonl")
    metrics_file = open(run_dir / "metrics.jsonl", "a") if master else None

    def record(values: dict[str, float]) -> None:
        metrics_file.write(json.dumps({"step": step, **values}) + "\n")
        metrics_file.flush()
        if writer:
            for k, v in values.items():
                writer.add_scalar(k, v, step)

    def checkpoint() -> None:
        """Rank 0 writes the weights and every rank's loader position and random streams (collective)."""
        mine = {"loader": batcher.state_dict(), "rng": rng_state(device), "aug_rng": aug_rng.get_state(),
                "weights_sha256": trainer.weights_sha256()}
        ranks = [mine]
        if world > 1:
            ranks = [None] * world if master else None
            dist.gather_object(mine, ranks, dst=0)
        if master:
            if len({r["weights_sha256"] for r in ranks}) > 1:
                log.error("step %d: the ranks' weights differ (DDP replicas out of sync)", step)
            save_checkpoint(run_dir, step, {**trainer.state_dict(), "step": step, "epoch": epoch,
                                            "nonfinite": nonfinite, "ranks": ranks, "config": cfg.to_dict()},
                            keep=cfg.keep_checkpoints)
        if world > 1:
            dist.barrier()  # no rank runs on (or exits) before the checkpoint is on disk

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and master), dynamic_ncols=True)
    t_start, samples, wait = time.perf_counter(), 0, 0.0
    last: dict[str, float] = {}
    validating = master and cfg.val_every and _has_split(cfg)
    while step < cfg.steps:
        t_ready = time.perf_counter()
        for batch in batcher:
            wait += time.perf_counter() - t_ready  # time the step waited for data
            losses = trainer.train_step(batch, step, aug_rng)
            if losses is None:
                nonfinite += 1
                log.warning("step %d: non-finite loss; step skipped (%d so far)", step, nonfinite)
                if nonfinite >= cfg.max_nonfinite:
                    checkpoint()
                    raise TrainingStopped(f"stopped: {nonfinite} steps had a NaN/inf loss (limit max_nonfinite="
                                          f"{cfg.max_nonfinite}); last good checkpoint in {run_dir}")
                t_ready = time.perf_counter()
                continue
            step += 1
            samples += batch["hr"].shape[0]
            bar.update(1)

            if master and (step % cfg.log_every == 0 or step == cfg.steps):
                elapsed = time.perf_counter() - t_start
                last = {"loss/g": losses.pop("g").item(), "loss/d": losses.pop("d").item(),
                        **{f"loss/{k}": float(v) for k, v in losses.items()},
                        "perf/samples_per_s": samples / elapsed, "perf/loader_wait": wait / elapsed,
                        "lr/g": trainer.opt_g.param_groups[0]["lr"]}
                if device.type == "cuda":
                    last["perf/gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                bar.set_postfix(g=f"{last['loss/g']:.3f}", d=f"{last['loss/d']:.3f}",
                                sps=f"{last['perf/samples_per_s']:.1f}")
                record(last)
            if master and writer and cfg.image_every and step % cfg.image_every == 0:
                with torch.no_grad():
                    lr_in, hr = batch[cfg.data.input][:4], batch["hr"][:4]
                    sr = trainer.ema(lr_in)["final"]
                grid = torch.cat([F.interpolate(lr_in.float(), size=HR_SIZE, mode="nearest"), sr.float(), hr.float()], 3)
                writer.add_images("lr_ema_hr", (grid.clamp(-1, 1) + 1) / 2, step)
            if validating and step % cfg.val_every == 0:
                record({**validate(trainer.ema, cfg, device, "val"),
                        **validate(unwrap(trainer.generator), cfg, device, "val_raw")})
            if cfg.ckpt_every and step % cfg.ckpt_every == 0:
                checkpoint()
            if step >= cfg.steps:
                break
            t_ready = time.perf_counter()
        else:  # the epoch ran out
            epoch += 1
            loader.set_epoch(epoch)
    bar.close()
    checkpoint()
    if metrics_file:
        metrics_file.close()
    if writer:
        writer.close()
    return {"step": step, "epoch": epoch, "nonfinite": nonfinite, **last}
