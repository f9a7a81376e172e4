"""`proui-data preview`: a PNG grid a person can judge.

Per sample, left to right: HR with its 68 landmarks (green) and the template's eye/nose/mouth points
(red crosses), the LR input scaled up (nearest), then when present the parsing map blended over the HR,
the occluded HR (recomputed from the recipe and the sample key: occlusions are deterministic), the
occluded LR input scaled up and the occlusion mask.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from . import align, store
from .pipeline import occlude_sample
from .recipe import parse_recipe
from .schema import HR_SIZE

# Colours of the 11 Helen classes (background black).
PARSING_COLOURS = np.array(
    [[0, 0, 0], [255, 204, 153], [0, 153, 0], [0, 255, 0], [0, 0, 204], [0, 102, 255], [255, 255, 0],
     [255, 0, 0], [128, 0, 128], [255, 102, 178], [102, 51, 0]], dtype=np.uint8)


def _up(img: np.ndarray, size: int = HR_SIZE) -> np.ndarray:
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)


def sample_tiles(row: dict[str, np.ndarray]) -> list[np.ndarray]:
    hr = row["hr"].copy()
    tiles = []
    with_points = hr.copy()
    lm = row.get("landmarks")
    if lm is not None and np.isfinite(lm).all():
        for x, y in lm:
            cv2.circle(with_points, (int(round(x)), int(round(y))), 1, (0, 255, 0), -1)
    for x, y in align.TEMPLATE_5:
        cv2.drawMarker(with_points, (int(round(x)), int(round(y))), (255, 0, 0), cv2.MARKER_CROSS, 5, 1)
    tiles += [with_points, _up(row["lr"])]
    if "parsing" in row:
        colour = PARSING_COLOURS[np.minimum(row["parsing"], 10)]
        tiles.append(cv2.addWeighted(hr, 0.45, colour, 0.55, 0))
    if "hr_occluded" in row:
        tiles.append(row["hr_occluded"])
    if "lr_occluded" in row:
        tiles.append(_up(row["lr_occluded"]))
    if "occlusion_mask" in row:
        tiles.append(np.repeat(row["occlusion_mask"][..., None], 3, axis=2))
    return tiles


def preview_grid(url: str, n: int = 64, split: str | None = None, per_row: int | None = None,
                 storage_options: dict | None = None) -> np.ndarray:
    """RGB uint8 grid of the first n valid samples of a split (default: the first split)."""
    root = store.open_root(url, mode="r", storage_options=storage_options)
    split = split or store.splits_of(root)[0]
    g = root[split]
    idx = np.flatnonzero(g["valid"][:])[:n]
    if idx.size == 0:
        raise ValueError(f"{split}: no valid samples to preview")
    names = [a for a in ("hr", "lr", "landmarks", "parsing", "occlusion_mask", "lr_occluded", "key", "occlusion_variant")
             if a in g.array_keys()]
    stop = int(idx[-1]) + 1
    data = {a: g[a][:stop] for a in names}  # contiguous read: whole shards, not one request per row
    recipe = None
    if "occlusion_mask" in names and root.attrs.get("recipe", {}).get("occlusion") is not None:
        recipe = parse_recipe(dict(root.attrs["recipe"]), "store recipe")
    strips = []
    for i in idx:
        row = {a: data[a][i] for a in names}
        if recipe is not None:
            occ = occlude_sample(row["hr"], row["landmarks"], recipe, str(row["key"]), int(row.get("occlusion_variant", 0)))
            if np.array_equal(occ.mask, row["occlusion_mask"]):  # shown only when it reproduces the store
                row["hr_occluded"] = occ.hr_occluded
        strips.append(np.concatenate(sample_tiles(row), axis=1))
    per_row = per_row or max(1, min(len(strips), int(math.ceil(math.sqrt(len(strips) * HR_SIZE / strips[0].shape[1] * 1.6)))))
    pad = np.full((strips[0].shape[0] + 4, strips[0].shape[1] + 4, 3), 255, np.uint8)
    cells = []
    for s in strips:
        c = pad.copy()
        c[2:-2, 2:-2] = s
        cells.append(c)
    while len(cells) % per_row:
        cells.append(np.full_like(pad, 255))
    rows = [np.concatenate(cells[i:i + per_row], axis=1) for i in range(0, len(cells), per_row)]
    return np.concatenate(rows, axis=0)


def write_preview(url: str, out: str, n: int = 64, split: str | None = None,
                  storage_options: dict | None = None) -> tuple[int, int]:
    grid = preview_grid(url, n, split, storage_options=storage_options)
    if not cv2.imwrite(out, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out}")
    return grid.shape[1], grid.shape[0]
