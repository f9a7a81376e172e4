"""Cross-modal attention options: heads, 1/sqrt(d) scaling and normalisation, measured, to choose the defaults.

Trains Pro-UIGAN once per setting with the same seed, steps and batch on a store's `train` split (through
`proui_train.train.train`, config = `pipelines/train/default.toml` + overrides), then evaluates each final
**raw** generator (not the EMA: with ema_decay 0.999 a short run's EMA is still ~90 % its initial weights) in
eval mode on the first `--val-samples` valid rows of the `val` split:

- PSNR / SSIM on Y (`proui_train.metrics.quality`), overall and inside / outside the occlusion mask;
- NME of the stage-3 refined heatmaps (`proui_train.evaluate.heatmaps_to_points` + `nme`, outer-eye-corner
  normalised) against the store's landmarks;
- heatmap MSE of each stage's refined heatmaps and learned prior against targets rendered like training's.

Also reported: seconds per training step (the trainer's own samples/s over the whole run; the machine may be
shared, so the load average is recorded with it) and the training losses averaged over the last
`--loss-window` steps (a single step's losses are one batch's). For noise, the paired standard error of each
setting's per-sample difference to the reference on the same val rows (evaluation-sample noise only); the
`reference_seed1` setting (same config, seed 1) shows what a different initialisation and data order does.
Cost: wall seconds per step and process CPU seconds per step (the latter holds up on a busy machine; with
`--threads 1` it is the single-core time). `--jobs N` trains N settings at once in spawned processes.

    nice -n 19 python benchmarks/attention_options.py --store celeba.zarr --steps 120 --batch-size 4 \
        --val-samples 200 --threads 1 --jobs 2 --out attention_options.json
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# name -> config overrides on top of the default config. The reference is the released code's block.
SETTINGS: dict[str, dict[str, Any]] = {
    "reference": {},
    "scale": {"model.scale_attention": True},
    "heads4": {"model.heads": 4},
    "heads4_scale": {"model.heads": 4, "model.scale_attention": True},
    "instance_norm": {"model.norm": "instance"},
    "no_norm": {"model.norm": "none"},
    "reference_seed1": {"seed": 1},
}
PAIRED = ("psnr_y", "ssim_y", "nme", "hm3")  # per-sample metrics compared with the reference


def make_config(name: str, store: str, steps: int, batch_size: int, run_root: Path, seed: int):
    from proui_train.config import load_config

    overrides = {"data.store": store, "steps": steps, "data.batch_size": batch_size, "seed": seed,
                 "run_dir": str(run_root / name), "device": "cpu", "log_every": 1, "val_every": 0,
                 "ckpt_every": 0, "image_every": 0, **SETTINGS[name]}
    return load_config(None, overrides)


def train_losses(run_dir: Path, window: int) -> dict[str, float]:
    """Mean of every logged loss over the last `window` steps of metrics.jsonl (log_every = 1)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss/g" in r][-window:]
    keys = [k for k in rows[-1] if k.startswith("loss/")]
    return {k[5:]: float(np.mean([r[k] for r in rows])) for k in keys}


def read_val(store: str, n: int) -> dict[str, torch.Tensor]:
    """The first `n` valid rows of the val split: hr, lr_occluded (uint8 NCHW float), mask, landmarks."""
    import zarr

    g = zarr.open_group(store, mode="r")["val"]
    rows = np.flatnonzero(g["valid"][:])[:n]
    stop = int(rows[-1]) + 1
    take = lambda name: g[name][:stop][rows]  # noqa: E731 - contiguous read, then the valid rows
    return {
        "hr": torch.from_numpy(take("hr")).permute(0, 3, 1, 2).float(),
        "lr": torch.from_numpy(take("lr_occluded")).permute(0, 3, 1, 2).float(),
        "mask": torch.from_numpy(take("occlusion_mask")).float()[:, None] / 255,
        "landmarks": torch.from_numpy(take("landmarks")),
    }


@torch.no_grad()
def evaluate_generator(generator: torch.nn.Module, val: dict[str, torch.Tensor], sigmas, batch: int = 16
                       ) -> dict[str, np.ndarray]:
    """Per-sample metrics of `generator` (eval mode) on `val`."""
    from proui_train.evaluate import heatmaps_to_points, nme
    from proui_train.metrics import quality
    from proui_train.runtime import from_uint8, to_uint8
    from proui_train.trainer import StageHeatmaps

    generator.eval()
    per: dict[str, list[np.ndarray]] = {}
    for i in range(0, val["hr"].shape[0], batch):
        hr, lr, mask, lms = (val[k][i:i + batch] for k in ("hr", "lr", "mask", "landmarks"))
        out = generator(from_uint8(lr))
        sr = to_uint8(out["final"])
        got = {k: v.numpy() for k, v in quality(sr, hr, mask).items()}
        got["nme"] = nme(heatmaps_to_points(out["stages"][-1]["heatmaps"]).numpy(), lms.numpy())
        targets = StageHeatmaps(sigmas)(lms)
        for s, stage in enumerate(out["stages"], 1):
            t = targets[stage["heatmaps"].shape[-1]]
            got[f"hm{s}"] = ((stage["heatmaps"] - t) ** 2).flatten(1).mean(1).numpy()
            got[f"prior{s}"] = ((stage["prior"] - t) ** 2).flatten(1).mean(1).numpy()
        for k, v in got.items():
            per.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
    return {k: np.concatenate(v) for k, v in per.items()}


def run_setting(name: str, args: argparse.Namespace, val: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    from proui_train.runtime import load_generator
    from proui_train.train import train

    cfg = make_config(name, args.store, args.steps, args.batch_size, args.run_root, args.seed)
    shutil.rmtree(cfg.run_dir, ignore_errors=True)  # a fresh run, never a resumed or appended one
    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(cfg, progress=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    generator = load_generator(cfg.run_dir, torch.device("cpu"), use_ema=False)
    t1 = time.perf_counter()
    per = evaluate_generator(generator, val, cfg.data.heatmap_sigma)
    summary = {
        "overrides": SETTINGS[name],
        "seed": cfg.seed,
        "parameters": sum(p.numel() for p in generator.parameters()),
        "sec_per_step": cfg.data.batch_size / result["perf/samples_per_s"],
        "cpu_s_per_step": cpu / cfg.steps,  # process CPU time (all threads): robust to a shared machine
        "train_wall_s": wall,
        "eval_wall_s": time.perf_counter() - t1,
        "loadavg_1min_start_end": [load0, os.getloadavg()[0]],
        "nonfinite_steps": result["nonfinite"],
        "train_loss_last": train_losses(Path(cfg.run_dir), args.loss_window),
        "val": {k: float(np.nanmean(v)) for k, v in per.items()},
        "val_nme_nan": int(np.isnan(per["nme"]).sum()),
    }
    return summary, per


def _worker(name: str, args: argparse.Namespace, val: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """One setting in a spawned process (its own torch thread count)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    return run_setting(name, args, val)


def paired_deltas(per: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Mean and standard error of the per-sample difference (setting - reference) on the same val rows."""
    out = {}
    for k in PAIRED:
        d = per[k] - ref[k]
        d = d[np.isfinite(d)]
        out[k] = {"delta": float(d.mean()), "se": float(d.std(ddof=1) / math.sqrt(len(d)))}
    return out


def table(results: dict[str, dict]) -> str:
    """Val metrics (raw generator), training losses (mean of the last steps) and cost, one row per setting."""
    def delta(r: dict, key: str, fmt: str) -> str:
        d = r.get("vs_reference", {}).get(key)
        return f"{d['delta']:{fmt}}±{d['se']:{fmt[1:]}}" if d else "-"

    head = (f"{'setting':<16}{'cpu s/st':>9}{'wall s/st':>10}{'PSNR-Y':>8}{'dPSNR±se':>15}{'SSIM-Y':>8}"
            f"{'NME3':>8}{'dNME3±se':>17}{'val hm1':>9}{'val hm2':>9}{'val hm3':>9}"
            f"{'tr hm1':>9}{'tr hm2':>9}{'tr hm3':>9}{'tr out3':>9}")
    lines = [head, "-" * len(head)]
    for name, r in results.items():
        v, t = r["val"], r["train_loss_last"]
        lines.append(
            f"{name:<16}{r['cpu_s_per_step']:>9.2f}{r['sec_per_step']:>10.2f}{v['psnr_y']:>8.3f}"
            f"{delta(r, 'psnr_y', '+.3f'):>15}{v['ssim_y']:>8.4f}{v['nme']:>8.4f}{delta(r, 'nme', '+.4f'):>17}"
            f"{v['hm1']:>9.5f}{v['hm2']:>9.5f}{v['hm3']:>9.5f}"
            f"{t.get('stage1/heatmap', float('nan')):>9.5f}{t.get('stage2/heatmap', float('nan')):>9.5f}"
            f"{t.get('stage3/heatmap', float('nan')):>9.5f}{t.get('stage3/out_l2', float('nan')):>9.5f}"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="proui store with train and val splits")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--val-samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0, help="seed of every setting but reference_seed1 (which sets 1)")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--loss-window", type=int, default=20, help="training losses: mean over the last N steps")
    p.add_argument("--run-root", type=Path, default=Path("/tmp/proui-attention-options"))
    p.add_argument("--threads", type=int, default=0, help="torch threads per setting (0: torch's default)")
    p.add_argument("--jobs", type=int, default=1, help="settings trained at once, each in its own process")
    p.add_argument("--out", type=Path, default=Path("attention_options.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    logging.basicConfig(level=logging.WARNING)

    val = read_val(args.store, args.val_samples)
    results: dict[str, dict] = {}
    per_sample: dict[str, dict[str, np.ndarray]] = {}
    meta = {"store": args.store, "steps": args.steps, "batch_size": args.batch_size,
            "val_samples": int(val["hr"].shape[0]), "generator": "raw (not EMA), eval mode",
            "torch_threads": torch.get_num_threads(), "loss_window": args.loss_window}

    def done(name: str, summary: dict, per: dict) -> None:
        results[name], per_sample[name] = summary, per
        print(f"{name}: {json.dumps({k: round(v, 5) for k, v in summary['val'].items()})} "
              f"s/step {summary['sec_per_step']:.2f}", flush=True)
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))  # after every setting

    t0 = time.perf_counter()
    if args.jobs <= 1:
        for name in names:
            done(name, *run_setting(name, args, val))
    else:  # settings in parallel processes: more throughput on a shared machine, wall s/step less comparable
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_worker, name, args, val): name for name in names}
            for f in cf.as_completed(futures):
                done(futures[f], *f.result())
    meta["total_wall_s"] = time.perf_counter() - t0
    results = {n: results[n] for n in names}
    if "reference" in per_sample:
        for name in names:
            if name != "reference":
                results[name]["vs_reference"] = paired_deltas(per_sample[name], per_sample["reference"])
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print(table(results))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
