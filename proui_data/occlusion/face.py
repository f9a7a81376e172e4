"""Where the face is: the region an occlusion ratio is measured over, and named points to place occluders on.

The face region is the filled convex hull of the jaw (points 0-16) and the brows (17-26) lifted by
`FOREHEAD_LIFT` x the eye distance for the forehead. When the landmarks are unknown (any NaN, or collapsed)
everything uses `MEAN_LANDMARKS`, the mean dlib 68-point shape in the 128x128 template of `proui_data.align`
(eyes at y = 66.6, x = 49.75 and 77.25, mouth corners at y = 95.5); its face region (3510 pixels) spans the box
x 33-94, y 48-117 (inclusive).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np

from ..schema import HR_SIZE
from .draw import SHIFT, fixed

FOREHEAD_LIFT = 0.35  # brows are lifted by this many eye distances to include the lower forehead

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
    cv2.fillConvexPoly(region, fixed(hull), 1, cv2.LINE_8, SHIFT)
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
