"""Training targets rendered on the device: landmark heatmaps in [0, 1] at each progressive stage.

The geometry is `proui_data.heatmaps` (the stored uint8 maps): a stored map divided by 255 matches
`render_heatmaps_torch` to within rounding (1/510).
"""
from __future__ import annotations

import torch

from proui_data.heatmaps import SIGMA, check_render_args
from proui_data.schema import HEATMAP_SIZE, HR_SIZE


def to_map_pixels(landmarks: torch.Tensor, size: int, hr_size: int = HR_SIZE) -> torch.Tensor:
    """Points in HR pixels -> the same points in the pixels of a size x size map (pixel centres aligned): where
    `render_heatmaps_torch` centres its peaks."""
    return (landmarks + 0.5) * (size / hr_size) - 0.5


def render_heatmaps_torch(
    landmarks: torch.Tensor, size: int = HEATMAP_SIZE, sigma: float = SIGMA, hr_size: int = HR_SIZE
) -> torch.Tensor:
    """(B, K, 2) landmarks in HR pixels -> (B, K, size, size) float heatmaps in [0, 1], peak 1.

    Same geometry as `proui_data.heatmaps.render_heatmaps`. Runs on the landmarks' device; the output dtype is
    the landmarks' floating dtype (float32 for integer input). NaN landmarks give all-zero maps. Not meant to be
    differentiated.
    """
    check_render_args(tuple(landmarks.shape), size, sigma, hr_size)
    dtype = landmarks.dtype if landmarks.is_floating_point() else torch.float32
    with torch.no_grad():
        q = to_map_pixels(landmarks.to(dtype), size, hr_size)
        valid = torch.isfinite(q).all(-1, keepdim=True)
        q = torch.where(valid, q, torch.zeros_like(q))
        grid = torch.arange(size, device=landmarks.device, dtype=dtype)
        g = torch.exp((grid - q[..., None]) ** 2 * (-0.5 / sigma**2))  # (..., K, 2, size)
        gx = g[..., 0, :] * valid.to(dtype)
        gy = g[..., 1, :]
        return gy[..., :, None] * gx[..., None, :]
