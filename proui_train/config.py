"""Training configs as data: TOML files in `pipelines/train/`, validated (unknown keys are errors),
overridable from the command line with `--set section.key=value`."""
from __future__ import annotations

import dataclasses
import importlib.resources
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from proui_data.tables import build_dataclass, read_toml

from .losses import LossConfig  # the [loss] table is the loss function's own weights type


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class DataConfig:
    store: str = "demo.zarr"  # path or fsspec URL of a proui store
    train_split: str = "train"
    val_split: str = "val"  # skipped when the store has no such split
    input: str = "lr_occluded"  # "lr_occluded" (occluded thumbnails, the task) or "lr" (clean thumbnails)
    batch_size: int = 4  # the reference's default
    workers: int = 0  # DataLoader worker processes (spawned)
    shuffle_shards: int = 8
    flip: bool = True  # random horizontal flip with the 68-point permutation, on the device
    heatmap_sigma: tuple[float, float, float] = (1.0, 1.0, 1.5)  # target heatmap sigma at 16, 32, 64 px


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "proui"  # "proui" (Pro-UIGAN) | "plain" (the same progressive stages without priors or attention)
    prior: str = "learned"  # "learned" (default: no FAN weights here) or "fan"
    prior_arch: str = "dilated"  # the learned prior's network: "dilated" (the first releases) or "hourglass"
    residual_heatmaps: bool = False  # the attention's refined heatmaps correct the prior's logits (not the reference)
    heads: int = 1
    scale_attention: bool = False
    norm: str = "batch"
    fan_weights: str = ""  # for prior = "fan": a local face-alignment FAN file
    residual: bool = False  # not the reference: each stage adds the bicubic x2 of its input to its output
    align_corners: bool = True  # the reference's bilinear x2 upsampling
    init_bias_std: float = 0.02  # the reference draws conv biases from N(0, 0.02); 0: zeros


@dataclass(frozen=True)
class OptimConfig:
    lr_g: float = 5e-4
    lr_d: float = 1e-4
    # The reference declares (0.5, 0.9) but never passes them to Adam, so it trained with torch's (0.9, 0.999).
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "constant"  # "constant" | "cosine" | "step" | "wsd"
    step_every: int = 0  # for "step": halve the learning rates every this many steps
    decay_steps: int = 0  # for "wsd": linear decay to 0 over the last this many steps
    warmup: int = 0
    grad_clip: float = 10.0  # 0: off
    ema_decay: float = 0.999
    # decay at step t = min(ema_decay, (1 + t) / (10 + t)): without it a 200-step EMA is still 82 % noise
    ema_warmup: bool = True
    gan_start: int = 0  # adversarial training (D updates and G's adversarial term) from this step


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/proui"
    steps: int = 20
    seed: int = 0
    device: str = "auto"  # "auto": cuda when available, else cpu
    bf16: bool = True  # autocast to bfloat16 on CUDA (CPU always runs fp32)
    compile: bool = False  # torch.compile the generator and discriminator
    channels_last: bool = True  # on CUDA
    log_every: int = 10
    val_every: int = 500  # 0: off
    val_batches: int = 8
    val_batch_size: int = 0  # 0: data.batch_size
    ckpt_every: int = 500
    keep_checkpoints: int = 3
    image_every: int = 500  # TensorBoard image grids
    max_nonfinite: int = 20  # stop after this many skipped steps with a NaN/inf loss
    # a release or run folder whose generator weights (a run's inference weights, the EMA) the run starts from,
    # to fine-tune them with other data or terms; its model must be this config's; a resumed run loads its own
    init: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _build(cls: type, data: Any, where: str) -> Any:
    return build_dataclass(cls, data, where, ConfigError)


def config_from_dict(data: dict[str, Any]) -> TrainConfig:
    """The TrainConfig a checkpoint or weights file recorded (`TrainConfig.to_dict()`), validated."""
    return _check(_build(TrainConfig, data, ""))


def _check(cfg: TrainConfig) -> TrainConfig:
    if cfg.data.input not in ("lr_occluded", "lr"):
        raise ConfigError(f"data.input: {cfg.data.input!r} is not lr_occluded or lr")
    if cfg.model.arch not in ("proui", "plain"):
        raise ConfigError(f"model.arch: {cfg.model.arch!r} is not proui or plain")
    if cfg.model.prior not in ("learned", "fan"):
        raise ConfigError(f"model.prior: {cfg.model.prior!r} is not learned or fan")
    if cfg.model.prior_arch not in ("dilated", "hourglass"):
        raise ConfigError(f"model.prior_arch: {cfg.model.prior_arch!r} is not dilated or hourglass")
    if cfg.model.prior == "fan" and not cfg.model.fan_weights:
        raise ConfigError("model.prior = 'fan' needs model.fan_weights (a local face-alignment FAN file)")
    if cfg.optim.schedule not in ("constant", "cosine", "step", "wsd"):
        raise ConfigError(f"optim.schedule: {cfg.optim.schedule!r} is not constant, cosine, step or wsd")
    for key, value in _numbers(cfg):
        low, strict = _LOWEST.get(key.rsplit(".", 1)[-1] if key.startswith("loss.") else key, (None, False))
        if low is not None and (value <= low if strict else value < low):
            raise ConfigError(f"{key} = {value!r}: must be {'>' if strict else '>='} {low:g}")
    if not 0 <= cfg.optim.ema_decay <= 1:
        raise ConfigError(f"optim.ema_decay = {cfg.optim.ema_decay!r}: must lie in [0, 1]")
    if not all(0 <= b < 1 for b in cfg.optim.betas):
        raise ConfigError(f"optim.betas = {list(cfg.optim.betas)}: each must lie in [0, 1)")
    if cfg.optim.schedule == "step" and cfg.optim.step_every < 1:
        raise ConfigError("optim.schedule = 'step' needs optim.step_every >= 1")
    return cfg


# The lowest allowed value of each numeric key (and whether it is excluded); loss weights by their own name.
_LOWEST: dict[str, tuple[float, bool]] = {
    "steps": (1, False), "log_every": (1, False), "val_every": (0, False), "val_batches": (1, False),
    "val_batch_size": (0, False), "ckpt_every": (0, False), "keep_checkpoints": (1, False),
    "image_every": (0, False), "max_nonfinite": (1, False),
    "data.batch_size": (1, False), "data.workers": (0, False), "data.shuffle_shards": (1, False),
    "data.heatmap_sigma": (0, True),
    "model.heads": (1, False), "model.init_bias_std": (0, False),
    "optim.lr_g": (0, True), "optim.lr_d": (0, False), "optim.step_every": (0, False),
    "optim.decay_steps": (0, False), "optim.warmup": (0, False), "optim.grad_clip": (0, False),
    "optim.gan_start": (0, False),
    **{w: (0, False) for w in ("face_l2", "out_l2", "heatmap", "prior", "tv", "style", "perceptual",
                               "adversarial", "local_adversarial", "mask_weight", "points", "heatmap_foreground",
                               "feature_matching")},
}


def _numbers(cfg: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted key, value) of every number of a config, one entry per element of a tuple."""
    out: list[tuple[str, float]] = []
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            out += _numbers(value, key + ".")
        elif isinstance(value, tuple):
            out += [(key, v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((key, value))
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as TOML, else as a string)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                sets: list[str] = ()) -> TrainConfig:
    """Read a TOML config (None: `pipelines/train/default.toml`), apply overrides, validate."""
    # the shipped default is looked up only when needed: a named file loads without the installed package
    default = importlib.resources.files("proui_pipelines.train") / "default.toml" if path is None else None
    data, where = read_toml(path, default, "pipelines/train/default.toml", ConfigError)
    for item in sets:
        keys, value = parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    for dotted, value in (overrides or {}).items():
        keys = dotted.split(".")
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    if sets or overrides:
        where += " and the command line"
    try:
        return _check(_build(TrainConfig, data, ""))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
