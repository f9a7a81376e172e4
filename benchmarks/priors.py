"""Which prior network and heatmap loss make Pro-UIGAN's stage priors learn landmarks, side by side.

    OMP_NUM_THREADS=1 nice python benchmarks/priors.py --store celeba.zarr --steps 400 --out priors.json

Each option trains one stage's prior estimator alone, from scratch, on the train split, for the same number of
samples, and is scored on the whole val split: the NME of its heatmaps' peaks (`heatmaps_to_points`, what
`proui-train eval` reports) against the store's landmarks, per stage, as a fraction of the outer-eye-corner
distance. The input is the stage's input resolution made from the occluded 16x16 thumbnail by bicubic
upsampling: a conservative stand-in for what the generator's previous stage hands the prior (it only gets
sharper as the generator learns). Reported beside them: the mean training shape placed on every face (what a
prior that ignores the face scores), and the CPU seconds per option. "mean shape": the hourglass starts from the
mean training shape's heatmaps (`HourglassPrior.set_mean_shape`), as the trainer starts it.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from proui_train.evaluate import heatmaps_to_points
from proui_train.losses import heatmap_loss, point_loss
from proui_train.models.pro_uigan import STAGE_LANDMARKS, HourglassPrior, LearnedPrior
from proui_train.targets import render_heatmaps_torch, to_map_pixels

STAGES = {1: (16, 1.0), 3: (64, 1.5)}  # stage -> (input size, target sigma), as pipelines/train/default.toml
# name -> (prior network, heatmap loss kind, point-loss weight, start from the mean training shape)
OPTIONS = {
    "dilated+mse (reference loss)": (LearnedPrior, "mse", 0.0, False),
    "dilated+weighted": (LearnedPrior, "weighted", 0.0, False),
    "hourglass+mse": (HourglassPrior, "mse", 0.0, False),
    "hourglass+weighted": (HourglassPrior, "weighted", 0.0, False),
    "hourglass+weighted+mean shape": (HourglassPrior, "weighted", 0.0, True),
    "hourglass+weighted+mean shape+points": (HourglassPrior, "weighted", 1.0, True),
}


def load(store: str, split: str, input_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = zarr.open_group(store, mode="r")[split]
    valid = g["valid"][:].astype(bool)
    lr = torch.from_numpy(g[input_name][:][valid]).permute(0, 3, 1, 2).float() / 127.5 - 1
    return lr, torch.from_numpy(g["landmarks"][:][valid]).float()


def stage_nme(pred: torch.Tensor, truth: torch.Tensor, index: tuple[int, ...]) -> float:
    iod = (truth[:, 36] - truth[:, 45]).norm(dim=-1)
    return float(((pred - truth[:, list(index)]).norm(dim=-1).mean(-1) / iod).mean())


def train_option(net_cls, kind: str, points_weight: float, mean_shape: bool, stage: int, data: dict, steps: int,
                 batch: int, seed: int) -> dict:
    size, sigma = STAGES[stage]
    index = STAGE_LANDMARKS[stage - 1]
    torch.manual_seed(seed)
    net = net_cls(len(index), size) if net_cls is HourglassPrior else net_cls(len(index))
    if mean_shape:
        net.set_mean_shape(data["train"][1].mean(0)[list(index)], sigma)
    opt = torch.optim.Adam(net.parameters(), lr=5e-4)
    lr_train, lm_train = data["train"]
    gen = torch.Generator().manual_seed(seed)
    t0 = time.process_time()
    for _ in range(steps):
        pick = torch.randint(len(lr_train), (batch,), generator=gen)
        face = F.interpolate(lr_train[pick], size=size, mode="bicubic", align_corners=False)
        lm = lm_train[pick][:, list(index)]
        target = render_heatmaps_torch(lm, size=size, sigma=sigma)
        pred = net(face)
        loss = heatmap_loss(pred, target, kind)
        if points_weight:
            loss = loss + points_weight * point_loss(pred, to_map_pixels(lm, size))
        opt.zero_grad()
        loss.backward()
        opt.step()
    cpu_s = time.process_time() - t0
    net.eval()
    lr_val, lm_val = data["val"]
    with torch.no_grad():
        preds = [heatmaps_to_points(net(F.interpolate(x, size=size, mode="bicubic", align_corners=False)))
                 for x in lr_val.split(64)]
    return {"nme": stage_nme(torch.cat(preds), lm_val, index), "cpu_s": cpu_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--input", default="lr_occluded")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--options", nargs="+", choices=list(OPTIONS), default=list(OPTIONS), metavar="NAME",
                    help="a subset of the options (default: all)")
    ap.add_argument("--out")
    args = ap.parse_args()
    data = {s: load(args.store, s, args.input) for s in ("train", "val")}
    results: dict = {"steps": args.steps, "batch": args.batch, "input": args.input, "stages": {}}
    for stage in args.stages:
        index = STAGE_LANDMARKS[stage - 1]
        mean_shape = data["train"][1].mean(0)[list(index)]
        rows = {"mean training shape": {"nme": stage_nme(mean_shape.expand(len(data["val"][1]), -1, -1),
                                                          data["val"][1], index)}}
        print(f"stage {stage}: mean training shape NME {rows['mean training shape']['nme']:.4f}", flush=True)
        for name in args.options:
            rows[name] = train_option(*OPTIONS[name], stage, data, args.steps, args.batch, args.seed)
            print(f"stage {stage}: {name:32s} NME {rows[name]['nme']:.4f}  ({rows[name]['cpu_s']:.0f} CPU-s)",
                  flush=True)
        results["stages"][stage] = rows
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {results['peak_rss_mib']:.0f} MiB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
