"""The plain progressive baseline: Pro-UIGAN's 16 -> 32 -> 64 -> 128 stages without priors or attention.

Each stage replaces the prior estimator and the cross-modal attention by a convolutional refinement of the
same role (face in, refined face out, supervised like Pro-UIGAN's refined face) and keeps the upsampling
block, fed with the refined face alone:

    face (B,3,S,S) --conv, residual blocks, conv + tanh--> refined face (B,3,S,S)
    refined face --UpsampleBlock--> out (B,3,2S,2S) = the next stage's face

The refinement is widened so that the whole network has about as many parameters as Pro-UIGAN's default
(1.31 M): what the comparison measures is what priors and attention buy, not capacity.
"""
from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from .blocks import ConvNormAct, ResidualBlock, init_weights
from .pro_uigan import HUB_METADATA, Progressive, ProUIGANConfig, UpsampleBlock, as_config, bicubic_x2


class PlainStage(nn.Module):
    """face (B,3,S,S) -> {"face": refined (B,3,S,S), "out": (B,3,2S,2S)}."""

    def __init__(self, up_kernel_size: int, config: ProUIGANConfig, width: int, blocks: int) -> None:
        super().__init__()
        self.refine = nn.Sequential(
            ConvNormAct(3, width, 3, norm=config.norm),
            *(ResidualBlock(width, config.norm) for _ in range(blocks)),
            nn.Conv2d(width, 3, 3, 1, 1),
            nn.Tanh(),
        )
        self.upsample = UpsampleBlock.from_config(0, up_kernel_size, config)
        self.residual = config.residual

    def forward(self, face: torch.Tensor) -> dict[str, torch.Tensor]:
        refined_face = self.refine(face)  # (B, 3, S, S)
        out = self.upsample(refined_face)  # (B, 3, 2S, 2S)
        if self.residual:
            out = out + bicubic_x2(face)
        return {"face": refined_face, "out": out}


class PlainProgressive(Progressive, PyTorchModelHubMixin, **HUB_METADATA):
    """lr (B,3,16,16) in [-1, 1] -> (B,3,128,128) through three plain stages; the same output dict as
    `ProUIGAN` without the heatmap entries: {"stages": [{"face", "out"}, ...], "final"}."""

    def __init__(self, config: ProUIGANConfig | None = None, width: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.config = config = as_config(config)
        self.stages = nn.ModuleList(PlainStage(k, config, width, blocks) for k in config.up_kernel_sizes)
        if config.init_std is not None:
            init_weights(self, config.init_std, config.init_bias_std)
