"""Pro-UIGAN training, top to bottom: shard reader -> batch on device -> model -> losses -> checkpoint.

Single process by default; under `torchrun` each rank reads its own share of the store (the loader splits
by rank) and the generator and discriminator are wrapped in DistributedDataParallel.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from proui_data.flip import flip_batch_torch
from proui_data.heatmaps import render_heatmaps_torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig
from .data import DeviceBatcher, StoreDataset, make_loader
from .losses import StageLossWeights, generator_loss, hr_pyramid, lsgan_discriminator_loss
from .metrics import quality
from .models import ProUIGAN, ProUIGANConfig, STAGE_LANDMARKS, count_parameters, global_discriminator

log = logging.getLogger(__name__)


class TrainingStopped(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------------------
# pieces the loop uses


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_generator(cfg: TrainConfig, device: torch.device | str = "cpu") -> ProUIGAN:
    m = cfg.model
    estimator = None
    if m.prior == "fan":
        from .fan_prior import load_fan_heatmap_estimator  # needs local FAN weights

        estimator = load_fan_heatmap_estimator(m.fan_weights, device)
    return ProUIGAN(ProUIGANConfig(prior=m.prior, heads=m.heads, scale_attention=m.scale_attention, norm=m.norm),
                    heatmap_estimator=estimator)


def loss_weights(cfg: TrainConfig) -> StageLossWeights:
    w = cfg.loss
    prior = (0.0, 0.0, 0.0) if cfg.model.prior == "fan" else w.prior  # a frozen FAN is not trained
    return StageLossWeights(face_l2=w.face_l2, out_l2=w.out_l2, heatmap=w.heatmap, prior=prior, tv=w.tv,
                            style=w.style, perceptual=w.perceptual, adversarial=w.adversarial)


def load_vgg(cfg: TrainConfig, device: torch.device):
    if not cfg.loss.vgg_weights:
        return None
    from .models import VGGFeatureExtractor

    return VGGFeatureExtractor.from_file(cfg.loss.vgg_weights).to(device).eval()


def stage_heatmaps(landmarks: torch.Tensor, sigmas: tuple[float, ...]) -> dict[int, torch.Tensor]:
    """Target heatmaps of each stage's landmarks at its resolution (16, 32, 64), rendered on the device."""
    out = {}
    for (size, sigma), idx in zip(zip((16, 32, 64), sigmas), STAGE_LANDMARKS):
        sub = landmarks[:, list(idx)]
        out[size] = render_heatmaps_torch(sub, size=size, sigma=sigma, hr_size=128)
    return out


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at `step`."""
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup) if o.warmup else 1.0
    if o.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    if o.schedule == "step" and o.step_every:
        return warm * 0.5 ** (step // o.step_every)
    return warm


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


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


def _unwrap(m: torch.nn.Module) -> torch.nn.Module:
    m = getattr(m, "_orig_mod", m)  # torch.compile
    return getattr(m, "module", m)  # DDP


def weights_sha256(*modules: torch.nn.Module) -> str:
    """Digest of the modules' parameters: the same on every DDP rank unless the replicas drifted apart."""
    h = hashlib.sha256()
    for m in modules:
        for p in m.parameters():
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def all_finite(*losses: torch.Tensor) -> bool:
    """Whether every loss is finite on every rank: ranks must agree to step or to skip, or DDP's gradient
    all-reduce waits forever for the rank that skipped."""
    ok = torch.stack([torch.isfinite(x.detach()).all() for x in losses]).all().float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [-1,1] -> 0..255 float, rounded like a saved PNG."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round()


# ----------------------------------------------------------------------------------------------------------
# validation


@torch.no_grad()
def validate(generator: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> dict[str, float]:
    """PSNR/SSIM (Y) on the store's val split, overall and inside/outside the occlusion mask."""
    arrays = ["hr", cfg.data.input] + (["occlusion_mask"] if cfg.data.input == "lr_occluded" else [])
    # rank 0 validates alone, on the whole split (not the rank's share torch.distributed would give it)
    ds = StoreDataset(cfg.data.store, cfg.data.val_split, arrays=tuple(arrays), seed=0, shuffle=False,
                      rank=0, world_size=1)
    loader = make_loader(ds, batch_size=cfg.data.batch_size, num_workers=0)
    sums: dict[str, float] = {}
    n = 0
    generator.eval()
    for i, batch in enumerate(DeviceBatcher(loader, device)):
        if i >= cfg.val_batches:
            break
        sr = generator(batch[cfg.data.input])["final"]
        q = quality(to_uint8(sr), to_uint8(batch["hr"]), batch.get("occlusion_mask"))
        for k, v in q.items():
            finite = v[torch.isfinite(v)]
            sums[k] = sums.get(k, 0.0) + float(finite.sum())
        n += sr.shape[0]
    generator.train()
    return {f"val/{k}": v / max(n, 1) for k, v in sums.items()}


# ----------------------------------------------------------------------------------------------------------
# the loop


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
    ddp, master = world > 1, rank == 0
    seed_everything(cfg.seed)  # every rank starts from the same weights, so its EMA copy does too
    run_dir = Path(cfg.run_dir)
    use_bf16 = cfg.bf16 and device.type == "cuda"
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # model, EMA, discriminator, optimisers
    generator = build_generator(cfg, device).to(device)
    discriminator = global_discriminator().to(device)
    if cfg.channels_last and device.type == "cuda":
        generator = generator.to(memory_format=torch.channels_last)
        discriminator = discriminator.to(memory_format=torch.channels_last)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    seed_everything(cfg.seed + rank)  # from here on each rank draws its own random stream
    o = cfg.optim
    opt_g = torch.optim.Adam(generator.parameters(), lr=o.lr_g, betas=o.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=o.lr_d, betas=o.betas)
    weights = loss_weights(cfg)
    vgg = load_vgg(cfg, device)
    if master:
        log.info("generator %d parameters, discriminator %d", count_parameters(generator),
                 count_parameters(discriminator))

    # data
    arrays = ("hr", cfg.data.input, "landmarks")
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
        generator.load_state_dict(ck["generator"])
        discriminator.load_state_dict(ck["discriminator"])
        ema.load_state_dict(ck["ema"])
        opt_g.load_state_dict(ck["opt_g"])
        opt_d.load_state_dict(ck["opt_d"])
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

    g_model, d_model = generator, discriminator
    if ddp:
        ids = [device.index] if device.type == "cuda" else None
        g_model = torch.nn.parallel.DistributedDataParallel(generator, device_ids=ids)
        d_model = torch.nn.parallel.DistributedDataParallel(discriminator, device_ids=ids)
    if cfg.compile:
        g_model, d_model = torch.compile(g_model), torch.compile(d_model)

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

    def checkpoint() -> None:
        """Rank 0 writes the weights and every rank's loader position and random streams (collective)."""
        mine = {"loader": batcher.state_dict(), "rng": rng_state(device), "aug_rng": aug_rng.get_state(),
                "weights_sha256": weights_sha256(generator, discriminator)}
        ranks = [mine]
        if ddp:
            ranks = [None] * world if master else None
            dist.gather_object(mine, ranks, dst=0)
        if master:
            if len({r["weights_sha256"] for r in ranks}) > 1:
                log.error("step %d: the ranks' weights differ (DDP replicas out of sync)", step)
            save_checkpoint(run_dir, step, {
                "generator": _unwrap(generator).state_dict(), "discriminator": _unwrap(discriminator).state_dict(),
                "ema": ema.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "step": step, "epoch": epoch, "nonfinite": nonfinite, "ranks": ranks, "config": cfg.to_dict(),
            }, keep=cfg.keep_checkpoints)
        if ddp:
            dist.barrier()  # no rank runs on (or exits) before the checkpoint is on disk

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and master), dynamic_ncols=True)
    t_start, samples, wait = time.perf_counter(), 0, 0.0
    last: dict[str, float] = {}
    generator.train()
    discriminator.train()
    while step < cfg.steps:
        t_ready = time.perf_counter()
        for batch in batcher:
            wait += time.perf_counter() - t_ready  # time the step waited for data
            lr_in, hr, landmarks = batch[cfg.data.input], batch["hr"], batch["landmarks"]
            if cfg.data.flip:
                flipped = flip_batch_torch({"hr": hr, "lr": lr_in, "landmarks": landmarks},
                                           torch.rand(hr.shape[0], device=device, generator=aug_rng) < 0.5, channels_last=False)
                hr, lr_in, landmarks = flipped["hr"], flipped["lr"], flipped["landmarks"]
            if cfg.channels_last and device.type == "cuda":
                hr, lr_in = hr.contiguous(memory_format=torch.channels_last), lr_in.contiguous(memory_format=torch.channels_last)
            for group in opt_g.param_groups:
                group["lr"] = o.lr_g * lr_at(step, cfg)
            for group in opt_d.param_groups:
                group["lr"] = o.lr_d * lr_at(step, cfg)
            targets = {"hr": hr_pyramid(hr), "heatmaps": stage_heatmaps(landmarks, cfg.data.heatmap_sigma)}
            adversarial = step >= o.gan_start and weights.adversarial > 0

            with amp:
                out = g_model(lr_in)
            # discriminator step (LSGAN) on the detached output, finished before G's loss uses D
            loss_d = torch.zeros((), device=device)
            if adversarial:
                discriminator.requires_grad_(True)
                with amp:
                    loss_d = lsgan_discriminator_loss(d_model(hr), d_model(out["final"].detach()))
                opt_d.zero_grad(set_to_none=True)
                if all_finite(loss_d):
                    loss_d.backward()
                    if o.grad_clip:
                        torch.nn.utils.clip_grad_norm_(discriminator.parameters(), o.grad_clip)
                    opt_d.step()
                discriminator.requires_grad_(False)  # G's step needs gradients through D, not for D
            # generator step
            with amp:
                d_fake = d_model(out["final"]) if adversarial else None
                loss_g, terms = generator_loss(out, targets, weights, vgg, d_fake)
            if not all_finite(loss_g, loss_d):
                nonfinite += 1
                log.warning("step %d: non-finite loss (G %s, D %s); step skipped (%d so far)", step,
                            loss_g.item(), loss_d.item(), nonfinite)
                opt_g.zero_grad(set_to_none=True)
                if nonfinite >= cfg.max_nonfinite:
                    checkpoint()
                    raise TrainingStopped(f"stopped: {nonfinite} steps had a NaN/inf loss (limit max_nonfinite="
                                          f"{cfg.max_nonfinite}); last good checkpoint in {run_dir}")
                t_ready = time.perf_counter()
                continue
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_(generator.parameters(), o.grad_clip)
            opt_g.step()
            ema_update(ema, _unwrap(generator), o.ema_decay)
            step += 1
            samples += hr.shape[0]
            bar.update(1)

            if master and (step % cfg.log_every == 0 or step == cfg.steps):
                elapsed = time.perf_counter() - t_start
                last = {"loss/g": loss_g.item(), "loss/d": loss_d.item(),
                        **{f"loss/{k}": float(v) for k, v in terms.items()},
                        "perf/samples_per_s": samples / elapsed, "perf/loader_wait": wait / elapsed,
                        "lr/g": opt_g.param_groups[0]["lr"]}
                if device.type == "cuda":
                    last["perf/gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                bar.set_postfix(g=f"{last['loss/g']:.3f}", d=f"{last['loss/d']:.3f}",
                                sps=f"{last['perf/samples_per_s']:.1f}")
                metrics_file.write(json.dumps({"step": step, **last}) + "\n")
                metrics_file.flush()
                if writer:
                    for k, v in last.items():
                        writer.add_scalar(k, v, step)
            if master and writer and cfg.image_every and step % cfg.image_every == 0:
                grid = torch.cat([F.interpolate(lr_in[:4].float(), size=128, mode="nearest"),
                                  out["final"][:4].float(), hr[:4].float()], dim=3)
                writer.add_images("lr_output_hr", (grid.clamp(-1, 1) + 1) / 2, step)
                writer.add_images("heatmaps_stage3", out["stages"][2]["heatmaps"][:4].float().amax(1, keepdim=True), step)
            if master and cfg.val_every and step % cfg.val_every == 0 and _has_split(cfg):
                vals = validate(ema, cfg, device)
                metrics_file.write(json.dumps({"step": step, **vals}) + "\n")
                if writer:
                    for k, v in vals.items():
                        writer.add_scalar(k, v, step)
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


def _has_split(cfg: TrainConfig) -> bool:
    import zarr

    try:
        return cfg.data.val_split in zarr.open_group(cfg.data.store, mode="r").group_keys()
    except Exception:  # noqa: BLE001 - remote stores etc.: validation is best effort
        return False
