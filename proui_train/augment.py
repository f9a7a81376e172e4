"""Training augmentation on the device: horizontal flips of a batch with everything that describes it.

The mirror rules (x -> width - 1 - x, the 68 points renumbered, left/right parsing classes swapped) are those
of `proui_data.flip`, which applies them to numpy samples; here they act on torch tensors on their own device,
on a chosen subset of the batch.
"""
from __future__ import annotations

import functools

import torch

from proui_data.flip import FLIP_PERMUTATION_68, PARSING_FLIP
from proui_data.schema import HR_SIZE

IMAGE_KEYS = ("hr", "lr", "lr_occluded")


# The index tables are made once per device: building them from a list every step is a host -> device copy
# (a sync on CUDA).
@functools.lru_cache(maxsize=None)
def _permutation(device: torch.device) -> torch.Tensor:
    return torch.tensor(FLIP_PERMUTATION_68.tolist(), dtype=torch.long, device=device)


@functools.lru_cache(maxsize=None)
def _parsing_lut(device: torch.device) -> torch.Tensor:
    return torch.tensor(PARSING_FLIP.tolist(), dtype=torch.long, device=device)


def flip_batch_torch(
    batch: dict[str, torch.Tensor], which: torch.Tensor, channels_last: bool = True, hr_size: int = HR_SIZE
) -> dict[str, torch.Tensor]:
    """Mirror the samples of `batch` where `which` (B,) bool is True; returns a new dict.

    Images `hr`, `lr`, `lr_occluded` are channels-last (B, H, W, C), the layout the loader delivers (uint8,
    on device); pass `channels_last=False` for (B, C, H, W). `landmarks` (B, 68, 2) are in HR pixels of an
    `hr_size`-wide crop, `heatmaps` (B, 68, h, w), `parsing` (B, H, W), `occlusion_mask` (B, H, W), and
    `transform` (B, 2, 3) source -> HR (composed with the mirror so it still maps the source onto the flipped
    crop). Other entries are passed through unchanged. Works on any device and dtype.
    """
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
    if "occlusion_mask" in batch:
        select("occlusion_mask", batch["occlusion_mask"].flip(-1))
    if "parsing" in batch:
        p = batch["parsing"]
        select("parsing", _parsing_lut(p.device)[p.flip(-1).long()].to(p.dtype))
    if "heatmaps" in batch:
        h = batch["heatmaps"]
        select("heatmaps", h.index_select(-3, _permutation(h.device)).flip(-1))
    if "landmarks" in batch:
        lm = batch["landmarks"]
        f = lm.index_select(-2, _permutation(lm.device))
        f[..., 0] = (hr_size - 1) - f[..., 0]
        select("landmarks", f)
    if "transform" in batch:
        t = batch["transform"]
        f = t.clone()
        f[..., 0, :] = -t[..., 0, :]
        f[..., 0, 2] += hr_size - 1
        select("transform", f)
    return out


def flip_batch(which: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor, landmarks: torch.Tensor,
               mask: torch.Tensor | None = None, hr_size: int = HR_SIZE
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The trainer's flip: `flip_batch_torch` on (B,C,H,W) images `lr` and `hr`, landmarks (B,68,2) and an
    optional mask (B,1,H,W) mirrored along W; returns them in the same order (None stays None)."""
    batch = {"lr": lr, "hr": hr, "landmarks": landmarks}
    if mask is not None:
        batch["occlusion_mask"] = mask
    out = flip_batch_torch(batch, which, channels_last=False, hr_size=hr_size)
    return out["lr"], out["hr"], out["landmarks"], out.get("occlusion_mask")
