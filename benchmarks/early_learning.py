"""What speeds early learning on a CPU budget: adversarial start, learning-rate warm-up, batch size, side by side.

    nice python benchmarks/early_learning.py --store celeba.zarr --samples 480 --seeds 0 1 --jobs 2 \
        --out early_learning.json

Each setting is `pipelines/train/cpu.toml` plus overrides, trained from scratch for the same number of
*samples* (steps = samples / batch) with a constant learning rate (the recipe's WSD decay would otherwise
fall inside a short run and decide the result), in its own `proui-train run` process with one thread.
The trainer's own validation (64 val faces, raw and EMA, PSNR-Y on the occluded input) is logged at four
equally spaced points; reported: EMA and raw PSNR-Y at each, CPU seconds per training sample (the process's
user+sys time, which holds up on a shared machine), and the spread over seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

RECIPE = Path(__file__).resolve().parents[1] / "pipelines" / "train" / "cpu.toml"
# name -> (batch size, overrides). "cpu" is the recipe as shipped (no adversarial term within the budget,
# 20 warm-up steps, batch 4).
SETTINGS: dict[str, tuple[int, dict[str, str]]] = {
    "cpu": (4, {}),
    "gan_from_start": (4, {"optim.gan_start": "0"}),
    "no_warmup": (4, {"optim.warmup": "0"}),
    "batch2": (2, {}),
    "batch8": (8, {}),
}


def command(name: str, seed: int, args: argparse.Namespace, run_dir: Path) -> list[str]:
    batch, overrides = SETTINGS[name]
    steps = args.samples // batch
    sets = {"steps": str(steps), "seed": str(seed), "data.batch_size": str(batch), "optim.schedule": '"constant"',
            "val_every": str(max(1, steps // 4)), "ckpt_every": "0", "image_every": "0", "log_every": "10",
            "device": '"cpu"', **overrides}
    cmd = [sys.executable, "-m", "proui_train.cli", "run", "--config", str(RECIPE), "--data", args.store,
           "--run-dir", str(run_dir), "--no-progress"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def read_curve(run_dir: Path, batch: int) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{"samples": r["step"] * batch, "ema": r["val/psnr_y"], "raw": r["val_raw/psnr_y"]}
            for r in rows if "val/psnr_y" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--samples", type=int, default=480)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--run-root", type=Path, default=Path("runs/early_learning"))
    ap.add_argument("--out", type=Path, default=Path("early_learning.json"))
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    todo = [(n, s) for n in args.settings for s in args.seeds]
    running: dict[int, tuple[str, int, subprocess.Popen]] = {}
    results: dict[str, dict] = {}
    while todo or running:
        while todo and len(running) < args.jobs:
            name, seed = todo.pop(0)
            run_dir = args.run_root / f"{name}_seed{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)  # always a fresh run
            run_dir.mkdir(parents=True)
            log = open(run_dir.parent / f"{name}_seed{seed}.log", "w")
            p = subprocess.Popen(command(name, seed, args, run_dir), env=env, stdout=log, stderr=subprocess.STDOUT)
            running[p.pid] = (name, seed, p)
        pid, status, usage = os.wait4(-1, 0)
        if pid not in running:
            continue
        name, seed, _ = running.pop(pid)
        if status != 0:
            print(f"{name} seed {seed}: failed (exit status {status}); see its log", file=sys.stderr)
            continue
        batch = SETTINGS[name][0]
        curve = read_curve(args.run_root / f"{name}_seed{seed}", batch)
        cpu = usage.ru_utime + usage.ru_stime
        results.setdefault(name, {"batch": batch, "runs": {}})["runs"][seed] = {
            "curve": curve, "cpu_s_per_sample": cpu / args.samples}
        emas = " ".join(f"{c['ema']:.2f}" for c in curve)
        print(f"{name} seed {seed}: EMA {emas}; "
              f"{cpu / args.samples:.2f} CPU-s/sample", flush=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\n{args.samples} samples per run, seeds {args.seeds}; val PSNR-Y (64 occluded val faces), "
          "mean over seeds (min-max)")
    print(f"{'setting':<16} {'batch':>5} " + " ".join(f"{'EMA@' + str(q) + '%':>18}" for q in (25, 50, 75, 100))
          + f" {'raw@100%':>9} {'CPU-s/sample':>13}")
    for name, r in results.items():
        runs = list(r["runs"].values())
        n = min(len(x["curve"]) for x in runs)
        ema = np.array([[c["ema"] for c in x["curve"][:n]] for x in runs])
        raw = np.array([x["curve"][n - 1]["raw"] for x in runs])
        cells = " ".join(f"{m:>7.2f} ({lo:.2f}-{hi:.2f})" for m, lo, hi in zip(ema.mean(0), ema.min(0), ema.max(0)))
        print(f"{name:<16} {r['batch']:>5} {cells} {raw.mean():>9.2f} "
              f"{np.mean([x['cpu_s_per_sample'] for x in runs]):>13.2f}")


if __name__ == "__main__":
    main()
