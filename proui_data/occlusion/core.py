"""`occlude`: one kind, anchor and target drawn from the config, the kind's layer composited over the face."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..schema import HR_SIZE
from .config import ANCHORS, KINDS, OcclusionConfig
from .face import face_geometry
from .masks import block, shape, stroke
from .objects import place_object
from .sampling import KindFn, choice
from .walk import walk

KIND_FUNCTIONS: dict[str, KindFn] = {
    "block": block,
    "stroke": stroke,
    "walk": walk,
    "shape": shape,
    "object": place_object,
}
assert tuple(KIND_FUNCTIONS) == KINDS  # the draw of a kind indexes KINDS in this order


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
    """Occlude one aligned 128x128 RGB face (see the package docstring). Deterministic given the rng state."""
    hr = np.asarray(hr)
    if hr.shape != (HR_SIZE, HR_SIZE, 3) or hr.dtype != np.uint8:
        raise ValueError(f"hr must be a ({HR_SIZE},{HR_SIZE},3) uint8 RGB image, got {hr.shape} {hr.dtype}")
    face = face_geometry(landmarks)
    kind = KINDS[choice(rng, [cfg.kinds[k] for k in KINDS])]
    anchor = ANCHORS[choice(rng, [cfg.anchors[a] for a in ANCHORS])]
    target = cfg.ratio.sample(rng)
    layer = KIND_FUNCTIONS[kind](hr, face, target, anchor, cfg, rng)
    out = composite(hr, layer.fill, layer.mask)
    return Occlusion(out, layer.mask, kind, layer.anchor, face.coverage(layer.mask), target, layer.detail)


def composite(hr: np.ndarray, fill: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """round(hr * (1 - a) + fill * a) with a = mask / 255, in exact integer arithmetic (hr where mask == 0)."""
    a = mask[..., None].astype(np.uint16)
    x = hr.astype(np.uint16) * (255 - a) + np.asarray(fill, np.uint8) * a + 128
    return ((x + (x >> 8)) >> 8).astype(np.uint8)  # == floor(x / 255) for x < 65536: the rounded blend
