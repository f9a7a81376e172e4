"""Real occluders: RGBA PNGs found recursively in a folder, classified by file name and anchored.

Categories: glasses -> eyes, masks -> nose-mouth-chin, caps/hats -> forehead, hands -> a face part, else by
aspect. MaskTheFace `masks.cfg` anchor points are used when present; clear lenses are found as transparent
holes enclosed by the frame.
"""
from __future__ import annotations

import configparser
import functools
import re
from pathlib import Path

import cv2
import numpy as np

from .template import MTF_TARGETS, ObjectTemplate

# MaskTheFace's frontal surgical template anchors as fractions of its alpha box: used for masks without a cfg.
_MASK_BOX_ANCHORS = np.array([[0.03, 0.2], [0.5, 0.04], [0.97, 0.2], [0.04, 0.65], [0.5, 0.95], [0.96, 0.65]])
_MAX_SIDE = 256  # loaded templates are reduced to this; placed objects are < 128 px wide


def load_occluders(directory: str | Path) -> tuple[ObjectTemplate, ...]:
    """All RGBA PNG occluders under `directory` (recursively), classified and anchored; cached per process."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise ValueError(f"occluders_dir {str(directory)!r} is not a directory")
    templates = _load_dir(str(root.resolve()))
    if not templates:
        raise ValueError(f"occluders_dir {str(directory)!r} holds no PNG with an alpha channel")
    return templates


@functools.lru_cache(maxsize=8)
def _load_dir(root: str) -> tuple[ObjectTemplate, ...]:
    base = Path(root)
    mtf_by_dir: dict[Path, dict[str, np.ndarray]] = {}
    for cfg_path in sorted(base.rglob("masks.cfg")):
        mtf_by_dir[cfg_path.parent] = read_masks_cfg(cfg_path)
    out = []
    for png in sorted(base.rglob("*")):
        if png.suffix.lower() != ".png" or any(p.startswith((".", "_")) for p in png.relative_to(base).parts):
            continue
        tpl = _load_template(png, mtf_by_dir.get(png.parent, {}))
        if tpl is not None:
            out.append(tpl)
    return tuple(out)


def classify_occluder(stem: str, width: int, height: int) -> str:
    """Category of an occluder from its file name, else from the aspect of its alpha box."""
    toks = [t for t in re.split(r"[^a-z0-9]+", stem.lower()) if t]
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


def read_masks_cfg(path: Path) -> dict[str, np.ndarray]:
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


def _read_rgba(png: Path) -> tuple[np.ndarray, tuple[int, int]] | None:
    """8-bit RGBA cropped to its alpha box plus a 2 px margin, and the crop's origin; None if not RGBA."""
    img = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    if img is None or img.ndim != 3 or img.shape[2] != 4:
        return None
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
    return np.ascontiguousarray(rgba[y0:y1, x0:x1]), (x0, y0)


def _load_template(png: Path, mtf: dict[str, np.ndarray]) -> ObjectTemplate | None:
    read = _read_rgba(png)
    if read is None:
        return None
    rgba, origin = read
    h, w = rgba.shape[:2]
    stem = png.stem
    f = min(1.0, _MAX_SIDE / max(h, w))
    small = cv2.resize(rgba, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else rgba
    lens = None
    skew = 0.5
    family = stem
    if stem in mtf:
        cat, targets = "mask", MTF_TARGETS
        anchors = _pixel_scale(mtf[stem], f, origin)
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
            targets = MTF_TARGETS
        elif cat == "hat":  # the bottom edge in the middle (a brim droops at the sides) across the full width
            mid = rgba[:, int(0.4 * w) : int(0.6 * w) + 1, 3].max(1)
            bottom = float(np.nonzero(mid > 127)[0].max()) if (mid > 127).any() else h - 1.0
            anchors = _pixel_scale(np.array([[0.0, bottom], [w - 1.0, bottom]]), f)
            targets = ("brim_r", "brim_l")
        else:  # hand / other: palm centre, and 2 eye distances towards the top for a hand ~2.9 eye distances long
            anchors = _pixel_scale(np.array([[w / 2, h * 0.6], [w / 2, h * (0.6 - 2 / 2.9)]]), f)
            targets = ()
    return ObjectTemplate(str(png), cat, small, anchors, targets, lens, family, skew)


def _pixel_scale(p: np.ndarray, f: float, origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Template points after cropping at `origin` then resizing by f (pixel centres at integers)."""
    return (p - np.asarray(origin, np.float64) + 0.5) * f - 0.5


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
