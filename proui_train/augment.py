"""Training augmentation on the device: random horizontal flips of a batch with its landmarks and masks."""
from __future__ import annotations

import functools

import torch

from proui_data.flip import FLIP_PERMUTATION_68


@functools.lru_cache(maxsize=None)
def _permutation(device: torch.device) -> torch.Tensor:
    # made once per device: building it from a list every step is a host -> device copy (a sync on CUDA)
    return torch.tensor(FLIP_PERMUTATION_68.tolist(), dtype=torch.long, device=device)


def flip_batch(which: torch.Tensor, lr: torch.Tensor, hr: torch.Tensor, landmarks: torch.Tensor,
               mask: torch.Tensor | None = None, hr_size: int = 128
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Mirror the samples where `which` (B,) is True: images and mask (B,C,H,W) along W, landmarks (B,68,2)
    mirrored to x -> hr_size - 1 - x and renumbered (`proui_data.flip`)."""
    def pick(x: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        return torch.where(which.view(-1, *([1] * (x.ndim - 1))), flipped, x)

    mirrored = landmarks.index_select(1, _permutation(landmarks.device))
    mirrored = torch.stack([(hr_size - 1) - mirrored[..., 0], mirrored[..., 1]], -1)
    return (pick(lr, lr.flip(-1)), pick(hr, hr.flip(-1)), pick(landmarks, mirrored),
            None if mask is None else pick(mask, mask.flip(-1)))
