"""Pro-UIGAN on one CUDA GPU in one command (<= 8 minutes): speed, memory, precision, then a short training
run evaluated on the FSRNet sets.

    python benchmarks/gpu.py --data celeba.zarr --benchmark ../shared/data/benchmark/fsrnet --out gpu.json

Reports, in order:
  1. training samples/s at batch 32 with bf16 autocast, eager and under torch.compile (timed after warm-up);
     peak GPU memory; the share of the step the loop waited for the loader;
  2. fp32 vs bf16: the generator loss of the same 20 steps from the same weights and batches, step by step;
  3. a training run of `--train-seconds` (the GPU recipe: pipelines/train/default.toml with the CPU recipe's
     residual stages and PSNR-first schedule unless --reference), then `proui-train eval` of its EMA on the
     FSRNet CelebA-1000 and Helen-50 sets next to bicubic.
`--tiny` runs every part at toy size on the CPU (the test suite does, so the script cannot rot).

On the project's device machine (its python has torch but not zarr/dask): carry a small store and the
benchmark sets in an ignored folder, and zarr/numcodecs/donfig/crc32c wheels (see the device README):
    proui-data build --source celeba --root ../shared/data/celeba --split train --limit 1200 \
        --recipe pipelines/gpu_subset.toml --out .gpu/celeba.zarr   # hr + lr_occluded + landmarks only
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from proui_train import train as train_mod  # noqa: E402
from proui_train.train import make_batcher  # noqa: E402
from proui_train.config import TrainConfig, load_config  # noqa: E402
from proui_train.evaluate import evaluate  # noqa: E402
from proui_train.runtime import pick_device, seed_everything  # noqa: E402
from proui_train.trainer import ProUIGANTrainer  # noqa: E402


def gpu_config(store: str, run_dir: str, batch: int, steps: int, reference: bool, device: str) -> TrainConfig:
    sets = {"data.store": store, "run_dir": run_dir, "steps": steps, "data.batch_size": batch, "device": device,
            "log_every": 50, "val_every": 0, "ckpt_every": 0, "image_every": 0}
    if not reference:  # the CPU recipe's deviations, measured to speed early learning
        sets.update({"model.residual": True, "loss.mask_weight": 1.0, "optim.warmup": 100,
                     "optim.gan_start": max(steps // 2, 1)})
    return load_config(None, sets)


def batches(cfg: TrainConfig, device: torch.device, workers: int):
    """Endless device batches of the train split, through the trainer's own loader."""
    batcher = make_batcher(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=workers)),
                           device, 0, 1)
    epoch = 0
    while True:
        batcher.set_epoch(epoch)
        yield from batcher
        epoch += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(cfg: TrainConfig, device: torch.device, steps: int, warmup: int, workers: int) -> dict:
    """samples/s, loader-wait share and peak memory of `steps` timed training steps after `warmup`."""
    seed_everything(0)
    trainer = ProUIGANTrainer(cfg, device)
    it = batches(cfg, device, workers)
    for step in range(warmup):
        trainer.train_step(next(it), step)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    wait, t0 = 0.0, time.perf_counter()
    for step in range(warmup, warmup + steps):
        t = time.perf_counter()
        batch = next(it)
        wait += time.perf_counter() - t
        trainer.train_step(batch, step)
    sync(device)
    elapsed = time.perf_counter() - t0
    out = {"samples_per_s": steps * cfg.data.batch_size / elapsed, "loader_wait": wait / elapsed}
    if device.type == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def precision_agreement(cfg: TrainConfig, device: torch.device, steps: int) -> dict:
    """Generator loss per step for fp32 and bf16 from the same weights and the same batches."""
    fixed = []
    it = batches(cfg, device, 0)
    for _ in range(steps):
        fixed.append({k: v.clone() for k, v in next(it).items()})
    losses = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        c = dataclasses.replace(cfg, bf16=bf16)
        seed_everything(0)
        trainer = ProUIGANTrainer(c, device)
        if device.type != "cuda" and bf16:  # the trainer autocasts on CUDA only; on CPU force it for the check
            trainer.amp = torch.autocast("cpu", dtype=torch.bfloat16)
        losses[name] = [float(trainer.train_step(b, s, torch.Generator(device).manual_seed(s))["g"])
                        for s, b in enumerate(fixed)]
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses["fp32"], losses["bf16"])]
    return {**losses, "max_relative_difference": max(rel), "mean_relative_difference": sum(rel) / len(rel)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a proui store with a train split (lr_occluded)")
    p.add_argument("--benchmark", help="FSRNet benchmark folder for the final evaluation")
    p.add_argument("--out", default="gpu.json")
    p.add_argument("--run-dir", default="runs/gpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-seconds", type=float, default=240.0)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--reference", action="store_true", help="train the reference configuration instead")
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (the test suite's smoke run)")
    a = p.parse_args()
    device = torch.device("cpu") if a.tiny else pick_device("auto")
    batch, timed, warm, agree = (2, 1, 1, 2) if a.tiny else (a.batch_size, 50, 10, 20)
    workers = 0 if a.tiny else a.workers
    cfg = gpu_config(a.data, a.run_dir, batch, 10**6, a.reference, str(device))
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "batch_size": batch, "torch": torch.__version__}
    report["eager_bf16"] = throughput(cfg, device, timed, warm, workers)
    print("eager bf16:", report["eager_bf16"], flush=True)
    if device.type == "cuda":
        compiled = dataclasses.replace(cfg, compile=True)
        report["compiled_bf16"] = throughput(compiled, device, timed, warm, workers)
        print("compiled bf16:", report["compiled_bf16"], flush=True)
    report["precision"] = precision_agreement(cfg, device, agree)
    print("fp32 vs bf16 max relative loss difference:", report["precision"]["max_relative_difference"], flush=True)

    # a timed training run: the step count that fits the budget at the measured speed
    sps = report.get("compiled_bf16", report["eager_bf16"])["samples_per_s"]
    steps = 2 if a.tiny else max(100, int(a.train_seconds * sps / batch))
    run_cfg = gpu_config(a.data, a.run_dir, batch, steps, a.reference, str(device))
    t0 = time.perf_counter()
    result = train_mod.train(run_cfg, progress=False, overwrite=True)  # a rerun times a fresh run
    report["train"] = {"steps": steps, "seconds": time.perf_counter() - t0,
                       "final_losses": {k: v for k, v in result.items() if k.startswith("loss/")}}
    print("trained", steps, "steps in", round(report["train"]["seconds"], 1), "s", flush=True)
    if a.benchmark:
        limit = 8 if a.tiny else None
        report["fsrnet"] = {"model": evaluate(a.run_dir, None, a.benchmark, None, device=str(device), identity=False,
                                              limit=limit),
                            "bicubic": evaluate(None, "bicubic", a.benchmark, None, identity=False, limit=limit)}
        for name in ("celeba", "helen"):
            if name in report["fsrnet"]["model"]:
                m, b = report["fsrnet"]["model"][name], report["fsrnet"]["bicubic"][name]
                print(f"{name}: PSNR-Y {m['psnr_y']:.2f} (bicubic {b['psnr_y']:.2f}), "
                      f"SSIM-Y {m['ssim_y']:.4f} (bicubic {b['ssim_y']:.4f})", flush=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
