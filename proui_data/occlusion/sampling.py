"""The draws every kind shares: a weighted choice, a point on an anchor, a fill image, a size fitted to a target.

Every random draw comes from the caller's generator, so a sample is reproducible from its rng state; the
order of the draws is part of the store format (changing it changes every occlusion of a recipe and seed).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import cv2
import numpy as np

from ..schema import HR_SIZE
from .config import OcclusionConfig
from .face import FaceGeometry


class Layer(NamedTuple):
    """What a kind draws: the alpha over the face, the image it shows, and what the store records."""

    mask: np.ndarray  # (128,128) uint8 alpha, 255 = fully occluded
    fill: np.ndarray  # (128,128,3) uint8, shown where the mask is > 0
    anchor: str  # the drawn anchor, or the face part an object was placed on
    detail: str  # e.g. the fill, or the object's file


# One occlusion kind: (hr, face, target ratio, anchor, config, rng) -> Layer.
KindFn = Callable[[np.ndarray, FaceGeometry, float, str, OcclusionConfig, np.random.Generator], Layer]


def choice(rng: np.random.Generator, weights: list[float]) -> int:
    """Index drawn with probability proportional to its weight."""
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum()))


def anchor_point(face: FaceGeometry, anchor: str, rng: np.random.Generator) -> np.ndarray:
    """A point to centre an occluder on: any face pixel, or a part (eyes: one, the other or both) with jitter."""
    if anchor == "random":
        return face.pixels[rng.integers(len(face.pixels))] + rng.uniform(-0.5, 0.5, 2)
    if anchor == "eyes":
        u = float(rng.choice([0.0, 0.5, 1.0]))
        p = (1 - u) * face.point("eye_r") + u * face.point("eye_l")
    else:
        p = face.point(anchor)
    return p + rng.normal(0.0, 0.06 * face.iod, 2)


_YX = np.mgrid[0:HR_SIZE, 0:HR_SIZE].astype(np.float32)


def _color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.uint8)


def fill(hr: np.ndarray, rng: np.random.Generator, modes: tuple[str, ...]) -> tuple[np.ndarray, str]:
    """An image to show under a mask: solid colour, noise, a shifted patch of the same face, or stripes."""
    mode = modes[int(rng.integers(len(modes)))]
    if mode == "solid":
        return np.broadcast_to(_color(rng), hr.shape), mode
    if mode == "noise":
        return rng.integers(0, 256, hr.shape, dtype=np.uint8), mode
    if mode == "patch":  # the same face, shifted by 24-64 px: plausible skin/hair texture in the wrong place
        ang = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(24, 64)
        m = np.float32([[1, 0, dist * np.cos(ang)], [0, 1, dist * np.sin(ang)]])
        src = hr[:, ::-1] if rng.random() < 0.5 else hr
        return cv2.warpAffine(np.ascontiguousarray(src), m, (HR_SIZE, HR_SIZE), borderMode=cv2.BORDER_REFLECT_101), mode
    # stripes: two colours, random period and angle
    ang = rng.uniform(0, np.pi)
    period = rng.uniform(4, 16)
    phase = (_YX[1] * np.cos(ang) + _YX[0] * np.sin(ang)) / period
    sel = (phase - np.floor(phase)) < rng.uniform(0.3, 0.7)
    return np.where(sel[..., None], _color(rng), _color(rng)), "stripes"


def fit_scale(render: Callable[[float], np.ndarray], face: FaceGeometry, target: float,
              iters: int = 12) -> tuple[np.ndarray, float]:
    """Bisection on a size factor s (render(s) is monotone in s, s = 1 a first guess) for coverage ~ target."""
    lo, hi = 0.0, 1.0
    mask = render(hi)
    cov = face.coverage(mask)
    for _ in range(8):
        if cov >= target:
            break
        lo, hi = hi, hi * 2
        mask = render(hi)
        cov = face.coverage(mask)
    best = (abs(cov - target), mask, cov)
    for _ in range(iters):
        if best[0] < 0.004:
            break
        mid = (lo + hi) / 2
        m = render(mid)
        c = face.coverage(m)
        if abs(c - target) < best[0] and c > 0:  # never an empty mask
            best = (abs(c - target), m, c)
        lo, hi = (mid, hi) if c < target else (lo, mid)
    return best[1], best[2]
