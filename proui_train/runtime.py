"""What training, evaluation and inference share: devices, seeds, building and loading generators.

`evaluate.py` and `infer.py` import from here, never from `train.py`: using a model needs no training loop.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .checkpoint import load_checkpoint
from .config import ModelConfig, TrainConfig, config_from_dict
from .data.device import from_uint8, to_uint8  # noqa: F401 - the one pixel conversion, re-exported here
from .data.shards import DEFAULT_TEMPLATE, store_template
from .models import ProUIGAN, ProUIGANConfig
from .models.plain import PlainProgressive
from .release import CONFIG_KEY, is_weights_file, load_weights_file, read_metadata, recorded_template, save_release

if TYPE_CHECKING:
    from .models.pro_uigan import HeatmapEstimator

ARCHS = ("proui", "plain")

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch names it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def generator_config(m: ModelConfig) -> ProUIGANConfig:
    return ProUIGANConfig(prior=m.prior, prior_arch=m.prior_arch, residual_heatmaps=m.residual_heatmaps, heads=m.heads, scale_attention=m.scale_attention, norm=m.norm,
                          residual=m.residual, align_corners=m.align_corners, init_bias_std=m.init_bias_std)


def build_generator(cfg: TrainConfig | ModelConfig, device: torch.device | str = "cpu") -> nn.Module:
    """The generator a config describes (`model.arch`: Pro-UIGAN or the plain baseline), freshly initialised."""
    m = cfg.model if isinstance(cfg, TrainConfig) else cfg
    if m.arch == "plain":
        return PlainProgressive(generator_config(m))
    estimator: HeatmapEstimator | None = None
    if m.prior == "fan":
        from .fan_prior import load_fan_heatmap_estimator  # needs local FAN weights and face-alignment

        estimator = load_fan_heatmap_estimator(m.fan_weights, device)
    return ProUIGAN(generator_config(m), heatmap_estimator=estimator)


def load_generator(path: str | Path, device: torch.device | str = "cpu", use_ema: bool | None = None) -> nn.Module:
    """A generator in eval mode from a run folder, a checkpoint folder, or a release (folder or its
    `.safetensors`, the config in the metadata). `use_ema=None` takes the weights the checkpoint recommends
    (its `inference_weights`, the EMA unless recorded otherwise)."""
    if is_weights_file(path):
        cfg, state = load_weights_file(path)
        return _loaded(cfg, state, device)
    return generator_from_checkpoint(load_checkpoint(path), device, use_ema)


def generator_from_checkpoint(ck: dict, device: torch.device | str = "cpu", use_ema: bool | None = None
                              ) -> nn.Module:
    """The generator (eval mode) of a checkpoint already read with `load_checkpoint`."""
    which = ("ema" if use_ema else "generator") if use_ema is not None else ck.get("inference_weights", "ema")
    return _loaded(config_from_dict(ck["config"]), ck[which], device)


def _loaded(cfg: TrainConfig, state: dict, device: torch.device | str) -> nn.Module:
    g = build_generator(cfg, device)
    g.load_state_dict(state)
    return g.to(device).eval()


def release_run(run_dir: str | Path, out_dir: str | Path, card: str = "", extra: dict | None = None
                ) -> tuple[Path, dict]:
    """Export a run's inference generator (its latest checkpoint's, the EMA unless recorded otherwise) as a
    release folder; the step, the weights' name and the training frame join `extra` in the metadata. A
    release (folder or weights file) is released again, its metadata kept under `extra`: a new card, new
    figures. Returns (folder, metadata written)."""
    if is_weights_file(run_dir):
        cfg, state = load_weights_file(run_dir)
        meta = {k: v for k, v in read_metadata(run_dir).items() if k != CONFIG_KEY}
        generator = _loaded(cfg, state, "cpu")
    else:
        ck = load_checkpoint(run_dir)  # read once: the generator and the step come from it
        meta = {"step": ck["step"], "weights": ck.get("inference_weights", "ema")}
        if (template := run_template(ck)) is not None:  # infer and eval read the frame from the release
            meta["template"] = template
        cfg, generator = config_from_dict(ck["config"]), generator_from_checkpoint(ck)
    meta.update(extra or {})
    return save_release(out_dir, generator, cfg, card, meta), meta


def run_template(ck: dict) -> str | None:
    """The template a run was trained in: the one its training store records (None when the store is gone)."""
    store = (ck.get("config") or {}).get("data", {}).get("store")
    try:
        return store_template(store) if store else None
    except (KeyError, OSError):  # StoreError (a KeyError): no store there any more
        return None


def model_template(path: str | Path, override: str | None = None) -> str:
    """The frame (`proui_data.align` template) the generator at `path` was trained in: a release's recorded one
    (weights metadata or card), a run's training store's; `override` wins, with a warning when it disagrees. With
    neither, DEFAULT_TEMPLATE and a warning."""
    recorded = recorded_template(path) if is_weights_file(path) else run_template(load_checkpoint(path))
    if override is not None:
        if recorded is not None and recorded != override:
            log.warning("%s was trained in the %r frame; --template %s overrides it (faces will be framed unlike "
                        "its training data)", path, recorded, override)
        return override
    if recorded is None:
        log.warning("%s records no template; assuming %r (give --template if it was trained in another frame)",
                    path, DEFAULT_TEMPLATE)
        return DEFAULT_TEMPLATE
    return recorded
