"""Drawn masks sized to the target ratio: blocks, brush strokes and shapes.

- `block`: 1-3 axis-aligned rectangles, the first centred on the anchor, scaled together by bisection.
- `stroke`: DeepFill v2 free-form brush strokes (Yu et al. 2019: 4-11 vertices, angles 2pi/5 +- 2pi/15, widths
  12-40 px at 256 -> 6-20 px here); strokes and segments are added until the target is reached.
- `shape`: 1-2 ellipses / random polygons filled with a solid colour, noise, a patch of the same face from
  elsewhere, or stripes.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from ..schema import HR_SIZE
from .config import OcclusionConfig
from .draw import SHIFT, fixed, fx
from .face import FaceGeometry
from .sampling import Layer, anchor_point, fill, fit_scale


def block(hr: np.ndarray, face: FaceGeometry, target: float, anchor: str, cfg: OcclusionConfig,
          rng: np.random.Generator) -> Layer:
    n = 1 if rng.random() < 0.6 else int(rng.integers(2, 4))
    centres = [anchor_point(face, anchor, rng)] + [anchor_point(face, "random", rng) for _ in range(n - 1)]
    aspect = np.exp(rng.uniform(-np.log(2.5), np.log(2.5), n))
    share = rng.uniform(0.4, 1.0, n)
    share /= share.sum()
    sides = np.sqrt(share * target * face.area)[:, None] * np.stack([np.sqrt(aspect), 1 / np.sqrt(aspect)], 1)

    def render(s: float) -> np.ndarray:
        m = np.zeros((HR_SIZE, HR_SIZE), np.uint8)
        for (cx, cy), (w, h) in zip(centres, sides * s):
            x0, x1 = int(round(cx - w / 2)), int(round(cx + w / 2))
            y0, y1 = int(round(cy - h / 2)), int(round(cy + h / 2))
            m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 255
        return m

    mask, _ = fit_scale(render, face, target)
    image, mode = fill(hr, rng, ("solid", "noise"))
    return Layer(mask, image, anchor, f"{n}x{mode}")


# DeepFill v2 (JiahuiYu/generative_inpainting, brush_stroke_mask) at 256 px, scaled to 128.
_STROKE_VERTICES = (4, 12)  # randint high is exclusive: 4-11 vertices
_STROKE_ANGLE = 2 * np.pi / 5
_STROKE_ANGLE_RANGE = 2 * np.pi / 15
_STROKE_WIDTH = (6.0, 20.0)
_STROKE_RADIUS = math.hypot(HR_SIZE, HR_SIZE) / 8
_MAX_STROKES = 40


def stroke(hr: np.ndarray, face: FaceGeometry, target: float, anchor: str, cfg: OcclusionConfig,
           rng: np.random.Generator) -> Layer:
    mask = np.zeros((HR_SIZE, HR_SIZE), np.uint8)
    cov, strokes = 0.0, 0
    start = anchor_point(face, anchor, rng)
    while strokes < _MAX_STROKES:
        strokes += 1
        n_vertex = int(rng.integers(*_STROKE_VERTICES))
        a_min = _STROKE_ANGLE - rng.uniform(0, _STROKE_ANGLE_RANGE)
        a_max = _STROKE_ANGLE + rng.uniform(0, _STROKE_ANGLE_RANGE)
        # DeepFill flips the whole mask at random; flipping each stroke's direction keeps it at its start point.
        flip_x, flip_y = rng.choice([-1.0, 1.0], 2)
        width = int(rng.uniform(*_STROKE_WIDTH))
        p = np.clip(start, 0, HR_SIZE - 1)
        for i in range(n_vertex):
            ang = rng.uniform(a_min, a_max)
            ang = 2 * np.pi - ang if i % 2 == 0 else ang
            r = np.clip(rng.normal(_STROKE_RADIUS, _STROKE_RADIUS / 2), 0, 2 * _STROKE_RADIUS)
            q = np.clip(p + r * np.array([flip_x * np.cos(ang), flip_y * np.sin(ang)]), 0, HR_SIZE - 1)
            before = mask.copy()
            _segment(mask, p, q, width)
            new = face.coverage(mask)
            if new >= target:
                mask = _cut_short(before, mask, p, q, width, face, target, cov)
                image, mode = fill(hr, rng, ("solid", "noise"))
                return Layer(mask, image, anchor, f"{strokes}x{mode}")
            cov, p = new, q
        # the next stroke starts on a face pixel that is still visible
        free = face.pixels[mask[face.pixels[:, 1], face.pixels[:, 0]] == 0]
        start = free[rng.integers(len(free))].astype(np.float64) if len(free) else start
    image, mode = fill(hr, rng, ("solid", "noise"))
    return Layer(mask, image, anchor, f"{strokes}x{mode}")


def _cut_short(before: np.ndarray, after: np.ndarray, p: np.ndarray, q: np.ndarray, width: int,
               face: FaceGeometry, target: float, cov: float) -> np.ndarray:
    """The mask whose coverage is nearest the target among: `before` the segment p -> q (coverage `cov`),
    `after` it, and the segment cut short (bisection on its length). Ties go to the shorter stroke."""
    best = (face.coverage(after) - target, 1, after)
    if cov > 0:  # stopping before this segment is an option unless the mask would be empty
        best = min(best, (target - cov, 0, before), key=lambda b: b[:2])
    lo, hi = 0.0, 1.0
    for _ in range(6):
        mid = (lo + hi) / 2
        m = before.copy()
        _segment(m, p, p + mid * (q - p), width)
        c = face.coverage(m)
        best = min(best, (abs(c - target), 2, m), key=lambda b: b[:2])
        lo, hi = (mid, hi) if c < target else (lo, mid)
    return best[2]


def _segment(mask: np.ndarray, p: np.ndarray, q: np.ndarray, width: int) -> None:
    """A brush segment; cv2 draws thick lines with round ends (DeepFill adds discs at the vertices for that)."""
    cv2.line(mask, fx(p), fx(q), 255, width, cv2.LINE_8, SHIFT)


def shape(hr: np.ndarray, face: FaceGeometry, target: float, anchor: str, cfg: OcclusionConfig,
          rng: np.random.Generator) -> Layer:
    n = 1 if rng.random() < 0.7 else 2
    centres = [anchor_point(face, anchor, rng)] + [anchor_point(face, "random", rng) for _ in range(n - 1)]
    outlines = [_polygon(rng) for _ in range(n)]
    share = rng.uniform(0.4, 1.0, n)
    radius = np.sqrt(share / share.sum() * target * face.area / np.pi)

    def render(s: float) -> np.ndarray:
        m = np.zeros((HR_SIZE, HR_SIZE), np.uint8)
        for c, o, r in zip(centres, outlines, radius):  # one call each: one call would XOR overlapping polygons
            cv2.fillPoly(m, [fixed(c + o * r * s)], 255, cv2.LINE_AA, SHIFT)
        return m

    mask, _ = fit_scale(render, face, target)
    image, mode = fill(hr, rng, ("solid", "noise", "patch", "stripes"))
    return Layer(mask, image, anchor, f"{n}x{mode}")


def _polygon(rng: np.random.Generator) -> np.ndarray:
    """An ellipse or a random polygon around 0, of area pi (like the unit disc)."""
    if rng.random() < 0.5:
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = np.ones_like(t)
    else:
        # Angular gaps stay below pi, so the polygon is star-shaped about 0: scaled copies nest, and the coverage
        # the bisection in fit_scale searches grows monotonically with the scale.
        k = int(rng.integers(3, 10))
        t = (np.arange(k) + rng.uniform(-0.2, 0.2, k)) * (2 * np.pi / k) + rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.6, 1.3, k)
    pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    aspect = np.exp(rng.uniform(-np.log(2.2), np.log(2.2)))
    pts *= [np.sqrt(aspect), 1 / np.sqrt(aspect)]
    ang = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    pts = pts @ rot.T
    return pts / math.sqrt(max(_area(pts), 1e-6) / np.pi)


def _area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
