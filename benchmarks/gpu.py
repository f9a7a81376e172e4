"""Pro-UIGAN on one CUDA GPU in one device call (<= 9 minutes): speed, precision, then the priors issue's
comparison runs, trained side by side on the one GPU.

    python benchmarks/gpu.py --data .gpu/celeba.zarr --out $OUT/gpu.json --releases $OUT

Reports, in order; --out is rewritten after each part, so a call cut short keeps what finished:
  1. training samples/s at batch 32 with bf16 autocast (eager), peak GPU memory, the share of the step the loop
     waited for the loader;
  2. fp32 vs bf16: the generator loss of the same 20 steps from the same weights and batches, step by step;
  3. the runs, one process each, all on the GPU at once and all of the same step count (equal samples): the
     recipe of pipelines/train/cpu.toml (hourglass priors, residual stages and heatmaps) at seeds 0 and 1, the
     plain network at seeds 0 and 1, and the recipe with the paper's adversarial phase from half-way (global and
     local discriminators, discriminator feature matching) at two strengths. The step count is what fits `--train-seconds` at the
     speed of part 1 times `--concurrency-gain` shared among the runs; a run still going at `--deadline` is
     stopped and its latest checkpoint used. Each run's EMA goes to `--releases` as `<name>.safetensors`, a
     release weights file (config and step in its metadata) that `proui-train eval` reads on any machine;
  4. training samples/s under torch.compile (last: compiling is the slowest part and the least needed);
  5. with --benchmark, the first run's EMA and bicubic on the FSRNet sets.
`--tiny` runs every part at toy size on the CPU (the test suite does, so the script cannot rot).

On the project's device machine (Python 3.12 with torch, no zarr and no dask) the command carries a store of
the four arrays training reads and zarr's wheels (docs/training.md#a-gpu-run-in-one-command):
    proui-data build --source celeba --root ../shared/data/celeba --split train --limit 1280 \\
        --holdout-labelled attr --recipe pipelines/gpu_subset.toml --out .gpu/celeba.zarr
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proui_train import train as train_mod  # noqa: E402
from proui_train.config import TrainConfig, config_from_dict, load_config  # noqa: E402
from proui_train.runtime import pick_device, release_run, seed_everything  # noqa: E402
from proui_train.train import make_batcher  # noqa: E402
from proui_train.trainer import ProUIGANTrainer  # noqa: E402

RECIPE = ROOT / "pipelines" / "train" / "cpu.toml"  # the model and loss choices measured on the CPU


def gpu_config(store: str, run_dir: str, batch: int, steps: int, device: str, workers: int = 0,
               **changes) -> TrainConfig:
    """The CPU recipe at GPU batch size, no validation (the carried store has no val split), for `steps`."""
    sets = {"data.store": store, "run_dir": run_dir, "steps": steps, "data.batch_size": batch, "device": device,
            "data.workers": workers, "log_every": 50, "val_every": 0, "image_every": 0,
            "ckpt_every": max(steps // 8, 1), "optim.decay_steps": max(steps // 4, 1),
            "optim.warmup": min(100, max(steps // 20, 1)), "optim.gan_start": 10**9, **changes}
    return load_config(RECIPE, sets)


def run_variants(steps: int, tiny: bool) -> dict[str, dict]:
    """The comparison runs: name -> config changes."""
    gan = {"optim.gan_start": max(steps // 2, 1), "loss.adversarial": 1e-3, "loss.local_adversarial": 1e-3,
           "loss.feature_matching": 0.1}
    runs = {"proui_s0": {}, "plain_s0": {"model.arch": "plain"}, "proui_gan_s0": gan}
    if not tiny:  # a second seed of each network, and a GAN phase ten times as strong
        runs.update({"proui_s1": {"seed": 1}, "plain_s1": {"model.arch": "plain", "seed": 1},
                     "proui_gan10_s0": {**gan, "loss.adversarial": 1e-2, "loss.local_adversarial": 1e-2,
                                        "loss.feature_matching": 1.0}})
    return runs


def batches(cfg: TrainConfig, device: torch.device):
    """Endless device batches of the train split, through the trainer's own loader."""
    batcher = make_batcher(cfg, device, 0, 1)
    epoch = 0
    while True:
        batcher.set_epoch(epoch)
        yield from batcher
        epoch += 1


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(cfg: TrainConfig, device: torch.device, steps: int, warmup: int) -> dict:
    """samples/s, loader-wait share and peak memory of `steps` timed training steps after `warmup`."""
    seed_everything(0)
    trainer = ProUIGANTrainer(cfg, device)
    it = batches(cfg, device)
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
    it = batches(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, workers=0)), device)
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


def _train_child(cfg: dict) -> None:
    train_mod.train(config_from_dict(cfg), progress=False, overwrite=True)


def logged_rows(run_dir: Path) -> list[dict]:
    file = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


def comparison_runs(configs: dict[str, TrainConfig], deadline: float, releases: Path | None) -> dict:
    """Train every config in its own process at once; stop those past `deadline` (time.monotonic()); release
    each run's latest checkpoint. Returns per run: steps reached, seconds, exit code, the logged losses."""
    spawn = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    t0 = time.monotonic()
    procs = {name: spawn.Process(target=_train_child, args=(cfg.to_dict(),), name=name)
             for name, cfg in configs.items()}
    for p in procs.values():
        p.start()
    ended: dict[str, float] = {}
    while len(ended) < len(procs):
        for name, p in procs.items():
            if name not in ended and not p.is_alive():
                ended[name] = time.monotonic() - t0
        if time.monotonic() > deadline:
            for name, p in procs.items():
                if name not in ended:
                    p.terminate()  # checkpoints are written atomically: the latest one stays readable
                    p.join(30)
                    ended[name] = time.monotonic() - t0
            break
        time.sleep(1.0)
    report = {}
    for name, cfg in configs.items():
        run_dir = Path(cfg.run_dir)
        logged = logged_rows(run_dir)
        row = {"seconds": ended[name], "exit_code": procs[name].exitcode, "planned_steps": cfg.steps,
               "last_logged": logged[-1] if logged else {}, "curve": logged}
        try:
            folder, meta = release_run(run_dir, run_dir / "release")
            row["steps"] = meta["step"]
            if releases is not None:
                releases.mkdir(parents=True, exist_ok=True)
                (releases / f"{name}.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
        except Exception as e:  # a run that died before its first checkpoint: say so, keep the others
            row["release_error"] = f"{type(e).__name__}: {e}"
        report[name] = row
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="a proui store with a train split (lr_occluded)")
    p.add_argument("--benchmark", help="FSRNet benchmark folder for the final evaluation")
    p.add_argument("--out", default="gpu.json")
    p.add_argument("--run-dir", default="runs/gpu", help="folder of the runs' folders")
    p.add_argument("--releases", help="folder for each run's EMA weights file (<name>.safetensors)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--train-seconds", type=float, default=240.0, help="time the runs should take together")
    p.add_argument("--concurrency-gain", type=float, default=2.0,
                   help="assumed speed of all runs at once over one alone (sets the step count)")
    p.add_argument("--max-steps", type=int, default=2000, help="cap on the runs' steps (epochs of a small store)")
    p.add_argument("--deadline", type=float, default=420.0, help="seconds from start after which runs stop")
    p.add_argument("--workers", type=int, default=2, help="loader processes per run")
    p.add_argument("--tiny", action="store_true", help="toy sizes on the CPU (the test suite's smoke run)")
    a = p.parse_args()
    start = time.monotonic()
    device = torch.device("cpu") if a.tiny else pick_device("auto")
    batch, timed, warm, agree = (2, 1, 1, 2) if a.tiny else (a.batch_size, 50, 10, 20)
    workers = 0 if a.tiny else a.workers
    out = Path(a.out)
    report: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                    "batch_size": batch, "torch": torch.__version__, "recipe": str(RECIPE.relative_to(ROOT))}

    def write(part: str) -> None:
        out.write_text(json.dumps(report, indent=2))
        print(f"{part} ({time.monotonic() - start:.0f} s):", json.dumps(report[part])[:600], flush=True)

    base = gpu_config(a.data, str(Path(a.run_dir) / "bench"), batch, 10**6, str(device), workers)
    report["eager_bf16"] = throughput(base, device, timed, warm)
    write("eager_bf16")
    report["precision"] = precision_agreement(base, device, agree)
    write("precision")

    # the runs: equal steps, sized from the measured speed shared among them
    runs_alone = report["eager_bf16"]["samples_per_s"] / batch  # steps/s of one run alone
    names = run_variants(0, a.tiny)
    fit = int(a.train_seconds * runs_alone * a.concurrency_gain / len(names))
    steps = 2 if a.tiny else max(100, min(fit, a.max_steps))
    configs = {name: gpu_config(a.data, str(Path(a.run_dir) / name), batch, steps, str(device), workers, **changes)
               for name, changes in run_variants(steps, a.tiny).items()}
    report["runs"] = {"steps": steps, "samples_per_run": steps * batch,
                      "runs": comparison_runs(configs, start + a.deadline, Path(a.releases) if a.releases else None)}
    write("runs")

    if device.type == "cuda":
        report["compiled_bf16"] = throughput(dataclasses.replace(base, compile=True), device, timed, warm)
        write("compiled_bf16")
    if a.benchmark:
        from proui_train.evaluate import evaluate  # here: evaluation needs dlib, absent on the device machine

        limit = 8 if a.tiny else None
        first = Path(a.run_dir) / "proui_s0"
        report["fsrnet"] = {"model": evaluate(str(first), None, a.benchmark, None, device=str(device),
                                              identity=False, limit=limit),
                            "bicubic": evaluate(None, "bicubic", a.benchmark, None, identity=False, limit=limit)}
        write("fsrnet")
    print("wrote", out)


if __name__ == "__main__":
    main()
