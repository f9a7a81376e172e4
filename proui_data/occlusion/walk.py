"""Random-walk holes: the Pro-UIGAN authors' protocol (SEU-yang/Pro-UIGAN, data/datasets.py), and a target mode.

Protocol (`walk_steps > 0`): a `walk_region` square anywhere in the 128x128 image, a hole box of `walk_hole`
px per side inside it, a 4-neighbour random walk of `walk_steps` steps clipped to the box, visited pixels
replaced by per-pixel random colours. Their box could end one pixel past the region and the image; here it
cannot. With an anchor other than `random` the region is centred on that part. The walk ignores the target
(and may miss the face). Target mode (`walk_steps = 0`) walks until the target ratio is covered, in a box sized
for it and kept on the face.
"""
from __future__ import annotations

import math

import numpy as np

from ..schema import HR_SIZE
from .config import OcclusionConfig
from .face import FaceGeometry
from .sampling import Layer, anchor_point

_MOVES = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]], dtype=np.int32)
_CHUNK = 4096  # target mode walks this many steps at a time


def folded_walk(start: np.ndarray, n: int, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """(n,2) positions of a 4-neighbour walk clipped to box (x0, y0, w, h).

    Clipping (a step out of the box leaves the walker in place) is, for a symmetric walk, the same process as
    folding a free walk back into the box by reflection, which vectorizes.
    """
    x0, y0, w, h = box
    pos = start[None, :] + np.cumsum(_MOVES[rng.integers(0, 4, n)], axis=0)
    lo = np.array([x0, y0])
    size = np.array([w, h])
    q = np.mod(pos - lo, 2 * size)
    return lo + np.where(q >= size, 2 * size - 1 - q, q)


def walk(hr: np.ndarray, face: FaceGeometry, target: float, anchor: str, cfg: OcclusionConfig,
         rng: np.random.Generator) -> Layer:
    noise = rng.integers(0, 256, (HR_SIZE, HR_SIZE, 3), dtype=np.uint8)
    if cfg.walk_steps > 0:
        mask, detail = _protocol_walk(face, anchor, cfg, rng)
    else:
        mask, detail = _target_walk(face, target, anchor, cfg, rng)
    return Layer(mask, noise, anchor, detail)


def _protocol_walk(face: FaceGeometry, anchor: str, cfg: OcclusionConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The authors' walk: `walk_steps` steps in a hole box inside a region (see module docstring)."""
    lo, hi = cfg.walk_hole
    reg = cfg.walk_region
    if anchor == "random":
        rx, ry = (int(v) for v in rng.integers(0, HR_SIZE - reg + 1, 2))
    else:
        c = anchor_point(face, anchor, rng)
        rx, ry = (int(np.clip(round(v - reg / 2), 0, HR_SIZE - reg)) for v in c)
    hw, hh = (int(v) for v in rng.integers(lo, hi + 1, 2))
    ox = rx + int(rng.integers(0, reg - hw + 1))
    oy = ry + int(rng.integers(0, reg - hh + 1))
    start = np.clip(rng.integers(0, HR_SIZE, 2), [ox, oy], [ox + hw - 1, oy + hh - 1])
    pos = folded_walk(start, cfg.walk_steps, (ox, oy, hw, hh), rng)
    mask = np.zeros((HR_SIZE, HR_SIZE), np.uint8)
    mask[pos[:, 1], pos[:, 0]] = 255
    return mask, f"steps={cfg.walk_steps} hole={hw}x{hh}"


def _target_walk(face: FaceGeometry, target: float, anchor: str, cfg: OcclusionConfig,
                 rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Walk until the face pixels visited reach the target, stopping at the step that reaches it."""
    # A square box big enough that covering ~55 % of it reaches the target, kept on the face.
    need = max(1, int(round(target * face.area)))
    side = int(np.clip(round(math.sqrt(need / 0.55)), cfg.walk_hole[0], HR_SIZE))
    c = anchor_point(face, anchor, rng)
    bx0, by0, bx1, by1 = face.box
    ox = _place_interval(c[0] - side / 2, side, bx0, bx1 + 1)
    oy = _place_interval(c[1] - side / 2, side, by0, by1 + 1)
    box = (ox, oy, side, side)
    start = np.array([ox + side // 2, oy + side // 2])
    region = face.region.ravel().astype(bool)
    visited = np.zeros(HR_SIZE * HR_SIZE, bool)
    covered, steps = 0, 0
    while covered < need and steps < 400 * side * side // 16:
        pos = folded_walk(start, _CHUNK, box, rng)
        start = pos[-1]
        flat = pos[:, 1] * HR_SIZE + pos[:, 0]
        uniq, first = np.unique(flat, return_index=True)
        fresh = ~visited[uniq]
        uniq, first = uniq[fresh], first[fresh]
        gain = region[uniq]
        if covered + gain.sum() >= need:  # keep the pixels first visited up to the step that reaches the target
            order = np.argsort(first)
            counts = np.cumsum(gain[order])
            k = int(np.searchsorted(counts, need - covered))
            visited[uniq[order[: k + 1]]] = True
            steps += int(first[order[k]]) + 1
            break
        visited[uniq] = True
        covered += int(gain.sum())
        steps += _CHUNK
    mask = np.zeros((HR_SIZE, HR_SIZE), np.uint8)
    mask.ravel()[visited] = 255
    return mask, f"steps={steps} hole={side}x{side}"


def _place_interval(start: float, length: int, lo: int, hi: int) -> int:
    """Integer start of a `length` interval near `start`, inside [lo, hi) when it fits, always inside the image."""
    s = int(round(start))
    if length <= hi - lo:
        s = min(max(s, lo), hi - length)
    return min(max(s, 0), HR_SIZE - length)
