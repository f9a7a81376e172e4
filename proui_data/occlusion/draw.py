"""cv2 drawing in fixed point: vertices with 1/16-pixel precision, so shapes follow sub-pixel placement."""
from __future__ import annotations

import cv2
import numpy as np

SHIFT = 4  # cv2 fixed-point fraction bits
ONE = 1 << SHIFT


def fixed(pts: np.ndarray) -> np.ndarray:
    """Points in cv2 fixed point (int32)."""
    return np.round(pts * ONE).astype(np.int32)


def fx(p: np.ndarray) -> tuple[int, int]:
    """One point in cv2 fixed point."""
    return int(round(p[0] * ONE)), int(round(p[1] * ONE))


def poly(img: np.ndarray, pts: np.ndarray, value) -> None:
    cv2.fillPoly(img, [fixed(pts)], value, cv2.LINE_8, SHIFT)


def polyline(img: np.ndarray, pts: np.ndarray, value, thickness: int, closed: bool = False) -> None:
    cv2.polylines(img, [fixed(pts)], closed, value, thickness, cv2.LINE_8, SHIFT)
