"""Horizontal flips of a sample and of everything that describes it.

A mirrored face is a valid face only if its annotations are mirrored too: x -> width - 1 - x (pixel centres at
integer coordinates), the 68 iBUG points renumbered so that e.g. the jaw still runs from the image's left
(point 0) to its right (point 16), heatmap channels permuted the same way, and parsing classes that name a side
(viewer's side, see `proui_data.parsing`) swapped: 2 <-> 3 (brows), 4 <-> 5 (eyes).

These act on one numpy sample (or any leading batch axes); `proui_train.augment.flip_batch_torch` flips a
chosen subset of a batch of torch tensors on their own device with the same tables.
"""
from __future__ import annotations

import numpy as np

from .schema import HR_SIZE


def _flip_permutation_68() -> np.ndarray:
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils (27-30 and 33 lie on the midline)
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lip (51, 57 on the midline)
    pairs += [(60, 64), (61, 63), (65, 67)]  # inner lip (62, 66 on the midline)
    perm = np.arange(68)
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


# Point i of the flipped face is point FLIP_PERMUTATION_68[i] of the original (x mirrored). An involution.
FLIP_PERMUTATION_68: np.ndarray = _flip_permutation_68()
FLIP_PERMUTATION_68.setflags(write=False)
# Class c of the flipped parsing map is PARSING_FLIP[c] of the original: brows 2<->3, eyes 4<->5.
PARSING_FLIP: np.ndarray = np.array([0, 1, 3, 2, 5, 4, 6, 7, 8, 9, 10], dtype=np.uint8)
PARSING_FLIP.setflags(write=False)


def flip_landmarks(landmarks: np.ndarray, width: int = HR_SIZE) -> np.ndarray:
    """(..., 68, 2) landmarks in an image `width` pixels wide -> mirrored and renumbered. NaN stays NaN."""
    landmarks = np.asarray(landmarks)
    if landmarks.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must have shape (..., 68, 2), got {landmarks.shape}")
    out = landmarks[..., FLIP_PERMUTATION_68, :].copy()
    out[..., 0] = (width - 1) - out[..., 0]
    return out


def flip_parsing(parsing: np.ndarray) -> np.ndarray:
    """(..., H, W) Helen-class parsing map -> mirrored, with left/right classes swapped."""
    parsing = np.asarray(parsing)
    if parsing.ndim < 2:
        raise ValueError(f"parsing must have shape (..., H, W), got {parsing.shape}")
    if parsing.size and int(parsing.max()) >= len(PARSING_FLIP):
        raise ValueError(f"parsing classes are 0..{len(PARSING_FLIP) - 1}, found {int(parsing.max())}")
    return PARSING_FLIP[parsing[..., ::-1]].astype(parsing.dtype, copy=False)


def flip_heatmaps(heatmaps: np.ndarray) -> np.ndarray:
    """(..., 68, h, w) heatmaps -> mirrored, channels renumbered like the landmarks."""
    heatmaps = np.asarray(heatmaps)
    if heatmaps.ndim < 3 or heatmaps.shape[-3] != 68:
        raise ValueError(f"heatmaps must have shape (..., 68, h, w), got {heatmaps.shape}")
    return np.ascontiguousarray(heatmaps[..., FLIP_PERMUTATION_68, :, ::-1])


def flip_sample(
    hr: np.ndarray,
    landmarks: np.ndarray,
    parsing: np.ndarray | None = None,
    heatmaps: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Mirror one sample: hr (H, W, C), landmarks (68, 2) in hr pixels, parsing (H, W), heatmaps (68, h, w),
    mask (H, W) e.g. the occlusion mask. Returns them in the same order; None stays None.
    """
    hr = np.asarray(hr)
    if hr.ndim != 3:
        raise ValueError(f"hr must be (H, W, C), got {hr.shape}")
    return (
        np.ascontiguousarray(hr[:, ::-1]),
        flip_landmarks(landmarks, width=hr.shape[1]),
        None if parsing is None else flip_parsing(parsing),
        None if heatmaps is None else flip_heatmaps(heatmaps),
        None if mask is None else np.ascontiguousarray(np.asarray(mask)[..., ::-1]),
    )
