"""Landmark heatmaps: one isotropic Gaussian per landmark, rendered directly at the heatmap resolution.

A landmark at HR pixel p (pixel centres at integer coordinates, HR crop `hr_size` wide) lands at

    q = (p + 0.5) * size / hr_size - 0.5

in a `size` x `size` map, so that pixel areas, not pixel indices, line up (for 128 -> 64, HR pixels 0 and 1
both fall inside heatmap pixel 0, whose centre is q = 0). `sigma` is in heatmap pixels. A 2-D isotropic
Gaussian is the outer product of two 1-D ones, which keeps rendering at O(K * size) exponentials.

The stored form is uint8 with peak amplitude 255 (`render_heatmaps`); the trainer renders float maps in [0, 1]
on its own device at each progressive stage (`proui_train.targets.render_heatmaps_torch`). Both use the same
formula, so a stored map divided by 255 matches the torch one to within rounding (1/510). A landmark with a
NaN coordinate gives an all-zero map.
"""
from __future__ import annotations

import numpy as np

from .schema import HEATMAP_SIZE, HR_SIZE

SIGMA = 1.5


def check_render_args(shape: tuple[int, ...], size: int, sigma: float, hr_size: int) -> None:
    """Raise ValueError unless landmarks of this shape can be rendered with these settings."""
    if len(shape) < 2 or shape[-1] != 2:
        raise ValueError(f"landmarks must have shape (..., K, 2), got {shape}")
    if sigma <= 0 or size <= 0 or hr_size <= 0:
        raise ValueError(f"need sigma, size, hr_size > 0, got {sigma}, {size}, {hr_size}")


def render_heatmaps(
    landmarks: np.ndarray, size: int = HEATMAP_SIZE, sigma: float = SIGMA, hr_size: int = HR_SIZE
) -> np.ndarray:
    """(..., K, 2) landmarks in HR pixels -> (..., K, size, size) uint8 Gaussian heatmaps, peak 255.

    Usually (68, 2) -> (68, 64, 64). NaN landmarks give all-zero maps.
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    check_render_args(landmarks.shape, size, sigma, hr_size)
    if landmarks.ndim == 2:
        return _render_one(landmarks, size, sigma, hr_size)
    # One sample at a time: a whole-batch float intermediate is memory-bound and ~20x slower per sample.
    flat = landmarks.reshape(-1, *landmarks.shape[-2:])
    out = np.empty((len(flat), flat.shape[1], size, size), dtype=np.uint8)
    for i, lm in enumerate(flat):
        out[i] = _render_one(lm, size, sigma, hr_size)
    return out.reshape(*landmarks.shape[:-1], size, size)


def _render_one(landmarks: np.ndarray, size: int, sigma: float, hr_size: int) -> np.ndarray:
    q = (landmarks + 0.5) * np.float32(size / hr_size) - 0.5
    valid = np.isfinite(q).all(-1, keepdims=True)  # (K, 1)
    q = np.where(valid, q, np.float32(0.0))
    grid = np.arange(size, dtype=np.float32)
    g = np.exp((grid - q[..., None]) ** 2 * np.float32(-0.5 / sigma**2))  # (K, 2, size)
    # Fold the 255 amplitude (and the validity mask) into the column factor before the outer product.
    gx = g[:, 0, :] * np.where(valid, np.float32(255.0), np.float32(0.0))
    gy = g[:, 1, :]
    maps = gy[:, :, None] * gx[:, None, :]
    maps += 0.5  # values are >= 0, so truncation after +0.5 rounds half up
    return maps.astype(np.uint8)
