"""Released generator weights: one `.safetensors` file holding a generator's weights with its training config
in the file's metadata, so `load_generator(file)` rebuilds the network without the run folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .config import TrainConfig, config_from_dict

CONFIG_KEY = "proui_config"


def is_weights_file(path: str | Path) -> bool:
    return Path(path).is_file() and Path(path).suffix == ".safetensors"


def save_weights_file(path: str | Path, state: dict[str, torch.Tensor], cfg: TrainConfig,
                      extra: dict[str, Any] | None = None, half: bool = False) -> Path:
    """Write a generator state dict (float16 when `half`) and its config (+ `extra` JSON metadata)."""
    tensors = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in state.items()}
    meta = {CONFIG_KEY: json.dumps(cfg.to_dict())}
    meta.update({k: json.dumps(v) for k, v in (extra or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as f:
        return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}


def load_weights_file(path: str | Path) -> tuple[TrainConfig, dict[str, torch.Tensor]]:
    """(config, float32 state dict) of a weights file written by `save_weights_file`."""
    meta = read_metadata(path)
    if CONFIG_KEY not in meta:
        raise ValueError(f"{path}: no {CONFIG_KEY!r} in its metadata: not a proui generator weights file")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    return config_from_dict(meta[CONFIG_KEY]), state
