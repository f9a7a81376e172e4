"""Pro-UIGAN training, top to bottom: shard reader -> batch on device -> `train_step` -> log -> validate ->
checkpoint.

Single process by default; under `torchrun` each rank reads its own share of the store (the loader splits
by rank) and the trainer wraps the networks in DistributedDataParallel.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from proui_data.schema import HR_SIZE

from .checkpoint import has_checkpoint, load_latest, save_checkpoint
from .config import ConfigError, TrainConfig
from .data import DeviceBatcher, StoreDataset, make_loader, open_split
from .metrics import quality
from .runtime import pick_device, seed_everything, to_uint8
from .trainer import ProUIGANTrainer, unwrap

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    pass


class RunDirError(ValueError):
    """A run folder that already holds a run, without --resume or --overwrite."""


# What a run writes into its folder; `--overwrite` removes these and nothing else.
RUN_FILES = ("latest", "metrics.jsonl", "config.json", "tb", "step-*", ".tmp-step-*", ".latest-*")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool, master: bool) -> None:
    """Refuse to start a fresh run over an earlier one: a second run would restart at step 0, replace its
    checkpoints and append repeated steps to its metrics. `resume` continues it; `overwrite` (rank 0)
    removes what the earlier run wrote."""
    if resume and overwrite:
        raise RunDirError("give --resume or --overwrite, not both")
    earlier = sorted(p.name for pattern in RUN_FILES for p in run_dir.glob(pattern))
    if not earlier or resume:
        return
    if not overwrite:
        raise RunDirError(f"{run_dir} already holds a run ({', '.join(earlier[:4])}"
                          f"{', ...' if len(earlier) > 4 else ''}): continue it with --resume, start it again "
                          "with --overwrite, or give another --run-dir")
    if master:
        log.warning("--overwrite: removing the earlier run in %s", run_dir)
        for name in earlier:
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def check_splits(cfg: TrainConfig) -> bool:
    """Open the store's train split (StoreError when it is not there) and say whether training validates:
    val_every > 0 and steps reach it. A val split that is not in the store is an error naming the splits it
    has (set val_every = 0 to train without validation)."""
    open_split(cfg.data.store, cfg.data.train_split)
    if not cfg.val_every:
        return False
    try:
        open_split(cfg.data.store, cfg.data.val_split)
    except KeyError as e:  # StoreError: the one line names the splits the store has
        raise type(e)(f"data.val_split: {e} (val_every = 0 trains without validation)") from None
    if cfg.steps < cfg.val_every:
        log.warning("steps %d < val_every %d: no validation will run, and `proui-train report` will draw no "
                    "curve; set val_every <= steps", cfg.steps, cfg.val_every)
        return False
    return True


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


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, overwrite: bool = False
          ) -> dict[str, Any]:
    """Train for `cfg.steps` generator steps; returns the final losses and throughput.

    A run folder that holds an earlier run needs `resume` (continue it) or `overwrite` (start again).
    Under `torchrun` (WORLD_SIZE > 1) every rank calls this: one process per device (gloo on CPU, nccl on
    CUDA), torn down again even when training fails."""
    prepare_run_dir(Path(cfg.run_dir), resume, overwrite, master=int(os.environ.get("RANK", "0")) == 0)
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


@dataclass
class Progress:
    """Where a run stands: what a checkpoint records besides the weights."""

    step: int = 0
    epoch: int = 0
    nonfinite: int = 0


class Recorder:
    """Rank 0's outputs: metrics.jsonl, TensorBoard scalars and image grids (nothing on other ranks)."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, active: bool, from_step: int = 0) -> None:
        self.writer, self.file = None, None
        if not active:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        drop_rows_after(run_dir / "metrics.jsonl", from_step)
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: scalars still go to metrics.jsonl

            self.writer = SummaryWriter(str(run_dir / "tb"))
        except ImportError:
            log.warning("tensorboard is not installed: scalars go to %s only", run_dir / "metrics.jsonl")
        self.file = open(run_dir / "metrics.jsonl", "a")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.file is None:
            return
        self.file.write(json.dumps({"step": step, **values}) + "\n")
        self.file.flush()
        if self.writer:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    @torch.no_grad()
    def images(self, step: int, lr_in: torch.Tensor, hr: torch.Tensor, generator: torch.nn.Module) -> None:
        if self.writer is None:
            return
        sr = generator(lr_in[:4])["final"]
        grid = torch.cat([F.interpolate(lr_in[:4].float(), size=HR_SIZE, mode="nearest"), sr.float(),
                          hr[:4].float()], 3)
        self.writer.add_images("lr_ema_hr", (grid.clamp(-1, 1) + 1) / 2, step)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.writer:
            self.writer.close()


def drop_rows_after(metrics: Path, step: int) -> None:
    """Keep the rows of `metrics` (jsonl) up to `step`: a resumed run writes the later steps again."""
    if not metrics.is_file():
        return
    lines = metrics.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _row_step(line) <= step]
    if len(kept) < len(lines):
        tmp = metrics.with_name(metrics.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, metrics)


def _row_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a line cut by a kill: dropped
        return float("inf")


def make_batcher(cfg: TrainConfig, device: torch.device, rank: int, world: int) -> DeviceBatcher:
    """This rank's share of the train split, batched on the device."""
    arrays = ("hr", cfg.data.input, "landmarks")
    if cfg.data.input == "lr_occluded" and (cfg.loss.mask_weight or cfg.loss.local_adversarial):
        arrays += ("occlusion_mask",)
    dataset = StoreDataset(cfg.data.store, cfg.data.train_split, arrays=arrays, seed=cfg.seed, shuffle=True,
                           shuffle_shards=cfg.data.shuffle_shards, rank=rank, world_size=world)
    # DeviceBatcher copies each batch before asking for the next, so the loader's slots need no copy of their own
    loader = make_loader(dataset, batch_size=cfg.data.batch_size, num_workers=cfg.data.workers,
                         reuse_batches=True)
    return DeviceBatcher(loader, device)  # its state counts only batches handed to the loop


def resume_from(run_dir: Path, trainer: ProUIGANTrainer, batcher: DeviceBatcher, aug_rng: torch.Generator,
                rank: int, world: int, device: torch.device) -> Progress:
    """Load `run_dir/latest` (a damaged one: the newest older checkpoint that reads) into the trainer, this
    rank's loader position and random streams."""
    ck, folder = load_latest(run_dir, device="cpu")
    trainer.load_state_dict(ck)
    ranks = ck.get("ranks", [ck])  # each rank's loader position and random streams (older: top level)
    if len(ranks) != world:
        raise RunDirError(f"{folder} was written by {len(ranks)} rank(s); resume it with as many, not {world}")
    batcher.load_state_dict(ranks[rank]["loader"])
    set_rng_state(ranks[rank]["rng"], device)
    aug_rng.set_state(ranks[rank]["aug_rng"].to(torch.uint8).cpu())
    if rank == 0:
        log.info("resumed from %s at step %d (epoch %d)", folder, ck["step"], ck["epoch"])
    return Progress(ck["step"], ck["epoch"], ck["nonfinite"])


def save_run(cfg: TrainConfig, trainer: ProUIGANTrainer, batcher: DeviceBatcher, aug_rng: torch.Generator,
             progress: Progress, rank: int, world: int, device: torch.device) -> None:
    """Rank 0 writes the weights and every rank's loader position and random streams (collective)."""
    mine = {"loader": batcher.state_dict(), "rng": rng_state(device), "aug_rng": aug_rng.get_state(),
            "weights_sha256": trainer.weights_sha256()}
    ranks = [mine]
    if world > 1:
        ranks = [None] * world if rank == 0 else None
        dist.gather_object(mine, ranks, dst=0)
    if rank == 0:
        if len({r["weights_sha256"] for r in ranks}) > 1:
            log.error("step %d: the ranks' weights differ (DDP replicas out of sync)", progress.step)
        save_checkpoint(cfg.run_dir, progress.step,
                        {**trainer.state_dict(), **dataclasses.asdict(progress), "ranks": ranks,
                         "config": cfg.to_dict()}, keep=cfg.keep_checkpoints)
    if world > 1:
        dist.barrier()  # no rank runs on (or exits) before the checkpoint is on disk


def _train(cfg: TrainConfig, resume: bool, show_progress: bool, rank: int, world: int,
           device: torch.device) -> dict[str, Any]:
    master, run_dir = rank == 0, Path(cfg.run_dir)
    if master:
        log.info("run folder: %s", run_dir.resolve())
    validating = check_splits(cfg) and master  # before any work: a misspelled split fails here
    starts_anew = not (resume and has_checkpoint(run_dir))
    if cfg.init and starts_anew and not Path(cfg.init).exists():
        raise ConfigError(f"init: {cfg.init} does not exist (a release or run folder whose generator to start from)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest conv kernels once
    seed_everything(cfg.seed)  # every rank starts from the same weights, so its EMA copy does too
    trainer = ProUIGANTrainer(cfg, device, rank, world)
    seed_everything(cfg.seed + rank)  # from here on each rank draws its own random stream
    if master:
        log.info(trainer.describe())
    batcher = make_batcher(cfg, device, rank, world)
    # Augmentation draws come from their own generator: the DataLoader draws from the global one whenever an
    # iterator is made, which a resumed run does at a different point.
    aug_rng = torch.Generator(device).manual_seed(cfg.seed * 1000 + rank)
    at = Progress()
    if not starts_anew:
        at = resume_from(run_dir, trainer, batcher, aug_rng, rank, world, device)
    else:
        if cfg.init:
            trainer.start_from(cfg.init)
            log.info("generator and EMA start from %s", cfg.init)
        batcher.set_epoch(at.epoch)
    recorder = Recorder(run_dir, cfg, master, from_step=at.step)
    checkpoint = lambda: save_run(cfg, trainer, batcher, aug_rng, at, rank, world, device)  # noqa: E731

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=at.step, disable=not (show_progress and master), dynamic_ncols=True)
    t_start, samples, wait = time.perf_counter(), 0, 0.0
    last: dict[str, float] = {}
    while at.step < cfg.steps:
        t_ready = time.perf_counter()
        for batch in batcher:
            wait += time.perf_counter() - t_ready  # time the step waited for data
            losses = trainer.train_step(batch, at.step, aug_rng)
            if losses is None:
                at.nonfinite += 1
                log.warning("step %d: non-finite loss; step skipped (%d so far)", at.step, at.nonfinite)
                if at.nonfinite >= cfg.max_nonfinite:
                    checkpoint()
                    raise TrainingStopped(f"stopped: {at.nonfinite} steps had a NaN/inf loss (limit max_nonfinite="
                                          f"{cfg.max_nonfinite}); last good checkpoint in {run_dir}")
                t_ready = time.perf_counter()
                continue
            at.step += 1
            samples += batch["hr"].shape[0]
            bar.update(1)
            if master and (at.step % cfg.log_every == 0 or at.step == cfg.steps):
                elapsed = time.perf_counter() - t_start
                last = {"loss/g": losses.pop("g").item(), "loss/d": losses.pop("d").item(),
                        **{f"loss/{k}": float(v) for k, v in losses.items()},
                        "perf/samples_per_s": samples / elapsed, "perf/loader_wait": wait / elapsed,
                        "lr/g": trainer.opt_g.param_groups[0]["lr"]}
                if device.type == "cuda":
                    last["perf/gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                bar.set_postfix(g=f"{last['loss/g']:.3f}", sps=f"{last['perf/samples_per_s']:.1f}")
                recorder.scalars(at.step, last)
            if master and cfg.image_every and at.step % cfg.image_every == 0:
                recorder.images(at.step, batch[cfg.data.input], batch["hr"], trainer.ema)
            if validating and at.step % cfg.val_every == 0:
                recorder.scalars(at.step, {**validate(trainer.ema, cfg, device, "val"),
                                           **validate(unwrap(trainer.generator), cfg, device, "val_raw")})
            if cfg.ckpt_every and at.step % cfg.ckpt_every == 0:
                checkpoint()
            if at.step >= cfg.steps:
                break
            t_ready = time.perf_counter()
        else:  # the epoch ran out
            at.epoch += 1
            batcher.set_epoch(at.epoch)
    bar.close()
    checkpoint()
    recorder.close()
    return {"run_dir": str(run_dir), "step": at.step, "epoch": at.epoch, "nonfinite": at.nonfinite, **last}
