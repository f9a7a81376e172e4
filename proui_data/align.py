"""Similarity alignment of a face to the 128x128 template.

Template (x, y in HR pixels, pixel centres at integer coordinates), order: right-eye centre (image left),
left-eye centre, nose tip, right mouth corner, left mouth corner:

    (49.75, 66.6) (77.25, 66.6) (63.5, 82.6) (51.1, 95.5) (75.9, 95.5)

Where it comes from: CelebA's own `img_align_celeba` geometry. We ran dlib's 68-point predictor on 390 of
400 CelebA *train-partition* images (178x218) and averaged the five points (eye centres = mean of points
36-41 / 42-47, nose 30, mouth 48 / 54): (69.5, 112.6) (107.6, 112.7) (88.1, 134.9) (71.3, 152.8)
(105.8, 152.8). The crop is the central 178x178 square of that frame (rows 20..197) scaled by 128/178,
the crop face-hallucination papers use for CelebA at 128x128; the result was then made symmetric about
x = 63.5. `benchmarks/template.py` recomputes it.

Named templates (`TEMPLATES`, the recipe's `align.template`): `celeba`, the above, the default; `fsrnet`, the
frame of the FSRNet test sets (CelebA-1000, Helen-50), where faces are ~1.27x larger and sit ~19 px higher:

    (46.05, 48.0) (80.95, 48.0) (63.5, 66.9) (47.4, 82.15) (79.6, 82.15)

derived from that frame's geometry only: the same five dlib points averaged over 378 of the first 400
FSRNet CelebA-1000 HR crops as they are, made symmetric. The similarity from `fsrnet` to `celeba` has scale
0.813 and shift (11.9, 28.2) HR px. A model evaluated on the FSRNet sets is trained in this frame.

Border: where the template reaches past the source image, `warp_to_template` fills by `BORDERS[border]` and
`padded_fraction` says how much of the crop that is (stored per sample as `padded`).
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from .schema import HR_SIZE

TEMPLATE_5 = np.array(
    [[49.75, 66.6], [77.25, 66.6], [63.5, 82.6], [51.1, 95.5], [75.9, 95.5]], dtype=np.float64
)
TEMPLATE_FSRNET = np.array(
    [[46.05, 48.0], [80.95, 48.0], [63.5, 66.9], [47.4, 82.15], [79.6, 82.15]], dtype=np.float64
)
TEMPLATES = {"celeba": TEMPLATE_5, "fsrnet": TEMPLATE_FSRNET}
TEMPLATE_EYE_DISTANCE = float(TEMPLATE_5[1, 0] - TEMPLATE_5[0, 0])  # 27.5 HR px between the eye centres
BORDERS = {"replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}
# Mean dlib HOG face box on CelebA aligned 178x218 frames (same 390 images): x0, y0, x1, y1.
CELEBA_ALIGNED_BOX = (43.0, 88.0, 133.0, 177.0)


def landmarks68_to_5(landmarks: np.ndarray) -> np.ndarray:
    """(68,2) iBUG points -> (5,2) eye centres, nose tip, mouth corners (template order)."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping src -> dst.

    Umeyama (1991). Returns a (2,3) float64 affine matrix.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.shape[0] < 2 or not np.isfinite(src).all():
        raise ValueError(f"need >= 2 finite point pairs, got {src.shape} -> {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum() / len(src)
    if var_s < 1e-12:
        raise ValueError("degenerate source points (all coincide)")
    cov = d_c.T @ s_c / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rot = u @ np.diag(d) @ vt
    scale = (sig * d).sum() / var_s
    m = np.zeros((2, 3))
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - m[:, :2] @ mu_s
    return m


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (...,2) points through a (2,3) affine matrix (NaN stays NaN)."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ m[:, :2].T + m[:, 2]


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The (2,3) affine `outer ∘ inner`."""
    a = np.vstack([outer, [0, 0, 1]]) @ np.vstack([inner, [0, 0, 1]])
    return a[:2]


def template_points(name: str) -> np.ndarray:
    """The five template points of a named template (see module docstring)."""
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


def template_box(name: str = "celeba") -> tuple[float, float, float, float]:
    """The face box (x0, y0, x1, y1, HR px) the shape predictor looks in on a face aligned to `name`."""
    m = similarity_transform(TEMPLATE_5, template_points(name))
    corners = apply_transform(m, np.array(TEMPLATE_BOX).reshape(2, 2))
    return tuple(float(v) for v in corners.ravel())


def padded_fraction(m: np.ndarray, source_hw: tuple[int, int], size: int = HR_SIZE) -> float:
    """Share of the size x size crop of `m` whose pixel centre falls outside the source image."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    h, w = source_hw
    corners = apply_transform(inv, np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float))
    if (corners >= -0.5).all() and (corners[:, 0] <= w - 0.5).all() and (corners[:, 1] <= h - 0.5).all():
        return 0.0  # the common case: the crop (a convex image of the square) lies inside the photo
    x = np.arange(size, dtype=np.float64)
    sx = inv[0, 0] * x[None, :] + inv[0, 1] * x[:, None] + inv[0, 2]  # source x of each crop pixel (row = y)
    sy = inv[1, 0] * x[None, :] + inv[1, 1] * x[:, None] + inv[1, 2]
    inside = (sx >= -0.5) & (sx <= w - 0.5) & (sy >= -0.5) & (sy <= h - 0.5)
    return float(1.0 - np.count_nonzero(inside) / inside.size)


def warp_to_template(image: np.ndarray, m: np.ndarray, size: int = HR_SIZE, border: str = "replicate") -> np.ndarray:
    """Warp `image` with the (2,3) map `m` into a size x size crop.

    Only the window of `image` the crop samples is read, so a face costs its own pixels, not the photo's. A
    reduction of more than 2x is first done there by a block mean (integer blocks: a window's blocks are the
    photo's), so that the bilinear warp, left a reduction of 1-2x, does not alias.
    Pixels outside the source are filled by `border`: "replicate" (edge pixels), "reflect" (mirror without
    repeating the edge) or "constant" (the source's mean colour).
    """
    if border not in BORDERS:
        raise ValueError(f"unknown border {border!r}; known: {', '.join(BORDERS)}")
    value = tuple(float(v) for v in cv2.mean(image)[: image.shape[2] if image.ndim == 3 else 1]) if border == "constant" else 0
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    block = 1 if scale >= 0.5 else math.ceil(0.5 / scale)
    x0, y0, x1, y1 = _sampled_window(m, size, image.shape[:2], block, border)
    window = image[y0:y1, x0:x1]
    h, w = window.shape[:2]
    if block > 1:
        # a window ending at the photo's edge with a part block is completed by repeating the edge (< 1 block)
        pad_y, pad_x = -h % block, -w % block
        if pad_y or pad_x:
            window = cv2.copyMakeBorder(window, 0, pad_y, 0, pad_x, cv2.BORDER_REPLICATE)
        window = cv2.resize(window, (window.shape[1] // block, window.shape[0] // block), interpolation=cv2.INTER_AREA)
    # source px -> window px: pixel centres, x_w = (x - x0 + 0.5) / block - 0.5
    to_window = np.array([[1 / block, 0, (0.5 - x0) / block - 0.5], [0, 1 / block, (0.5 - y0) / block - 0.5]])
    m = compose(m, np.linalg.inv(np.vstack([to_window, [0, 0, 1]]))[:2])
    return cv2.warpAffine(window, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=BORDERS[border], borderValue=value)


def _sampled_window(m: np.ndarray, size: int, source_hw: tuple[int, int], block: int,
                    border: str) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the part of a source_hw image a size x size warp by `m` reads, with the bilinear's
    neighbours and, for "reflect", the mirror images of what lies outside; x0, y0 on the `block` grid. A warp that
    reads nothing inside the image (a crop wholly off it) gets the block nearest to it: borders extend from there."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    corners = apply_transform(inv, np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], float))
    margin = 2 * block + 1
    window = []
    for lo, hi, extent in ((corners[:, 0].min(), corners[:, 0].max(), source_hw[1]),
                           (corners[:, 1].min(), corners[:, 1].max(), source_hw[0])):
        if border == "reflect":  # reflect-101 reads x < 0 at -x, x > extent - 1 at 2 (extent - 1) - x
            lo, hi = min(lo, 2 * (extent - 1) - hi), max(hi, -lo)
        start = int(np.floor((lo - margin) / block)) * block
        start = min(max(start, 0), max(extent - 1, 0) // block * block)
        stop = min(max(int(np.ceil(hi + margin)) + 1, start + 1), extent)
        window += [start, stop]
    return window[0], window[2], window[1], window[3]


def _celeba_frame_to_hr(x: float, y: float) -> tuple[float, float]:
    s = HR_SIZE / 178.0
    return x * s, (y - 20.0) * s


# The same face box in HR pixels: where the shape predictor looks on an already aligned face.
TEMPLATE_BOX = _celeba_frame_to_hr(*CELEBA_ALIGNED_BOX[:2]) + _celeba_frame_to_hr(*CELEBA_ALIGNED_BOX[2:])
