"""Horizontal flips of a sample and of everything that describes it.

A mirrored face is a valid face only if its annotations are mirrored too: x -> width - 1 - x (pixel centres at
integer coordinates), the 68 iBUG points renumbered so that e.g. the jaw still runs from the image's left
(point 0) to its right (point 16), heatmap channels permuted the same way, and parsing classes that name a side
(viewer's side, see `proui_data.parsing`) swapped: 2 <-> 3 (brows), 4 <-> 5 (eyes).

numpy versions act on one sample (or any leading batch axes); `flip_batch_torch` flips a chosen subset of a
batch of torch tensors on their own device.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


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


def flip_landmarks(landmarks: np.ndarray, width: int = 128) -> np.ndarray:
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


IMAGE_KEYS = ("hr", "lr", "lr_occluded")


def flip_batch_torch(
    batch: dict[str, "torch.Tensor"], which: "torch.Tensor", channels_last: bool = True, hr_size: int = 128
) -> dict[str, "torch.Tensor"]:
    """Mirror the samples of `batch` where `which` (B,) bool is True; returns a new dict.

    Images `hr`, `lr`, `lr_occluded` are channels-last (B, H, W, C), the layout the loader delivers (uint8,
    on device); pass `channels_last=False` for (B, C, H, W). `landmarks` (B, 68, 2) are in HR pixels of an
    `hr_size`-wide crop, `heatmaps` (B, 68, h, w), `parsing` (B, H, W), `occlusion_mask` (B, H, W), and
    `transform` (B, 2, 3) source -> HR (composed with the mirror so it still maps the source onto the flipped
    crop). Other entries are passed through unchanged. Works on any device and dtype.
    """
    import torch

    which = torch.as_tensor(which, dtype=torch.bool)
    if which.ndim != 1:
        raise ValueError(f"which must be a (B,) bool tensor, got shape {tuple(which.shape)}")
    n = which.shape[0]
    out = dict(batch)

    def select(key: str, flipped: torch.Tensor) -> None:
        x = batch[key]
        if x.shape[0] != n:
            raise ValueError(f"batch[{key!r}] has {x.shape[0]} samples, `which` has {n}")
        w = which.to(x.device).view(n, *([1] * (x.ndim - 1)))
        out[key] = torch.where(w, flipped, x)

    for key in IMAGE_KEYS:
        if key in batch:
            select(key, batch[key].flip(-2 if channels_last else -1))
    for key in ("occlusion_mask",):
        if key in batch:
            select(key, batch[key].flip(-1))
    if "parsing" in batch:
        p = batch["parsing"]
        lut = torch.tensor(PARSING_FLIP.tolist(), device=p.device)
        select("parsing", lut[p.flip(-1).long()].to(p.dtype))
    if "heatmaps" in batch:
        h = batch["heatmaps"]
        perm = torch.tensor(FLIP_PERMUTATION_68.tolist(), device=h.device)
        select("heatmaps", h.index_select(-3, perm).flip(-1))
    if "landmarks" in batch:
        lm = batch["landmarks"]
        perm = torch.tensor(FLIP_PERMUTATION_68.tolist(), device=lm.device)
        f = lm.index_select(-2, perm).clone()
        f[..., 0] = (hr_size - 1) - f[..., 0]
        select("landmarks", f)
    if "transform" in batch:
        t = batch["transform"]
        f = t.clone()
        f[..., 0, :] = -t[..., 0, :]
        f[..., 0, 2] += hr_size - 1
        select("transform", f)
    return out
