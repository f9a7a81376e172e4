"""HR -> LR degradation: the 8x downsample that makes the 16x16 input, plus optional blur, noise, JPEG.

Default (what `lr` holds): area averaging of each 8x8 block (cv2.INTER_AREA at an exact integer factor),
an antialiased box filter, computed in float and rounded. Optional recipe terms are applied in the classic
order of blind SR degradations: Gaussian blur on the HR, downsample, additive Gaussian noise, JPEG.
Random parameters come from the caller's generator, which is seeded from the sample key.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class DegradeConfig:
    """The recipe's `[degrade]` section."""

    scale: int = 8  # HR side / LR side
    blur_sigma: tuple[float, float] = (0.0, 0.0)  # uniform range of the HR Gaussian blur sigma (0 = off)
    noise_sigma: tuple[float, float] = (0.0, 0.0)  # uniform range of LR noise std in 0..255 units
    jpeg_quality: tuple[int, int] = (0, 0)  # uniform range of JPEG quality; 0 = off


def downsample(hr: np.ndarray, scale: int = 8) -> np.ndarray:
    """Exact box-filter reduction by an integer factor (uint8 in, uint8 out)."""
    h, w = hr.shape[:2]
    if h % scale or w % scale:
        raise ValueError(f"{h}x{w} is not divisible by {scale}")
    x = hr.astype(np.float32).reshape(h // scale, scale, w // scale, scale, -1).mean(axis=(1, 3))
    return np.clip(x + 0.5, 0, 255).astype(np.uint8).reshape((h // scale, w // scale) + hr.shape[2:])


def degrade(hr: np.ndarray, cfg: DegradeConfig, rng: np.random.Generator) -> np.ndarray:
    """Make the LR image from an HR face (see module docstring)."""
    img = hr
    sigma = rng.uniform(*cfg.blur_sigma) if cfg.blur_sigma[1] > 0 else 0.0
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, borderType=cv2.BORDER_REFLECT)
    lr = downsample(img, cfg.scale)
    noise = rng.uniform(*cfg.noise_sigma) if cfg.noise_sigma[1] > 0 else 0.0
    if noise > 0:
        lr = np.clip(lr.astype(np.float32) + rng.normal(0.0, noise, lr.shape), 0, 255).round().astype(np.uint8)
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)) if cfg.jpeg_quality[1] > 0 else 0
    if quality > 0:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(lr, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
        lr = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return lr
