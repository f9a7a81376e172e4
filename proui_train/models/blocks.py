"""Generic layers shared by the Pro-UIGAN generator and discriminators.

Everything here is NCHW and works unchanged on channels-last tensors.
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("batch", "instance", "none")


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    return norm


def norm_layer(norm: str, channels: int) -> nn.Module:
    """A 2-D normalisation layer by name: 'batch', 'instance' (affine, no running stats) or 'none'."""
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class ConvNormAct(nn.Sequential):
    """conv(k, stride, dilation, 'same' padding) -> norm -> activation. Convs keep their bias, as the reference's do."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        dilation: int = 1,
        norm: str = "batch",
        act: nn.Module | None = None,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation),
            norm_layer(norm, out_channels),
            nn.ReLU() if act is None else act,
        )


class ResidualBlock(nn.Module):
    """x + norm(conv(relu(norm(conv(x))))), 3x3 convs, constant width (SRResNet style, as in the reference)."""

    def __init__(self, channels: int, norm: str = "batch") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, 1, 1),
            norm_layer(norm, channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, 1, 1),
            norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@torch.no_grad()
def init_weights(module: nn.Module, std: float = 0.02, bias_std: float = 0.0) -> None:
    """DCGAN-style init: conv weights ~ N(0, std), conv biases ~ N(0, bias_std) (0: zeros), norm scales
    ~ N(1, std) and norm shifts 0. The reference's generator uses bias_std = std = 0.02."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.normal_(m.bias, 0.0, bias_std) if bias_std else nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in `module` (optionally only those with requires_grad)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
