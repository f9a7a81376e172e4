"""Patch discriminators for Pro-UIGAN: a global one on the 128x128 face and an optional local one on a 64x64 crop.

Blocks as in the reference (SEU-yang/Pro-UIGAN): conv3x3 stride 1 -> norm (not in the first block) -> LReLU(0.2)
-> conv3x3 stride 2 -> norm -> LReLU(0.2); then a 3x3 conv to one channel. Each block halves the resolution, so
the global discriminator (4 blocks) maps 128 -> 8x8 and the local one (3 blocks) 64 -> 8x8. The outputs are raw
scores for the least-squares GAN loss (the released global discriminator ends in a sigmoid, which LSGAN does not
need).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .blocks import check_norm, init_weights, norm_layer

GLOBAL_CHANNELS = (64, 128, 256, 512)
LOCAL_CHANNELS = (64, 128, 256)


class PatchDiscriminator(nn.Module):
    """images (B,C,H,W) -> patch scores (B,1,H/2^n,W/2^n) for n = len(channels) blocks."""

    def __init__(
        self,
        in_channels: int = 3,
        channels: Sequence[int] = GLOBAL_CHANNELS,
        norm: str = "batch",
        init_std: float | None = 0.02,
    ) -> None:
        super().__init__()
        check_norm(norm)
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(channels):
            layers.append(nn.Conv2d(c_in, c, 3, 1, 1))
            if i > 0:
                layers.append(norm_layer(norm, c))
            layers += [
                nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(c, c, 3, 2, 1),
                norm_layer(norm, c),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c_in = c
        layers.append(nn.Conv2d(c_in, 1, 3, 1, 1))
        self.model = nn.Sequential(*layers)
        self.n_blocks = len(channels)
        # the last activation of each block: what feature matching compares
        self.block_ends = [i for i, m in enumerate(self.model) if isinstance(m, nn.LeakyReLU)][1::2]
        if init_std is not None:
            init_weights(self, init_std)

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(1, H', W') for an input of height x width (stride-2 convs with padding 1 round up)."""
        h, w = height, width
        for _ in range(self.n_blocks):
            h, w = (h + 1) // 2, (w + 1) // 2
        return (1, h, w)

    def forward(self, images: torch.Tensor, features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch scores; with `features`, also each block's output [(B,64,H/2,W/2), (B,128,H/4,W/4), ...]."""
        if not features:
            return self.model(images)
        block_outputs = []
        x = images
        for i, layer in enumerate(self.model):
            x = layer(x)
            if i in self.block_ends:
                block_outputs.append(x)
        return x, block_outputs


def global_discriminator(norm: str = "batch", init_std: float | None = 0.02) -> PatchDiscriminator:
    """The 128x128 whole-face discriminator: four blocks 64 -> 128 -> 256 -> 512, output (B,1,8,8)."""
    return PatchDiscriminator(3, GLOBAL_CHANNELS, norm, init_std)


def local_discriminator(norm: str = "batch", init_std: float | None = 0.02) -> PatchDiscriminator:
    """The 64x64 crop discriminator: three blocks 64 -> 128 -> 256, output (B,1,8,8)."""
    return PatchDiscriminator(3, LOCAL_CHANNELS, norm, init_std)


def crop_patches(images: torch.Tensor, top_left: torch.Tensor, size: int = 64) -> torch.Tensor:
    """Per-sample square crops: images (B,C,H,W), top_left (B,2) integer (x, y) -> (B,C,size,size).

    Differentiable with respect to `images` (advanced indexing, no Python loop over the batch).
    """
    b, _, h, w = images.shape
    if top_left.shape != (b, 2):
        raise ValueError(f"top_left must have shape ({b}, 2), got {tuple(top_left.shape)}")
    top_left = top_left.to(device=images.device, dtype=torch.long)
    x0, y0 = top_left[:, 0], top_left[:, 1]
    if (x0 < 0).any() or (y0 < 0).any() or (x0 + size > w).any() or (y0 + size > h).any():
        raise ValueError(f"crops of {size} pixels at {top_left.tolist()} leave the {h}x{w} image")
    offsets = torch.arange(size, device=images.device)
    rows = (y0[:, None] + offsets)[:, :, None]  # (B, size, 1)
    cols = (x0[:, None] + offsets)[:, None, :]  # (B, 1, size)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # (B, C, size, size)
