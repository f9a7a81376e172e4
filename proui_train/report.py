"""`proui-train report`: learning curves of training runs and a picture grid of what they make.

Curves: validation PSNR-Y of the EMA and the raw generator against steps, one colour per run, with bicubic
on the same validation faces as a horizontal line. Grid: for faces of a store split, one row each:
occluded LR input | bicubic | each model's output | ground truth.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from proui_data.schema import HR_SIZE

from .config import config_from_dict
from .data import open_split
from .metrics import quality
from .runtime import from_uint8, load_generator, to_uint8


class ReportError(ValueError):
    """A folder that is not a training run, in one line."""


def read_curves(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{metric: [(step, value), ...]} of a run's metrics.jsonl (validation and loss lines alike)."""
    metrics = Path(run_dir) / "metrics.jsonl"
    if not metrics.is_file():
        what = "a release folder has weights, not curves" if (Path(run_dir) / "model.safetensors").is_file() \
            else "give the run_dir of a `proui-train run`"
        raise ReportError(f"{run_dir}: not a training run (no metrics.jsonl): {what}")
    curves: dict[str, list[tuple[int, float]]] = {}
    for number, line in enumerate(metrics.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
        except ValueError:  # the last line of a killed run may be cut short
            raise ReportError(f"{metrics}:{number}: not a JSON line (damaged)") from None
        for k, v in row.items():
            if k != "step" and isinstance(v, (int, float)):
                curves.setdefault(k, []).append((row["step"], float(v)))
    return curves


def read_faces(store: str, split: str, n: int, input_name: str = "lr_occluded", start: int = 0
               ) -> dict[str, np.ndarray]:
    """The first `n` valid samples from `start` of a split: hr (n,128,128,3), lr (n,16,16,3), mask or None."""
    g = open_split(store, split)
    rows = np.flatnonzero(g["valid"][:])
    rows = rows[rows >= start][:n]
    name = input_name if input_name in g.array_keys() else "lr"
    has_mask = name == "lr_occluded" and "occlusion_mask" in g.array_keys()
    return {"hr": g["hr"].get_orthogonal_selection((rows,)), "lr": g[name].get_orthogonal_selection((rows,)),
            "mask": g["occlusion_mask"].get_orthogonal_selection((rows,)) if has_mask else None}


def bicubic(lr: torch.Tensor, size: int = HR_SIZE) -> torch.Tensor:
    """(B,3,16,16) 0..255 -> (B,3,size,size) 0..255, rounded: the baseline every model must beat."""
    return F.interpolate(lr.float(), size=size, mode="bicubic", align_corners=False).clamp(0, 255).round()


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float()


@torch.no_grad()
def hallucinate(model: torch.nn.Module, lr: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """(B,3,16,16) 0..255 -> (B,3,128,128) 0..255 rounded, in batches."""
    return torch.cat([to_uint8(model(from_uint8(lr[i:i + batch]))["final"]) for i in range(0, len(lr), batch)])


def run_config(run_dir: str | Path):
    """The TrainConfig a run folder recorded (its config.json)."""
    path = Path(run_dir) / "config.json"
    try:
        return config_from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ReportError(f"{run_dir}: not a training run (no config.json)") from None
    except ValueError as e:  # damaged JSON, or a ConfigError
        raise ReportError(f"{path}: {e}") from None


def bicubic_val_psnr(run_dir: str | Path) -> float | None:
    """Bicubic PSNR-Y on the validation faces the run's validation used (its first val_batches batches)."""
    cfg = run_config(run_dir)
    n = cfg.val_batches * (cfg.val_batch_size or cfg.data.batch_size)
    try:
        faces = read_faces(cfg.data.store, cfg.data.val_split, n, cfg.data.input)
    except (KeyError, FileNotFoundError):
        return None
    mask = None if faces["mask"] is None else torch.from_numpy(faces["mask"]).float()[:, None] / 255
    return float(quality(bicubic(_nchw(faces["lr"])), _nchw(faces["hr"]), mask)["psnr_y"].mean())


def plot_curves(run_dirs: list[str], out: str | Path, labels: list[str] | None = None,
                metric: str = "psnr_y") -> dict[str, Any]:
    """Draw val/<metric> (EMA, solid) and val_raw/<metric> (raw, dashed) per run, bicubic dashed grey."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    labels = labels or [Path(r).name for r in run_dirs]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    summary: dict[str, Any] = {}
    for i, (run, label) in enumerate(zip(run_dirs, labels)):
        curves, colour = read_curves(run), f"C{i}"
        for key, style, suffix in ((f"val/{metric}", "-", "EMA"), (f"val_raw/{metric}", "--", "raw")):
            if curves.get(key):
                steps, values = zip(*curves[key])
                ax.plot(steps, values, style, color=colour, label=f"{label} ({suffix})")
                summary[f"{label}/{suffix}"] = values[-1]
    base = bicubic_val_psnr(run_dirs[0])
    if base is not None:
        ax.axhline(base, color="grey", linestyle=":", label=f"bicubic ({base:.2f})")
        summary["bicubic"] = base
    ax.set_xlabel("generator steps")
    ax.set_ylabel(f"validation {metric.replace('_', '-').upper()} (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return summary


def picture_grid(models: list[str], store: str, split: str, out: str | Path, n: int = 6, start: int = 0,
                 input_name: str = "lr_occluded") -> Path:
    """Rows of: input (nearest x8) | bicubic | each model (release or run folder) | ground truth."""
    import cv2

    faces = read_faces(store, split, n, input_name, start)
    lr, hr = _nchw(faces["lr"]), _nchw(faces["hr"])
    columns = [F.interpolate(lr, size=HR_SIZE, mode="nearest"), bicubic(lr)]
    columns += [hallucinate(load_generator(m), lr) for m in models]
    columns.append(hr)
    tiles = torch.cat(columns, dim=3)  # (n, 3, 128, 128 * columns)
    image = tiles.permute(0, 2, 3, 1).reshape(-1, tiles.shape[-1], 3).clamp(0, 255).byte().numpy()
    out = Path(out)
    cv2.imwrite(str(out), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return out
