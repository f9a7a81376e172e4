"""Randomized synthetic occlusions of an aligned 128x128 face: blocks, brush strokes, random walks, shapes, objects.

`occlude(hr, landmarks, cfg, rng)` draws one kind (weights `cfg.kinds`), one anchor (weights `cfg.anchors`:
random / eyes / nose / mouth) and one target ratio (`cfg.ratio`), and returns the occluded HR face, the alpha mask
(uint8, 255 = fully occluded), and the ratio it achieved. The caller degrades the occluded HR to LR itself.

Ratio = mean(mask / 255) over the **face region**: the filled convex hull of the jaw (points 0-16) and the brows
(17-26) lifted by `FOREHEAD_LIFT` x the eye distance for the forehead. When the landmarks are unknown (any NaN)
everything uses `MEAN_LANDMARKS`, the mean dlib 68-point shape in the 128x128 template of `proui_data.align`
(eyes at y = 66.6, x = 49.75 and 77.25, mouth corners at y = 95.5); its face region (3510 pixels) spans the box
x 33-94, y 48-117 (inclusive).

Kinds (each is sized so the achieved ratio lands near the target where the kind allows; the achieved one is
always what is recorded):
- `block`: 1-3 axis-aligned rectangles, the first centred on the anchor, scaled together by bisection.
- `stroke`: DeepFill v2 free-form brush strokes (Yu et al. 2019: 4-11 vertices, angles 2pi/5 +- 2pi/15, widths
  12-40 px at 256 -> 6-20 px here); strokes and segments are added until the target is reached.
- `walk`: the Pro-UIGAN authors' protocol (SEU-yang/Pro-UIGAN, data/datasets.py): a 64x64 region anywhere in the
  128x128 image, a hole box of 56-64 px per side inside it, a 4-neighbour random walk of 48*48 steps clipped to
  the box, visited pixels replaced by per-pixel random colours. Their box could end one pixel past the region and
  the image; here it cannot. With an anchor other than `random` the region is centred on that part. The walk
  ignores the target (and may miss the face); `walk_steps = 0` instead walks until the target ratio is covered,
  in a box sized for it and kept on the face.
- `shape`: 1-2 ellipses / random polygons filled with a solid colour, noise, a patch of the same face from
  elsewhere, or stripes.
- `object`: RGBA occluders placed with the landmarks. With `occluders_dir`: PNGs with alpha found recursively,
  classified by file name (glasses -> eyes, masks -> nose-mouth-chin, caps/hats -> forehead, hands -> a face
  part, else by aspect), and MaskTheFace `masks.cfg` anchor points when present. Without: procedural glasses,
  sunglasses, surgical-style masks and hands drawn with cv2. Random scale 0.8-1.2 (chosen towards the target),
  rotation +-15 degrees, colour jitter, blurred alpha edges. Clear lenses get a random tint (a clear lens hides
  nothing, and a lens region must still read as occluded).

Every random draw comes from the caller's generator, so a sample is reproducible from its rng state.
"""
from __future__ import annotations

import configparser
import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .align import similarity_transform

HR_SIZE = 128
KINDS = ("block", "stroke", "walk", "shape", "object")
ANCHORS = ("random", "eyes", "nose", "mouth")
FOREHEAD_LIFT = 0.35  # brows are lifted by this many eye distances to include the lower forehead
_SHIFT = 4  # cv2 fixed-point fraction bits: shapes are drawn with 1/16-pixel vertex precision
_ONE = 1 << _SHIFT

# Mean dlib 68-point shape in the 128x128 HR template: dlib HOG + shape predictor on 390 CelebA train-partition
# images (the first 400 of partition 0, those with a HOG detection), aligned by `proui_data.align`
# (similarity of the five points to TEMPLATE_5), averaged, then made mirror-symmetric about x = 63.5.
MEAN_LANDMARKS = np.array([
    (33.1, 67.1), (33.3, 75.1), (34.3, 83.2), (35.9, 91.1), (39.0, 98.5), (43.8, 105.0), (49.6, 110.6), (56.1, 115.2),
    (63.5, 116.5), (70.9, 115.2), (77.4, 110.6), (83.2, 105.0), (88.0, 98.5), (91.1, 91.1), (92.7, 83.2), (93.7, 75.1),
    (93.9, 67.1), (38.9, 60.6), (42.9, 57.7), (48.0, 57.2), (53.3, 58.2), (58.2, 60.4), (68.8, 60.4), (73.7, 58.2),
    (79.0, 57.2), (84.1, 57.7), (88.1, 60.6), (63.5, 66.5), (63.5, 71.9), (63.5, 77.2), (63.5, 82.6), (57.8, 85.9),
    (60.5, 87.0), (63.5, 88.0), (66.5, 87.0), (69.2, 85.9), (44.9, 67.0), (48.3, 65.0), (52.3, 65.1), (55.6, 67.9),
    (51.9, 68.6), (48.0, 68.5), (71.4, 67.9), (74.7, 65.1), (78.7, 65.0), (82.1, 67.0), (79.0, 68.5), (75.1, 68.6),
    (51.5, 95.1), (55.9, 93.4), (60.3, 92.6), (63.5, 93.3), (66.7, 92.6), (71.1, 93.4), (75.5, 95.1), (71.3, 99.9),
    (66.9, 102.1), (63.5, 102.5), (60.1, 102.1), (55.7, 99.9), (53.4, 95.5), (60.3, 95.3), (63.5, 95.6), (66.7, 95.3),
    (73.6, 95.5), (66.7, 97.8), (63.5, 98.2), (60.3, 97.8),
], dtype=np.float32)  # fmt: skip
MEAN_LANDMARKS.setflags(write=False)


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class RatioDist:
    """Distribution of the target occlusion ratio (fraction of the face region). low == high: a fixed target."""

    dist: str = "uniform"
    low: float = 0.1
    high: float = 0.5

    def sample(self, rng: np.random.Generator) -> float:
        return float(rng.uniform(self.low, self.high)) if self.high > self.low else float(self.low)


def _default_kinds() -> dict[str, float]:
    return {k: 1.0 for k in KINDS}


def _default_anchors() -> dict[str, float]:
    return {"random": 2.0, "eyes": 1.0, "nose": 1.0, "mouth": 1.0}


@dataclass(frozen=True)
class OcclusionConfig:
    """What `occlude` draws from. Build it from a recipe table with `from_dict`; store it with `to_dict`."""

    kinds: dict[str, float] = field(default_factory=_default_kinds)  # kind -> weight; missing kinds weigh 0
    ratio: RatioDist = field(default_factory=RatioDist)
    anchors: dict[str, float] = field(default_factory=_default_anchors)  # anchor -> weight
    occluders_dir: str | None = None  # RGBA PNGs for `object`; None = procedural objects
    walk_hole: tuple[int, int] = (56, 64)  # side range of the walk's hole box (the authors' hole_size)
    walk_region: int = 64  # side of the random region that holds the hole box (the authors' hole area)
    walk_steps: int = 48 * 48  # walk length; 0 = walk until the target ratio is covered
    variants: int = 1  # occlusions per face; used by the pipeline, not here

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OcclusionConfig":
        """Validate a recipe table; raises ValueError naming any unknown key or bad value."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a table, got {type(d).__name__}")
        _no_unknown(d, {f.name for f in dataclasses.fields(cls)}, "")
        kw: dict[str, Any] = {}
        if "kinds" in d:
            kw["kinds"] = _weights(d["kinds"], KINDS, "kinds")
        if "anchors" in d:
            kw["anchors"] = _weights(d["anchors"], ANCHORS, "anchors")
        if "ratio" in d:
            kw["ratio"] = _ratio(d["ratio"])
        if d.get("occluders_dir") is not None:
            if not isinstance(d["occluders_dir"], str) or not d["occluders_dir"]:
                raise ValueError(f"occluders_dir: expected a path string, got {d['occluders_dir']!r}")
            kw["occluders_dir"] = d["occluders_dir"]
        if "walk_hole" in d:
            v = d["walk_hole"]
            if not isinstance(v, (list, tuple)) or len(v) != 2:
                raise ValueError(f"walk_hole: expected [min, max] side in pixels, got {v!r}")
            kw["walk_hole"] = (_int(v[0], "walk_hole"), _int(v[1], "walk_hole"))
        for name in ("walk_region", "walk_steps", "variants"):
            if name in d:
                kw[name] = _int(d[name], name)
        cfg = cls(**kw)
        cfg._check()
        return cfg

    def _check(self) -> None:
        lo, hi = self.walk_hole
        if not 1 <= lo <= hi <= self.walk_region <= HR_SIZE:
            raise ValueError(
                f"walk: need 1 <= walk_hole[0] <= walk_hole[1] <= walk_region <= {HR_SIZE}, "
                f"got walk_hole={list(self.walk_hole)}, walk_region={self.walk_region}"
            )
        if self.walk_steps < 0:
            raise ValueError(f"walk_steps: expected >= 0 (0 = until the target ratio), got {self.walk_steps}")
        if self.variants < 1:
            raise ValueError(f"variants: expected >= 1, got {self.variants}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict that `from_dict` reads back to an equal config."""
        d: dict[str, Any] = {
            "kinds": dict(self.kinds),
            "ratio": dataclasses.asdict(self.ratio),
            "anchors": dict(self.anchors),
            "walk_hole": list(self.walk_hole),
            "walk_region": self.walk_region,
            "walk_steps": self.walk_steps,
            "variants": self.variants,
        }
        if self.occluders_dir is not None:
            d["occluders_dir"] = self.occluders_dir
        return d


def _no_unknown(d: dict, known: set[str], where: str) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        prefix = f"{where}: " if where else ""
        raise ValueError(f"{prefix}unknown key(s) {unknown}; known: {sorted(known)}")


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{where}: expected a finite number, got {v!r}")
    return float(v)


def _int(v: Any, where: str) -> int:
    x = _number(v, where)
    if not x.is_integer():
        raise ValueError(f"{where}: expected an integer, got {v!r}")
    return int(x)


def _weights(d: Any, names: tuple[str, ...], where: str) -> dict[str, float]:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a table of weights, got {type(d).__name__}")
    _no_unknown(d, set(names), where)
    w = {n: _number(d.get(n, 0.0), f"{where}.{n}") for n in names}
    if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
        raise ValueError(f"{where}: weights must be >= 0 with a positive sum, got {d!r}")
    return w


def _ratio(d: Any) -> RatioDist:
    if not isinstance(d, dict):
        raise ValueError(f"ratio: expected a table like {{dist = 'uniform', low = 0.1, high = 0.5}}, got {d!r}")
    _no_unknown(d, {"dist", "low", "high"}, "ratio")
    r = RatioDist(
        dist=d.get("dist", "uniform"),
        low=_number(d.get("low", RatioDist.low), "ratio.low"),
        high=_number(d.get("high", RatioDist.high), "ratio.high"),
    )
    if r.dist != "uniform":
        raise ValueError(f"ratio.dist: only 'uniform' is supported (low == high for a fixed target), got {r.dist!r}")
    if not 0.0 < r.low <= r.high <= 1.0:
        raise ValueError(f"ratio: need 0 < low <= high <= 1, got low={r.low}, high={r.high}")
    return r


# ----------------------------------------------------------------------------------------------------------------
# Result and entry point


@dataclass
class Occlusion:
    """One occluded face; `kind`, `anchor` and `ratio` are what the store records per sample."""

    hr_occluded: np.ndarray  # (128,128,3) uint8
    mask: np.ndarray  # (128,128) uint8 alpha, 255 = fully occluded
    kind: str
    anchor: str
    ratio: float  # achieved: mean(mask / 255) inside the face region
    target: float = float("nan")  # the drawn target ratio
    detail: str = ""  # e.g. the fill, or the object's file


def occlude(hr: np.ndarray, landmarks: np.ndarray, cfg: OcclusionConfig, rng: np.random.Generator) -> Occlusion:
    """Occlude one aligned 128x128 RGB face (see module docstring). Deterministic given the rng state."""
    hr = np.asarray(hr)
    if hr.shape != (HR_SIZE, HR_SIZE, 3) or hr.dtype != np.uint8:
        raise ValueError(f"hr must be a ({HR_SIZE},{HR_SIZE},3) uint8 RGB image, got {hr.shape} {hr.dtype}")
    face = face_geometry(landmarks)
    kind = KINDS[_choice(rng, [cfg.kinds.get(k, 0.0) for k in KINDS])]
    anchor = ANCHORS[_choice(rng, [cfg.anchors.get(a, 0.0) for a in ANCHORS])]
    target = cfg.ratio.sample(rng)
    if kind == "block":
        mask, fill, detail = _block(hr, face, target, anchor, rng)
    elif kind == "stroke":
        mask, fill, detail = _stroke(hr, face, target, anchor, rng)
    elif kind == "walk":
        mask, fill, detail = _walk(face, target, anchor, cfg, rng)
    elif kind == "shape":
        mask, fill, detail = _shape(hr, face, target, anchor, rng)
    else:
        mask, fill, anchor, detail = _object(face, target, cfg, rng)
    out = _composite(hr, fill, mask)
    return Occlusion(out, mask, kind, anchor, face.coverage(mask), target, detail)


def _choice(rng: np.random.Generator, weights: list[float]) -> int:
    w = np.asarray(weights, dtype=np.float64)
    return int(rng.choice(len(w), p=w / w.sum()))


def _composite(hr: np.ndarray, fill: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """round(hr * (1 - a) + fill * a) with a = mask / 255, in exact integer arithmetic (hr where mask == 0)."""
    a = mask[..., None].astype(np.uint16)
    x = hr.astype(np.uint16) * (255 - a) + np.asarray(fill, np.uint8) * a + 128
    return ((x + (x >> 8)) >> 8).astype(np.uint8)  # == floor(x / 255) for x < 65536: the rounded blend


# ----------------------------------------------------------------------------------------------------------------
# Face geometry


@dataclass(frozen=True, eq=False)
class FaceGeometry:
    """Where the face is: the region the ratio is measured over, and points to place occluders on."""

    landmarks: np.ndarray  # (68,2) float64, the given ones or MEAN_LANDMARKS
    known: bool  # False when MEAN_LANDMARKS stand in
    region: np.ndarray  # (128,128) uint8 0/1: the face region of the ratio
    area: int
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive) of the region
    pixels: np.ndarray  # (area, 2) x, y of the region's pixels
    iod: float  # eye-centre distance
    right: np.ndarray  # unit vector from the image-left eye to the image-right eye
    up: np.ndarray  # unit vector towards the forehead

    def coverage(self, mask: np.ndarray) -> float:
        """mean(mask / 255) over the face region."""
        return float(cv2.mean(mask, mask=self.region)[0]) / 255.0

    @functools.cached_property
    def points(self) -> dict[str, np.ndarray]:
        return _face_points(self)

    def point(self, name: str) -> np.ndarray:
        return self.points[name]


def face_geometry(landmarks: np.ndarray) -> FaceGeometry:
    """Face region and reference directions from (68,2) HR landmarks; the mean shape when any is NaN."""
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must have shape (68, 2), got {lm.shape}")
    if not np.isfinite(lm).all():
        return _template_face()
    face = _build_face(lm, known=True)
    # Landmarks that collapse (e.g. a zero-filled rejected row) say nothing about the face.
    return face if face is not None else _template_face()


@functools.lru_cache(maxsize=1)
def _template_face() -> FaceGeometry:
    face = _build_face(MEAN_LANDMARKS.astype(np.float64), known=False)
    assert face is not None
    return face


def _build_face(lm: np.ndarray, known: bool) -> FaceGeometry | None:
    eye_r, eye_l = lm[36:42].mean(0), lm[42:48].mean(0)
    v = eye_l - eye_r
    iod = float(np.hypot(*v))
    if iod < 2.0:
        return None
    right = v / iod
    up = np.array([right[1], -right[0]])  # image y grows downwards
    brows = lm[17:27] + up * (FOREHEAD_LIFT * iod)
    hull = cv2.convexHull(np.concatenate([lm[0:17], brows]).astype(np.float32))
    region = np.zeros((HR_SIZE, HR_SIZE), np.uint8)
    cv2.fillConvexPoly(region, np.round(hull * _ONE).astype(np.int32), 1, cv2.LINE_8, _SHIFT)
    ys, xs = np.nonzero(region)
    if len(xs) < 64:
        return None
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    lm = lm.copy()
    for a in (lm, region):
        a.setflags(write=False)
    return FaceGeometry(lm, known, region, len(xs), box, np.stack([xs, ys], 1), iod, right, up)


def _face_points(face: FaceGeometry) -> dict[str, np.ndarray]:
    """Named points of a face: part centres, MaskTheFace's six mask anchors (mtf_a-f), a cap's brim ends."""
    lm = face.landmarks
    jaw = lm[0:17]
    p = {
        "eye_r": lm[36:42].mean(0),  # image-left eye (the subject's right)
        "eye_l": lm[42:48].mean(0),
        "nose": lm[27:36].mean(0),
        "mouth": lm[48:60].mean(0),
        "brows": lm[17:27].mean(0),
    }
    # MaskTheFace (aqeelanwar/MaskTheFace, utils/aux_functions.py get_six_points): b = middle of the nose bridge;
    # a, c = the jaw where the eye line, moved down to the nose tip, crosses it; d, f = the same at the lowest
    # point of the lower lip; e = the chin where the bridge-to-lower-lip axis crosses the jaw.
    p["mtf_b"] = (lm[27] + lm[30]) / 2
    hits = _jaw_crossings(jaw, lm[30], face.right)
    p["mtf_a"], p["mtf_c"] = (hits[0], hits[-1]) if len(hits) >= 2 else (lm[2], lm[14])
    lip_low = lm[55:60][np.argmax(lm[55:60] @ -face.up)]
    hits = _jaw_crossings(jaw, lip_low, face.right)
    p["mtf_d"], p["mtf_f"] = (hits[0], hits[-1]) if len(hits) >= 2 else (lm[4], lm[12])
    axis = lm[56:59].mean(0) - lm[27]
    hits = _jaw_crossings(jaw[3:14], lm[27], axis / max(float(np.hypot(*axis)), 1e-6))
    p["mtf_e"] = hits[0] if hits else lm[8]
    # Brim line of a cap: above the brows, as wide as the head.
    width = float(np.hypot(*(lm[16] - lm[0])))
    brim = p["brows"] + face.up * (0.15 * face.iod)
    p["brim_r"], p["brim_l"] = brim - face.right * 0.6 * width, brim + face.right * 0.6 * width
    return p


def _jaw_crossings(jaw: np.ndarray, through: np.ndarray, direction: np.ndarray) -> list[np.ndarray]:
    """Crossings of the line `through + s * direction` with the jaw polyline, in jaw order."""
    side = (jaw - through) @ np.array([-direction[1], direction[0]])
    s0, s1 = side[:-1], side[1:]
    idx = np.nonzero((s0 != s1) & (s0 * s1 <= 0))[0]
    t = s0[idx] / (s0[idx] - s1[idx])
    return list(jaw[idx] + t[:, None] * (jaw[idx + 1] - jaw[idx]))


def _anchor_point(face: FaceGeometry, anchor: str, rng: np.random.Generator) -> np.ndarray:
    if anchor == "random":
        return face.pixels[rng.integers(len(face.pixels))] + rng.uniform(-0.5, 0.5, 2)
    if anchor == "eyes":  # one eye, the other, or both
        u = float(rng.choice([0.0, 0.5, 1.0]))
        p = (1 - u) * face.point("eye_r") + u * face.point("eye_l")
    else:
        p = face.point(anchor)
    return p + rng.normal(0.0, 0.06 * face.iod, 2)


# ----------------------------------------------------------------------------------------------------------------
# Fills

_YX = np.mgrid[0:HR_SIZE, 0:HR_SIZE].astype(np.float32)


def _color(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.uint8)


def _fill(hr: np.ndarray, rng: np.random.Generator, modes: tuple[str, ...]) -> tuple[np.ndarray, str]:
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


def _fit_scale(render: Callable[[float], np.ndarray], face: FaceGeometry, target: float,
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


# ----------------------------------------------------------------------------------------------------------------
# Kinds


def _block(hr, face, target, anchor, rng):
    n = 1 if rng.random() < 0.6 else int(rng.integers(2, 4))
    centres = [_anchor_point(face, anchor, rng)] + [_anchor_point(face, "random", rng) for _ in range(n - 1)]
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

    mask, _ = _fit_scale(render, face, target)
    fill, mode = _fill(hr, rng, ("solid", "noise"))
    return mask, fill, f"{n}x{mode}"


# DeepFill v2 (JiahuiYu/generative_inpainting, brush_stroke_mask) at 256 px, scaled to 128.
_STROKE_VERTICES = (4, 12)  # randint high is exclusive: 4-11 vertices
_STROKE_ANGLE = 2 * np.pi / 5
_STROKE_ANGLE_RANGE = 2 * np.pi / 15
_STROKE_WIDTH = (6.0, 20.0)
_STROKE_RADIUS = math.hypot(HR_SIZE, HR_SIZE) / 8


def _stroke(hr, face, target, anchor, rng):
    mask = np.zeros((HR_SIZE, HR_SIZE), np.uint8)
    cov, strokes = 0.0, 0
    start = _anchor_point(face, anchor, rng)
    while strokes < 40:
        strokes += 1
        n_vertex = int(rng.integers(*_STROKE_VERTICES))
        a_min = _STROKE_ANGLE - rng.uniform(0, _STROKE_ANGLE_RANGE)
        a_max = _STROKE_ANGLE + rng.uniform(0, _STROKE_ANGLE_RANGE)
        # DeepFill flips the whole mask at random; flipping each stroke's direction keeps it at its start point.
        fx, fy = rng.choice([-1.0, 1.0], 2)
        width = int(rng.uniform(*_STROKE_WIDTH))
        p = np.clip(start, 0, HR_SIZE - 1)
        for i in range(n_vertex):
            ang = rng.uniform(a_min, a_max)
            ang = 2 * np.pi - ang if i % 2 == 0 else ang
            r = np.clip(rng.normal(_STROKE_RADIUS, _STROKE_RADIUS / 2), 0, 2 * _STROKE_RADIUS)
            q = np.clip(p + r * np.array([fx * np.cos(ang), fy * np.sin(ang)]), 0, HR_SIZE - 1)
            before = mask.copy()
            _segment(mask, p, q, width)
            new = face.coverage(mask)
            if new >= target:  # cut the last segment short where the coverage meets the target
                best = (new - target, 1, mask)
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
                fill, mode = _fill(hr, rng, ("solid", "noise"))
                return best[2], fill, f"{strokes}x{mode}"
            cov, p = new, q
        # the next stroke starts on a face pixel that is still visible
        free = face.pixels[mask[face.pixels[:, 1], face.pixels[:, 0]] == 0]
        start = free[rng.integers(len(free))].astype(np.float64) if len(free) else start
    fill, mode = _fill(hr, rng, ("solid", "noise"))
    return mask, fill, f"{strokes}x{mode}"


def _segment(mask: np.ndarray, p: np.ndarray, q: np.ndarray, width: int) -> None:
    """A brush segment; cv2 draws thick lines with round ends (DeepFill adds discs at the vertices for that)."""
    cv2.line(mask, _fx(p), _fx(q), 255, width, cv2.LINE_8, _SHIFT)


def _fx(p: np.ndarray) -> tuple[int, int]:
    return int(round(p[0] * _ONE)), int(round(p[1] * _ONE))


_WALK_MOVES = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]], dtype=np.int32)


def _folded_walk(start: np.ndarray, n: int, box: tuple[int, int, int, int], rng) -> np.ndarray:
    """(n,2) positions of a 4-neighbour walk clipped to box (x0, y0, w, h).

    Clipping (a step out of the box leaves the walker in place) is, for a symmetric walk, the same process as
    folding a free walk back into the box by reflection, which vectorizes.
    """
    x0, y0, w, h = box
    pos = start[None, :] + np.cumsum(_WALK_MOVES[rng.integers(0, 4, n)], axis=0)
    lo = np.array([x0, y0])
    size = np.array([w, h])
    q = np.mod(pos - lo, 2 * size)
    return lo + np.where(q >= size, 2 * size - 1 - q, q)


def _walk(face, target, anchor, cfg, rng):
    noise = rng.integers(0, 256, (HR_SIZE, HR_SIZE, 3), dtype=np.uint8)
    mask = np.zeros((HR_SIZE, HR_SIZE), np.uint8)
    lo, hi = cfg.walk_hole
    if cfg.walk_steps > 0:  # the authors' protocol
        reg = cfg.walk_region
        if anchor == "random":
            rx, ry = (int(v) for v in rng.integers(0, HR_SIZE - reg + 1, 2))
        else:
            c = _anchor_point(face, anchor, rng)
            rx, ry = (int(np.clip(round(v - reg / 2), 0, HR_SIZE - reg)) for v in c)
        hw, hh = (int(v) for v in rng.integers(lo, hi + 1, 2))
        ox = rx + int(rng.integers(0, reg - hw + 1))
        oy = ry + int(rng.integers(0, reg - hh + 1))
        box = (ox, oy, hw, hh)
        start = np.clip(rng.integers(0, HR_SIZE, 2), [ox, oy], [ox + hw - 1, oy + hh - 1])
        pos = _folded_walk(start, cfg.walk_steps, box, rng)
        mask[pos[:, 1], pos[:, 0]] = 255
        return mask, noise, f"steps={cfg.walk_steps} hole={hw}x{hh}"
    # Target mode: a square box big enough that covering ~55 % of it reaches the target, kept on the face.
    need = max(1, int(round(target * face.area)))
    side = int(np.clip(round(math.sqrt(need / 0.55)), lo, HR_SIZE))
    c = _anchor_point(face, anchor, rng)
    bx0, by0, bx1, by1 = face.box
    ox = _place_interval(c[0] - side / 2, side, bx0, bx1 + 1)
    oy = _place_interval(c[1] - side / 2, side, by0, by1 + 1)
    box = (ox, oy, side, side)
    start = np.array([ox + side // 2, oy + side // 2])
    region = face.region.ravel().astype(bool)
    visited = np.zeros(HR_SIZE * HR_SIZE, bool)
    covered, steps, chunk = 0, 0, 4096
    while covered < need and steps < 400 * side * side // 16:
        pos = _folded_walk(start, chunk, box, rng)
        start = pos[-1]
        flat = pos[:, 1] * HR_SIZE + pos[:, 0]
        uniq, first = np.unique(flat, return_index=True)
        fresh = ~visited[uniq]
        uniq, first = uniq[fresh], first[fresh]
        gain = region[uniq]
        if covered + gain.sum() >= need:  # stop at the step that reaches the target
            order = np.argsort(first)
            counts = np.cumsum(gain[order])
            k = int(np.searchsorted(counts, need - covered))
            uniq = uniq[order[: k + 1]]
            steps += int(first[order[k]]) + 1
            visited[uniq] = True
            covered = need
            break
        visited[uniq] = True
        covered += int(gain.sum())
        steps += chunk
    mask.ravel()[visited] = 255
    return mask, noise, f"steps={steps} hole={side}x{side}"


def _place_interval(start: float, length: int, lo: int, hi: int) -> int:
    """Integer start of a `length` interval near `start`, inside [lo, hi) when it fits, always inside the image."""
    s = int(round(start))
    if length <= hi - lo:
        s = min(max(s, lo), hi - length)
    return min(max(s, 0), HR_SIZE - length)


def _polygon(rng: np.random.Generator) -> np.ndarray:
    """An ellipse or a random polygon around 0, of area pi (like the unit disc)."""
    if rng.random() < 0.5:
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = np.ones_like(t)
    else:
        # Angular gaps stay below pi, so the polygon is star-shaped about 0: scaled copies nest, and the coverage
        # the bisection in _fit_scale searches grows monotonically with the scale.
        k = int(rng.integers(3, 10))
        t = (np.arange(k) + rng.uniform(-0.2, 0.2, k)) * (2 * np.pi / k) + rng.uniform(0, 2 * np.pi)
        r = rng.uniform(0.6, 1.3, k)
    pts = np.stack([r * np.cos(t), r * np.sin(t)], 1)
    aspect = np.exp(rng.uniform(-np.log(2.2), np.log(2.2)))
    pts *= [np.sqrt(aspect), 1 / np.sqrt(aspect)]
    ang = rng.uniform(0, np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    pts = pts @ rot.T
    return pts / math.sqrt(max(_area(pts), 1e-6) / np.pi)  # area pi: like the unit disc


def _area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _shape(hr, face, target, anchor, rng):
    n = 1 if rng.random() < 0.7 else 2
    centres = [_anchor_point(face, anchor, rng)] + [_anchor_point(face, "random", rng) for _ in range(n - 1)]
    outlines = [_polygon(rng) for _ in range(n)]
    share = rng.uniform(0.4, 1.0, n)
    radius = np.sqrt(share / share.sum() * target * face.area / np.pi)

    def render(s: float) -> np.ndarray:
        m = np.zeros((HR_SIZE, HR_SIZE), np.uint8)
        for c, o, r in zip(centres, outlines, radius):  # one call each: one call would XOR overlapping polygons
            cv2.fillPoly(m, [np.round((c + o * r * s) * _ONE).astype(np.int32)], 255, cv2.LINE_AA, _SHIFT)
        return m

    mask, _ = _fit_scale(render, face, target)
    fill, mode = _fill(hr, rng, ("solid", "noise", "patch", "stripes"))
    return mask, fill, f"{n}x{mode}"


# ----------------------------------------------------------------------------------------------------------------
# Objects


@dataclass(frozen=True, eq=False)
class ObjectTemplate:
    """An RGBA occluder (straight, not premultiplied) with the template points that map onto face points."""

    name: str
    category: str  # glasses | mask | hat | hand | other
    rgba: np.ndarray  # (h, w, 4) uint8
    anchors: np.ndarray  # (k, 2) template pixels
    targets: tuple[str, ...]  # face point names (see _face_points) for the anchors; () = hand-style placement
    lens: np.ndarray | None = None  # (h, w) uint8: enclosed clear areas (lenses) that get a random tint
    family: str = ""  # MaskTheFace pose variants share a family (surgical, surgical_left, surgical_right)
    skew: float = 0.5  # where the nose bridge (b) sits between a and c: 0.5 frontal, lower = turned left

    @functools.cached_property
    def premul(self) -> np.ndarray:
        out = self.rgba.astype(np.float32)
        out[..., :3] *= out[..., 3:] * np.float32(1 / 255)
        return out


_CATEGORY_WEIGHT = {"glasses": 1.0, "mask": 1.0, "hand": 0.6, "other": 0.5, "hat": 0.3}
_MTF_TARGETS = ("mtf_a", "mtf_b", "mtf_c", "mtf_d", "mtf_e", "mtf_f")
# MaskTheFace's frontal surgical template anchors as fractions of its alpha box: used for masks without a cfg.
_MASK_BOX_ANCHORS = np.array([[0.03, 0.2], [0.5, 0.04], [0.97, 0.2], [0.04, 0.65], [0.5, 0.95], [0.96, 0.65]])
_MAX_SIDE = 256  # loaded templates are reduced to this; placed objects are < 128 px wide


def _object(face: FaceGeometry, target: float, cfg: OcclusionConfig, rng: np.random.Generator):
    if cfg.occluders_dir is not None:
        tpl = _pick_template(load_occluders(cfg.occluders_dir), face, rng)
        source = Path(tpl.name).name
    else:
        tpl = _procedural_object(rng)
        source = f"procedural-{tpl.name}"
    premul = _premultiplied(tpl, rng)
    m, anchor = _object_transform(tpl, face, rng)
    # Scale 0.8-1.2 about the anchors' centre, chosen towards the target; rotation +-15 degrees.
    centre = _apply(m, tpl.anchors.mean(0))
    rot = rng.uniform(-15, 15)
    sigma = rng.uniform(0.5, 1.0)  # soft edges
    probe = _warp(premul[..., 3], _about(centre, rot, 1.0) @ _h(m), sigma)
    cov1 = face.coverage(np.clip(probe + 0.5, 0, 255).astype(np.uint8))
    scale = float(np.clip(math.sqrt(target / cov1), 0.8, 1.2)) if cov1 > 0 else 1.2
    out = _warp(premul, _about(centre, rot, scale) @ _h(m), sigma)
    alpha = np.clip(out[..., 3], 0, 255)
    mask = (alpha + 0.5).astype(np.uint8)
    gain = (rng.uniform(0.9, 1.1, 3) * rng.uniform(0.75, 1.15) * 255).astype(np.float32)  # colour jitter
    fill = out[..., :3] * (1 / np.maximum(alpha, 1))[..., None] * gain
    fill = np.minimum(fill + 0.5, 255).astype(np.uint8)
    return mask, fill, anchor, source


def _h(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def _apply(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    return np.asarray(p, np.float64) @ m[:, :2].T + m[:, 2]


def _about(c: np.ndarray, degrees: float, scale: float) -> np.ndarray:
    """3x3: rotate by `degrees` and scale about point c."""
    a = np.deg2rad(degrees)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    out = np.eye(3)
    out[:2, :2] = r
    out[:2, 2] = c - r @ c
    return out


def _fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 affine map src -> dst (>= 3 points)."""
    a = np.hstack([src, np.ones((len(src), 1))])
    sol, *_ = np.linalg.lstsq(a, dst, rcond=None)
    return sol.T


def _object_transform(tpl: ObjectTemplate, face: FaceGeometry, rng) -> tuple[np.ndarray, str]:
    """2x3 template -> HR map from the anchors, and the anchor name to record."""
    if tpl.targets:
        dst = np.stack([face.point(t) for t in tpl.targets])
        m = similarity_transform(tpl.anchors, dst) if len(dst) == 2 else _fit_affine(tpl.anchors, dst)
        return m, {"glasses": "eyes", "mask": "lower_face", "hat": "forehead"}.get(tpl.category, "random")
    # Hand-style: the first anchor (palm centre) onto a face part, the second (2 eye distances towards the
    # fingertips in the template) along the face's up direction turned by up to 60 degrees either way.
    part = ("eyes", "nose", "mouth")[int(rng.integers(3))]
    p = face.point("eye_r" if part == "eyes" and rng.random() < 0.5 else "eye_l" if part == "eyes" else part)
    a = np.deg2rad(rng.uniform(-60, 60))
    d = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ face.up
    return similarity_transform(tpl.anchors, np.stack([p, p + 2 * face.iod * d])), part


def _warp(img: np.ndarray, m3: np.ndarray, sigma: float) -> np.ndarray:
    """Warp a float32 template (premultiplied RGBA or alpha) into the HR frame by the 3x3 map m3; blur by sigma."""
    m = m3[:2]
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < 0.5:  # area-reduce first so the bilinear warp does not alias thin frames and print
        f = min(1.0, 2.0 * scale)
        small = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / img.shape[1], small.shape[0] / img.shape[0]
        to_small = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
        m = (m3 @ np.linalg.inv(to_small))[:2]
        img = small
    out = cv2.warpAffine(img, m, (HR_SIZE, HR_SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return cv2.GaussianBlur(out, (0, 0), sigma) if sigma > 0 else out


def _premultiplied(tpl: ObjectTemplate, rng) -> np.ndarray:
    """float32 (h, w, 4) RGBA with RGB premultiplied by alpha/255; clear lenses get a random tint."""
    if tpl.lens is None:
        return tpl.premul
    tint = np.array([[30, 30, 30], [60, 40, 25], [40, 50, 70], [90, 90, 90], [30, 60, 40]], np.float32)
    a_t = tpl.lens.astype(np.float32) * np.float32(rng.uniform(0.35, 0.8) / 255)
    out = tpl.premul.copy()
    keep = 1 - out[..., 3] * np.float32(1 / 255)  # lens "under" the frame: premultiplied over-compositing
    out[..., :3] += tint[rng.integers(len(tint))] * (a_t * keep)[..., None]
    out[..., 3] += 255 * a_t * keep
    return out


def _pick_template(templates: tuple[ObjectTemplate, ...], face: FaceGeometry, rng) -> ObjectTemplate:
    cats = sorted({t.category for t in templates})
    cat = cats[_choice(rng, [_CATEGORY_WEIGHT[c] for c in cats])]
    families = sorted({t.family for t in templates if t.category == cat})
    fam = families[int(rng.integers(len(families)))]
    variants = [t for t in templates if t.family == fam]
    if len(variants) == 1:
        return variants[0]
    # MaskTheFace pose variants: the one whose nose bridge sits where this face's does, between the jaw points
    a, b, c = face.point("mtf_a"), face.point("mtf_b"), face.point("mtf_c")
    skew = float((b - a) @ (c - a) / max((c - a) @ (c - a), 1e-6))
    return min(variants, key=lambda t: abs(t.skew - skew))


# --- loading RGBA occluders


def _tokens(stem: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", stem.lower()) if t]


def classify_occluder(stem: str, width: int, height: int) -> str:
    """Category of an occluder from its file name, else from the aspect of its alpha box."""
    toks = _tokens(stem)
    if any("glass" in t or t in ("spectacles", "goggles", "shades", "dealwithit") for t in toks):
        return "glasses"
    if any("mask" in t or t in ("n95", "kn95", "ffp2", "surgical", "respirator") for t in toks):
        return "mask"
    if any(t in ("cap", "caps", "hat", "hats", "helmet", "beanie", "beret") for t in toks):
        return "hat"
    if any(t in ("hand", "hands", "palm") for t in toks):
        return "hand"
    aspect = width / max(height, 1)
    return "glasses" if aspect >= 2.0 else "other" if aspect < 1.0 else "mask"


def _read_masks_cfg(path: Path) -> dict[str, np.ndarray]:
    """MaskTheFace masks.cfg: template file stem -> (6,2) points a-f in template pixels."""
    parser = configparser.ConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(path)
    out = {}
    for name in parser.sections():
        sec = parser[name]
        if not all(f"mask_{c}" in sec for c in "abcdef"):
            continue  # [empty], [inpaint]: no template
        pts = np.array([[float(v) for v in sec[f"mask_{c}"].split(",")] for c in "abcdef"])
        out[Path(sec.get("template", name)).stem] = pts
    return out


def _holes(alpha: np.ndarray) -> np.ndarray:
    """Transparent areas enclosed by the opaque ones (lenses in a frame), 0/255, at the alpha's resolution."""
    h, w = alpha.shape
    f = min(1.0, 768 / max(h, w))
    a = cv2.resize(alpha, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else alpha
    solid = (a > 32).astype(np.uint8)
    k = max(3, int(0.01 * max(a.shape)) | 1)  # close one-percent gaps in thin frames
    solid = cv2.morphologyEx(solid, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    outside = np.pad(1 - solid, 1, constant_values=1)
    flood = outside.copy()
    cv2.floodFill(flood, None, (0, 0), 2)
    holes = ((flood[1:-1, 1:-1] == 1) * 255).astype(np.uint8)
    return cv2.resize(holes, (w, h), interpolation=cv2.INTER_LINEAR) if f < 1 else holes


def _eye_anchors(alpha: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Two lens centres: the two largest enclosed holes side by side, else the alpha centroids of each half."""
    n, lab, stats, cents = cv2.connectedComponentsWithStats((holes > 127).astype(np.uint8))
    if n >= 3:
        order = np.argsort(-stats[1:, cv2.CC_STAT_AREA])[:2] + 1
        big = stats[order, cv2.CC_STAT_AREA]
        if big[1] >= 0.3 * big[0] and big[1] >= 0.01 * alpha.size:
            c = cents[order]
            return c[np.argsort(c[:, 0])]
    w = alpha.shape[1]
    ys, xs = np.mgrid[0 : alpha.shape[0], 0:w]
    wts = alpha.astype(np.float64)
    out = []
    for sel in (xs < w / 2, xs >= w / 2):
        s = (wts * sel).sum()
        out.append([(xs * wts * sel).sum() / s, (ys * wts * sel).sum() / s])
    return np.array(out)


def _pixel_scale(p: np.ndarray, f: float, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Template points after cropping at `origin` then resizing by f (pixel centres at integers)."""
    return (p - np.asarray(origin, np.float64) + 0.5) * f - 0.5


def _load_template(png: Path, mtf: dict[str, np.ndarray]) -> ObjectTemplate | None:
    img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 3 or img.shape[2] != 4:
        return None  # not an RGBA image
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif img.dtype != np.uint8:
        return None
    rgba = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    ys, xs = np.nonzero(rgba[..., 3] > 8)
    if len(xs) < 16:
        return None
    x0, y0 = max(int(xs.min()) - 2, 0), max(int(ys.min()) - 2, 0)
    x1, y1 = min(int(xs.max()) + 3, rgba.shape[1]), min(int(ys.max()) + 3, rgba.shape[0])
    rgba = np.ascontiguousarray(rgba[y0:y1, x0:x1])
    h, w = rgba.shape[:2]
    stem = png.stem
    f = min(1.0, _MAX_SIDE / max(h, w))
    small = cv2.resize(rgba, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else rgba
    lens = None
    skew = 0.5
    family = stem
    if stem in mtf:
        cat, targets = "mask", _MTF_TARGETS
        anchors = _pixel_scale(mtf[stem], f, (x0, y0))
        a, b, c = anchors[:3]
        skew = float((b - a) @ (c - a) / max((c - a) @ (c - a), 1e-6))
        family = re.sub(r"_(left|right)$", "", stem)
    else:
        cat = classify_occluder(stem, w, h)
        if cat == "glasses":
            holes = _holes(rgba[..., 3])
            anchors = _pixel_scale(_eye_anchors(rgba[..., 3], holes), f)
            targets = ("eye_r", "eye_l")
            if holes.any():
                lens = cv2.resize(holes, (small.shape[1], small.shape[0]), interpolation=cv2.INTER_AREA)
        elif cat == "mask":
            anchors = _pixel_scale(_MASK_BOX_ANCHORS * [w - 1, h - 1], f)
            targets = _MTF_TARGETS
        elif cat == "hat":  # the bottom edge in the middle (a brim droops at the sides) across the full width
            mid = rgba[:, int(0.4 * w) : int(0.6 * w) + 1, 3].max(1)
            bottom = float(np.nonzero(mid > 127)[0].max()) if (mid > 127).any() else h - 1.0
            anchors = _pixel_scale(np.array([[0.0, bottom], [w - 1.0, bottom]]), f)
            targets = ("brim_r", "brim_l")
        else:  # hand / other: palm centre, and 2 eye distances towards the top for a hand ~2.9 eye distances long
            anchors = _pixel_scale(np.array([[w / 2, h * 0.6], [w / 2, h * (0.6 - 2 / 2.9)]]), f)
            targets = ()
    return ObjectTemplate(str(png), cat, small, anchors, targets, lens, family, skew)


@functools.lru_cache(maxsize=8)
def _load_dir(root: str) -> tuple[ObjectTemplate, ...]:
    base = Path(root)
    mtf_by_dir: dict[Path, dict[str, np.ndarray]] = {}
    for cfg_path in sorted(base.rglob("masks.cfg")):
        mtf_by_dir[cfg_path.parent] = _read_masks_cfg(cfg_path)
    out = []
    for png in sorted(base.rglob("*")):
        if png.suffix.lower() != ".png" or any(p.startswith((".", "_")) for p in png.relative_to(base).parts):
            continue
        tpl = _load_template(png, mtf_by_dir.get(png.parent, {}))
        if tpl is not None:
            out.append(tpl)
    return tuple(out)


def load_occluders(directory: str | Path) -> tuple[ObjectTemplate, ...]:
    """All RGBA PNG occluders under `directory` (recursively), classified and anchored; cached per process."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise ValueError(f"occluders_dir {str(directory)!r} is not a directory")
    templates = _load_dir(str(root.resolve()))
    if not templates:
        raise ValueError(f"occluders_dir {str(directory)!r} holds no PNG with an alpha channel")
    return templates


# --- procedural objects (no files needed)

_PROC_IOD = 64.0  # template pixels between the eye anchors: ~2.3x the HR size, so edges come out smooth


def _procedural_object(rng: np.random.Generator) -> ObjectTemplate:
    kind = ("glasses", "sunglasses", "mask", "hand")[_choice(rng, [1.0, 1.0, 1.0, 0.6])]
    if kind in ("glasses", "sunglasses"):
        return _draw_glasses(rng, dark=kind == "sunglasses")
    if kind == "mask":
        return _draw_mask(rng)
    return _draw_hand(rng)


def _poly(img: np.ndarray, pts: np.ndarray, value) -> None:
    cv2.fillPoly(img, [np.round(pts * _ONE).astype(np.int32)], value, cv2.LINE_8, _SHIFT)


def _polyline(img: np.ndarray, pts: np.ndarray, value, thickness: int, closed: bool = False) -> None:
    cv2.polylines(img, [np.round(pts * _ONE).astype(np.int32)], closed, value, thickness, cv2.LINE_8, _SHIFT)


def _superellipse(c, rx: float, ry: float, n: float, rot: float = 0.0, k: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    ct, st = np.cos(t), np.sin(t)
    x = rx * np.sign(ct) * np.abs(ct) ** (2 / n)
    y = ry * np.sign(st) * np.abs(st) ** (2 / n)
    r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    return np.stack([x, y], 1) @ r.T + c


def _draw_glasses(rng: np.random.Generator, dark: bool) -> ObjectTemplate:
    u = _PROC_IOD
    w, h = int(2.4 * u), int(0.9 * u)
    centres = np.array([[w / 2 - u / 2, h / 2], [w / 2 + u / 2, h / 2]])
    rx = u * rng.uniform(0.3, 0.4)
    ry = rx * rng.uniform(0.65, 0.9)
    n = float(rng.choice([2.0, 2.0, 3.0, 4.5]))  # ellipse, soft and hard rounded rectangles
    tilt = np.deg2rad(rng.uniform(0, 12))
    thick = max(1, int(round(u * rng.uniform(0.03, 0.08))))
    frame = np.array([[20, 20, 20], [70, 40, 20], [110, 110, 115], [150, 30, 30], [30, 40, 90]])[rng.integers(5)]
    rgb = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    if dark:
        lens_c = np.array([[15, 15, 15], [40, 30, 20], [20, 35, 25], [20, 25, 50]])[rng.integers(4)]
        lens_a = rng.uniform(0.88, 1.0)
    else:
        lens_c = np.array([[200, 200, 200], [120, 100, 80], [120, 140, 170]])[rng.integers(3)]
        lens_a = rng.uniform(0.3, 0.55)
    outlines = [
        _superellipse(centres[0], rx, ry, n, +tilt), _superellipse(centres[1], rx, ry, n, -tilt),
    ]  # fmt: skip
    for o in outlines:
        _poly(rgb, o, lens_c.tolist())
        _poly(alpha, o, int(255 * lens_a))
        glint = o.mean(0) + np.array([[-0.4 * rx, -0.1 * ry], [-0.1 * rx, -0.5 * ry]])
        _polyline(rgb, glint, [255, 255, 255], max(1, thick // 2 + 1))
    for o in outlines:
        _polyline(rgb, o, frame.tolist(), thick, closed=True)
        _polyline(alpha, o, 255, thick, closed=True)
    inner = np.array([[centres[0, 0] + rx * 0.95, h / 2 - 0.3 * ry], [w / 2, h / 2 - 0.45 * ry],
                      [centres[1, 0] - rx * 0.95, h / 2 - 0.3 * ry]])  # fmt: skip
    temples = [np.array([[centres[0, 0] - rx, h / 2 - 0.4 * ry], [0, h / 2 - 0.5 * ry]]),
               np.array([[centres[1, 0] + rx, h / 2 - 0.4 * ry], [w - 1, h / 2 - 0.5 * ry]])]  # fmt: skip
    for line in [inner] + temples:
        _polyline(rgb, line, frame.tolist(), thick)
        _polyline(alpha, line, 255, thick)
    rgba = np.dstack([rgb, alpha])
    return ObjectTemplate("sunglasses" if dark else "glasses", "glasses", rgba, centres, ("eye_r", "eye_l"))


def _bezier(p0, p1, p2, k: int = 16) -> np.ndarray:
    t = np.linspace(0, 1, k)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _draw_mask(rng: np.random.Generator) -> ObjectTemplate:
    # Template frame of the six MaskTheFace anchors (a..f); the mask spans ~2.2 eye distances.
    u = _PROC_IOD / 64
    margin = 14 * u
    a, b, c = np.array([4, 30]) * u, np.array([68, 6]) * u, np.array([132, 30]) * u
    d, e, f = np.array([10, 84]) * u, np.array([68, 118]) * u, np.array([126, 84]) * u
    anchors = np.stack([a, b, c, d, e, f]) + [margin, 0]
    a, b, c, d, e, f = anchors
    w, h = int(136 * u + 2 * margin), int(122 * u)
    top = _bezier(a, 2 * b - (a + c) / 2, c)
    right = _bezier(c, (c + f) / 2 + [5 * u, 0], f)
    bottom = _bezier(f, 2 * e - (d + f) / 2, d)
    left = _bezier(d, (a + d) / 2 - [5 * u, 0], a)
    outline = np.concatenate([top, right[1:], bottom[1:], left[1:]])
    colours = [[165, 205, 235], [235, 235, 235], [35, 35, 40], [120, 195, 185], [235, 185, 195], [180, 180, 185]]
    base = np.array(colours[rng.integers(len(colours))], np.float64)
    rgb = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    _poly(rgb, outline, base.tolist())
    _poly(alpha, outline, 255)
    shade = (base * 0.82).tolist()
    for frac in (0.33, 0.5, 0.67):  # pleats: lines across, between the left and right outlines
        yl, yr = a[1] + frac * (d[1] - a[1]), c[1] + frac * (f[1] - c[1])
        pleat = np.array([[a[0], yl], [(a[0] + c[0]) / 2, (yl + yr) / 2 + 3 * u], [c[0], yr]])
        _polyline(rgb, _bezier(*pleat), shade, max(1, int(round(2 * u))))
    _polyline(rgb, outline, (base * 0.9).tolist(), max(1, int(round(3 * u))), closed=True)
    loop = [235, 235, 235] if base.mean() < 100 else (base * 0.95).tolist()
    ear_loops = ((a, [0, a[1] + 8 * u]), (d, [0, d[1] - 12 * u]), (c, [w - 1, c[1] + 8 * u]), (f, [w - 1, f[1] - 12 * u]))
    for p, q in ear_loops:
        seg = np.array([p, q], np.float64)
        _polyline(rgb, seg, loop, max(1, int(round(2 * u))))
        _polyline(alpha, seg, 255, max(1, int(round(2 * u))))
    _polyline(rgb, np.array([b + [-14 * u, 5 * u], b + [14 * u, 5 * u]]), (base * 0.7).tolist(), max(1, int(2 * u)))
    rgba = np.dstack([rgb, alpha])
    return ObjectTemplate("mask", "mask", rgba, anchors, _MTF_TARGETS)


def _draw_hand(rng: np.random.Generator) -> ObjectTemplate:
    # A palm, four fingers and a thumb as capsules; the template's 2-eye-distance axis points at the fingertips.
    u = _PROC_IOD / 2  # hand proportions in half eye distances: palm ~2.6 wide, hand ~5.8 long
    w, h = int(3.6 * u), int(6.4 * u)
    tones = [[236, 196, 164], [224, 172, 140], [198, 134, 100], [141, 85, 56], [92, 58, 40]]
    skin = np.clip(np.array(tones[rng.integers(len(tones))]) + rng.normal(0, 8, 3), 0, 255)
    edge = (skin * 0.72).tolist()
    rgb = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    palm = np.array([w / 2, 4.1 * u])
    fingers = []
    for i, (dx, length, spread) in enumerate(((-0.95, 1.9, -8), (-0.32, 2.25, -3), (0.32, 2.15, 3), (0.95, 1.75, 8))):
        base = palm + [dx * u, -1.0 * u]
        ang = np.deg2rad(spread + rng.normal(0, 3))
        tip = base + length * u * np.array([np.sin(ang), -np.cos(ang)])
        fingers.append((base, tip, int(0.62 * u)))
    thumb_base = palm + [-1.1 * u, 0.4 * u]
    fingers.append((thumb_base, thumb_base + 1.6 * u * np.array([-0.75, -0.66]), int(0.72 * u)))
    wrist = np.array([[palm[0] - 0.9 * u, palm[1]], [palm[0] + 0.9 * u, palm[1]], [palm[0] + 0.85 * u, h - 1],
                      [palm[0] - 0.85 * u, h - 1]])  # fmt: skip
    for img, fg, outline in ((rgb, skin.tolist(), edge), (alpha, 255, 255)):
        _poly(img, wrist, fg)
        cv2.ellipse(img, _fx(palm), (int(1.3 * u * _ONE), int(1.45 * u * _ONE)), 0, 0, 360, fg, -1, cv2.LINE_8, _SHIFT)
        for base, tip, t in fingers:  # an outline stroke then the finger: separates neighbouring fingers
            _polyline(img, np.array([base, tip]), outline, t + 2)
            _polyline(img, np.array([base, tip]), fg, t)
    rgba = np.dstack([rgb, alpha])
    if rng.random() < 0.5:  # left or right hand
        rgba = np.ascontiguousarray(rgba[:, ::-1])
        palm = np.array([w - 1 - palm[0], palm[1]])
    anchors = np.stack([palm, palm - [0, 4 * u]])  # palm centre; 2 eye distances towards the fingertips
    return ObjectTemplate("hand", "hand", rgba, anchors, ())
