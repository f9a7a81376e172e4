"""`model.prior = "fan"`: the authors' set-up, a frozen 2D FAN giving each stage its landmark heatmaps.

The weights cannot be downloaded here: `model.fan_weights` names a local file (the face-alignment
TorchScript archive or a FAN-4 state dict; `proui_data.fan.find_weights` says which file to place where).
"""
from __future__ import annotations

from typing import Callable

import torch

from proui_data.fan import find_weights, load_fan


def load_fan_heatmap_estimator(weights: str, device: str | torch.device = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """A frozen callable: faces (B,3,256,256) in [-1,1] -> FAN heatmaps (B,68,64,64)."""
    net = load_fan(str(find_weights(weights)), str(device))
    for p in net.parameters():
        p.requires_grad_(False)

    def estimate(face: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = net(((face.float() + 1.0) / 2.0))  # FAN takes RGB in [0, 1]
            out = out[-1] if isinstance(out, (list, tuple)) else out  # the last hourglass
        return out.to(face.dtype)

    return estimate
