"""`ObjectTemplate`: an RGBA occluder and the points on it that map onto named face points."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

# Face points (see face._face_points) for MaskTheFace's six mask anchors a..f.
MTF_TARGETS = ("mtf_a", "mtf_b", "mtf_c", "mtf_d", "mtf_e", "mtf_f")


@dataclass(frozen=True, eq=False)
class ObjectTemplate:
    """An RGBA occluder (straight, not premultiplied) with the template points that map onto face points."""

    name: str
    category: str  # glasses | mask | hat | hand | other
    rgba: np.ndarray  # (h, w, 4) uint8
    anchors: np.ndarray  # (k, 2) template pixels
    targets: tuple[str, ...]  # face point names for the anchors; () = hand-style placement
    lens: np.ndarray | None = None  # (h, w) uint8: enclosed clear areas (lenses) that get a random tint
    family: str = ""  # MaskTheFace pose variants share a family (surgical, surgical_left, surgical_right)
    skew: float = 0.5  # where the nose bridge (b) sits between a and c: 0.5 frontal, lower = turned left

    @functools.cached_property
    def premul(self) -> np.ndarray:
        out = self.rgba.astype(np.float32)
        out[..., :3] *= out[..., 3:] * np.float32(1 / 255)
        return out
