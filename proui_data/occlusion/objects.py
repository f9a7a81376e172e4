"""The `object` kind: an RGBA occluder placed on the face by its anchor points.

Templates come from `occluders_dir` (`occluders.load_occluders`) or are drawn (`procedural`). Placement: the
template's anchors are mapped onto named face points (glasses -> eyes, masks -> MaskTheFace's six points,
caps -> the brim line; hands onto a face part at a random angle), then a random scale of 0.8-1.2 (chosen
towards the target), rotation of +-15 degrees, colour jitter and blurred alpha edges. Objects keep their
shape, so only that scale follows the target; the achieved ratio is what is recorded.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from ..align import similarity_transform
from ..schema import HR_SIZE
from .config import OcclusionConfig
from .face import FaceGeometry
from .occluders import load_occluders
from .procedural import procedural_object
from .sampling import Layer, choice
from .template import ObjectTemplate

_CATEGORY_WEIGHT = {"glasses": 1.0, "mask": 1.0, "hand": 0.6, "other": 0.5, "hat": 0.3}
_RECORDED_ANCHOR = {"glasses": "eyes", "mask": "lower_face", "hat": "forehead"}


def place_object(hr: np.ndarray, face: FaceGeometry, target: float, anchor: str, cfg: OcclusionConfig,
                 rng: np.random.Generator) -> Layer:
    """The `object` kind; the drawn `anchor` is replaced by the part the object sits on."""
    if cfg.occluders_dir is not None:
        tpl = _pick_template(load_occluders(cfg.occluders_dir), face, rng)
        source = Path(tpl.name).name
    else:
        tpl = procedural_object(rng)
        source = f"procedural-{tpl.name}"
    premul = _premultiplied(tpl, rng)
    m, part = _object_transform(tpl, face, rng)
    centre = _apply(m, tpl.anchors.mean(0))
    rot = rng.uniform(-15, 15)
    sigma = rng.uniform(0.5, 1.0)  # soft edges
    # Scale about the anchors' centre: the coverage at scale 1 predicts the scale that meets the target.
    probe = _warp(premul[..., 3], _about(centre, rot, 1.0) @ _h(m), sigma)
    cov1 = face.coverage(np.clip(probe + 0.5, 0, 255).astype(np.uint8))
    scale = float(np.clip(math.sqrt(target / cov1), 0.8, 1.2)) if cov1 > 0 else 1.2
    out = _warp(premul, _about(centre, rot, scale) @ _h(m), sigma)
    alpha = np.clip(out[..., 3], 0, 255)
    mask = (alpha + 0.5).astype(np.uint8)
    gain = (rng.uniform(0.9, 1.1, 3) * rng.uniform(0.75, 1.15) * 255).astype(np.float32)  # colour jitter
    image = out[..., :3] * (1 / np.maximum(alpha, 1))[..., None] * gain
    image = np.minimum(image + 0.5, 255).astype(np.uint8)
    return Layer(mask, image, part, source)


def _pick_template(templates: tuple[ObjectTemplate, ...], face: FaceGeometry,
                   rng: np.random.Generator) -> ObjectTemplate:
    """A category by weight, a family in it, and of a family's pose variants the one that fits the face."""
    cats = sorted({t.category for t in templates})
    cat = cats[choice(rng, [_CATEGORY_WEIGHT[c] for c in cats])]
    families = sorted({t.family for t in templates if t.category == cat})
    fam = families[int(rng.integers(len(families)))]
    variants = [t for t in templates if t.family == fam]
    if len(variants) == 1:
        return variants[0]
    # MaskTheFace pose variants: the one whose nose bridge sits where this face's does, between the jaw points
    a, b, c = face.point("mtf_a"), face.point("mtf_b"), face.point("mtf_c")
    skew = float((b - a) @ (c - a) / max((c - a) @ (c - a), 1e-6))
    return min(variants, key=lambda t: abs(t.skew - skew))


def _premultiplied(tpl: ObjectTemplate, rng: np.random.Generator) -> np.ndarray:
    """float32 (h, w, 4) RGBA with RGB premultiplied by alpha/255.

    Clear lenses get a random tint: a clear lens hides nothing, and a lens region must still read as occluded.
    """
    if tpl.lens is None:
        return tpl.premul
    tint = np.array([[30, 30, 30], [60, 40, 25], [40, 50, 70], [90, 90, 90], [30, 60, 40]], np.float32)
    a_t = tpl.lens.astype(np.float32) * np.float32(rng.uniform(0.35, 0.8) / 255)
    out = tpl.premul.copy()
    keep = 1 - out[..., 3] * np.float32(1 / 255)  # lens "under" the frame: premultiplied over-compositing
    out[..., :3] += tint[rng.integers(len(tint))] * (a_t * keep)[..., None]
    out[..., 3] += 255 * a_t * keep
    return out


def _object_transform(tpl: ObjectTemplate, face: FaceGeometry, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """2x3 template -> HR map from the anchors, and the anchor name to record."""
    if tpl.targets:
        dst = np.stack([face.point(t) for t in tpl.targets])
        m = similarity_transform(tpl.anchors, dst) if len(dst) == 2 else _fit_affine(tpl.anchors, dst)
        return m, _RECORDED_ANCHOR.get(tpl.category, "random")
    # Hand-style: the first anchor (palm centre) onto a face part, the second (2 eye distances towards the
    # fingertips in the template) along the face's up direction turned by up to 60 degrees either way.
    part = ("eyes", "nose", "mouth")[int(rng.integers(3))]
    p = face.point("eye_r" if part == "eyes" and rng.random() < 0.5 else "eye_l" if part == "eyes" else part)
    a = np.deg2rad(rng.uniform(-60, 60))
    d = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ face.up
    return similarity_transform(tpl.anchors, np.stack([p, p + 2 * face.iod * d])), part


def _fit_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2x3 affine map src -> dst (>= 3 points)."""
    a = np.hstack([src, np.ones((len(src), 1))])
    sol, *_ = np.linalg.lstsq(a, dst, rcond=None)
    return sol.T


def _h(m: np.ndarray) -> np.ndarray:
    """3x3 homogeneous form of a 2x3 affine map."""
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
