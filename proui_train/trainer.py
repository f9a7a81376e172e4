"""`ProUIGANTrainer`: the generator, the discriminators, the EMA copy and their optimisers, and one GAN step.

`train_step(batch, step)` returns the step's losses by name; `state_dict()` / `load_state_dict()` hold
everything a resumed run needs from the models. The loop around it (data, logging, validation,
checkpoints) is `train.py`.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from proui_data.align import template_box
from proui_data.schema import HR_SIZE
from proui_train.targets import render_heatmaps_torch, to_map_pixels

from .augment import flip_batch
from .config import TrainConfig
from .data import open_split, store_template
from .losses import LossConfig, generator_loss, hr_pyramid, lsgan_discriminator_loss
from .models import STAGE_LANDMARKS, count_parameters, crop_patches, global_discriminator, local_discriminator
from .runtime import build_generator, load_generator

log = logging.getLogger(__name__)
LOCAL_CROP = 64


def loss_weights(cfg: TrainConfig) -> LossConfig:
    """The config's loss weights; a frozen FAN prior is not trained, so its prior term is off."""
    return dataclasses.replace(cfg.loss, prior=(0.0,) * cfg.loss.n_stages) if cfg.model.prior == "fan" else cfg.loss


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at `step`: linear warm-up, then constant, cosine, step decay, or "wsd"
    (warm-up, stable, decay: constant, then linear to 0 over the last `decay_steps`; a run can be extended
    before its decay starts)."""
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup) if o.warmup else 1.0
    if o.schedule == "wsd" and o.decay_steps:
        return warm * min(1.0, max(cfg.steps - step, 0) / o.decay_steps)
    if o.schedule == "cosine":
        return warm * 0.5 * (1 + math.cos(math.pi * min(step, cfg.steps) / cfg.steps))
    if o.schedule == "step" and o.step_every:
        return warm * 0.5 ** (step // o.step_every)
    return warm


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """EMA decay for the update after `step` steps: min(decay, (1 + t) / (10 + t)) with warm-up."""
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters (one fused call); buffers copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    buffers = list(ema.buffers())
    if buffers:  # models without norm statistics have none, and _foreach ops refuse empty lists
        torch._foreach_copy_(buffers, list(model.buffers()))


def all_finite(*losses: torch.Tensor) -> bool:
    """Whether every loss is finite on every rank: ranks must agree to step or to skip, or DDP's gradient
    all-reduce waits forever for the rank that skipped. The step's one host sync."""
    ok = torch.stack([torch.isfinite(x.detach()).all() for x in losses]).all().float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok)


def unwrap(m: nn.Module) -> nn.Module:
    m = getattr(m, "_orig_mod", m)  # torch.compile
    return getattr(m, "module", m)  # DDP


def weights_sha256(*modules: nn.Module) -> str:
    """Digest of the modules' parameters: the same on every DDP rank unless the replicas drifted apart."""
    h = hashlib.sha256()
    for m in modules:
        for p in m.parameters():
            h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def local_crop_corners(mask: torch.Tensor | None, batch: int, size: int = HR_SIZE, crop: int = LOCAL_CROP,
                       device: torch.device | str = "cpu") -> torch.Tensor:
    """(B,2) integer (x, y) top-left corners of `crop`-pixel squares centred on each sample's occlusion
    (the mask's centroid; the face centre where a sample has no occlusion), kept inside the image."""
    centre = torch.full((batch, 2), (size - 1) / 2, device=device)
    if mask is not None:
        m = mask.float().flatten(1)  # (B, H*W)
        coords = torch.arange(size, device=device, dtype=torch.float32)
        ys, xs = coords.repeat_interleave(size), coords.repeat(size)
        area = m.sum(1)
        found = torch.stack([(m * xs).sum(1), (m * ys).sum(1)], 1) / area.clamp_min(1e-6)[:, None]
        centre = torch.where((area > 0)[:, None], found, centre)
    return (centre - (crop - 1) / 2).round().clamp(0, size - crop).long()


def mean_training_shape(cfg: TrainConfig) -> torch.Tensor:
    """(68,2) mean landmarks in HR pixels over the valid rows of the training split (NaN rows left out)."""
    group = open_split(cfg.data.store, cfg.data.train_split)
    landmarks = group["landmarks"][:][group["valid"][:].astype(bool)]
    return torch.from_numpy(np.nanmean(landmarks, axis=0)).float()


class StageHeatmaps(nn.Module):
    """landmarks (B,68,2) in HR pixels -> {16: (B,7,16,16), 32: (B,42,32,32), 64: (B,68,64,64)} targets."""

    def __init__(self, sigmas: tuple[float, ...], sizes: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.sizes, self.sigmas = sizes, sigmas
        for i, idx in enumerate(STAGE_LANDMARKS):  # index tensors made once: no host->device copy per step
            self.register_buffer(f"index{i}", torch.tensor(idx, dtype=torch.long), persistent=False)

    def forward(self, landmarks: torch.Tensor) -> dict[int, torch.Tensor]:
        return {size: render_heatmaps_torch(landmarks.index_select(1, getattr(self, f"index{i}")), size=size,
                                            sigma=sigma, hr_size=HR_SIZE)
                for i, (size, sigma) in enumerate(zip(self.sizes, self.sigmas))}

    def points(self, landmarks: torch.Tensor) -> dict[int, torch.Tensor]:
        """landmarks (B,68,2) in HR pixels -> {16: (B,7,2), ...}: each stage's points in its heatmaps' pixels
        (the geometry `render_heatmaps_torch` centres its peaks on)."""
        return {size: to_map_pixels(landmarks.index_select(1, getattr(self, f"index{i}")).float(), size)
                for i, size in enumerate(self.sizes)}


class ProUIGANTrainer:
    """Pro-UIGAN's (or the plain baseline's) adversarial training state and step.

    Holds G, the global D, the optional local D, the EMA copy of G, Adam for G and one Adam for the
    discriminators. `rank`/`world` > 1 wraps G and the Ds in DistributedDataParallel (the process group must
    be up)."""

    def __init__(self, cfg: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> None:
        self.cfg, self.device = cfg, device
        self.generator = build_generator(cfg, device)
        if cfg.model.arch == "proui" and cfg.model.prior_arch == "hourglass":  # a resumed run loads its own after
            self.generator.set_mean_shape(mean_training_shape(cfg), cfg.data.heatmap_sigma)
        self.generator.to(device)
        self.discriminator = global_discriminator().to(device)
        self.local_discriminator = local_discriminator().to(device) if cfg.loss.local_adversarial else None
        if cfg.channels_last and device.type == "cuda":
            for m in self.discriminators + [self.generator]:
                m.to(memory_format=torch.channels_last)
        self.ema = copy.deepcopy(self.generator).eval().requires_grad_(False)
        o = cfg.optim
        fused = {"fused": True} if device.type == "cuda" else {}
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=o.lr_g, betas=o.betas, **fused)
        self.opt_d = torch.optim.Adam([p for d in self.discriminators for p in d.parameters()], lr=o.lr_d,
                                      betas=o.betas, **fused)
        self.weights = loss_weights(cfg)
        self.vgg = self._load_vgg()
        self.identity = self._load_identity()
        self.heatmaps = StageHeatmaps(cfg.data.heatmap_sigma).to(device)
        self.amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16 and device.type == "cuda")
        self.g_model: nn.Module = self.generator
        self.d_models: list[nn.Module] = self.discriminators
        if world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.g_model = nn.parallel.DistributedDataParallel(self.generator, device_ids=ids)
            self.d_models = [nn.parallel.DistributedDataParallel(d, device_ids=ids) for d in self.discriminators]
        if cfg.compile:
            self.g_model = torch.compile(self.g_model)
            self.d_models = [torch.compile(d) for d in self.d_models]
        self.generator.train()
        for d in self.discriminators:
            d.train()

    @property
    def discriminators(self) -> list[nn.Module]:
        return [self.discriminator] + ([self.local_discriminator] if self.local_discriminator is not None else [])

    def describe(self) -> str:
        return (f"generator ({self.cfg.model.arch}) {count_parameters(self.generator)} parameters, discriminators "
                + ", ".join(str(count_parameters(d)) for d in self.discriminators))

    def start_from(self, source: str) -> None:
        """Generator and EMA take the inference weights of a release or run folder (`runtime.load_generator`):
        the start of a fine-tuning run. A model that is not this config's is a clear error."""
        state = load_generator(source, "cpu").state_dict()
        try:
            self.generator.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(f"init = {source!r}: its generator is not the model this config builds ({e})") from None
        self.ema.load_state_dict(state)

    def _load_identity(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """With loss.identity: aligned [-1, 1] faces of the training store's frame -> the descriptors of the
        network loss.identity_net names."""
        if not self.cfg.loss.identity:
            return None
        template = store_template(self.cfg.data.store)
        if self.cfg.loss.identity_net == "facenet":
            from .models.facenet import face_crops, load_facenet

            facenet, box = load_facenet().to(self.device), template_box(template)
            return lambda faces: facenet(face_crops((faces.float() + 1.0) * 127.5, box))
        from .models.dlib_resnet import face_chips, load_dlib_face_resnet

        net = load_dlib_face_resnet().to(self.device)
        return lambda faces: net(face_chips((faces.float() + 1.0) * 127.5, template))

    def _load_vgg(self):
        if not self.cfg.loss.vgg_weights:
            return None
        from .models import VGGFeatureExtractor

        return VGGFeatureExtractor.from_file(self.cfg.loss.vgg_weights).to(self.device).eval()

    def _scores(self, images: torch.Tensor, corners: torch.Tensor | None, features: bool = False
                ) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Discriminator scores, the global D on the face and the local D on its crops, and with `features`
        each D's block outputs (else empty lists)."""
        inputs = [images] + ([crop_patches(images, corners, LOCAL_CROP)] if corners is not None else [])
        outputs = [d(x, features=features) for d, x in zip(self.d_models, inputs)]
        if not features:
            return outputs, []
        return [score for score, _ in outputs], [block_outputs for _, block_outputs in outputs]

    def train_step(self, batch: dict[str, torch.Tensor], step: int, aug_rng: torch.Generator | None = None
                   ) -> dict[str, torch.Tensor] | None:
        """One discriminator and generator update on a device batch ([-1, 1] images, (B,68,2) landmarks,
        optional (B,1,128,128) occlusion_mask). Returns {'g', 'd', term: value} as 0-d tensors, or None when a
        loss was not finite on some rank and the step was skipped (no weights changed)."""
        cfg, o, w = self.cfg, self.cfg.optim, self.weights
        lr_in, hr, landmarks = batch[cfg.data.input], batch["hr"], batch["landmarks"]
        mask = batch.get("occlusion_mask")
        if cfg.data.flip:
            which = torch.rand(hr.shape[0], device=self.device, generator=aug_rng) < 0.5
            lr_in, hr, landmarks, mask = flip_batch(which, lr_in, hr, landmarks, mask)
        if cfg.channels_last and self.device.type == "cuda":
            hr, lr_in = (x.contiguous(memory_format=torch.channels_last) for x in (hr, lr_in))
        scale = lr_at(step, cfg)
        for group in self.opt_g.param_groups:
            group["lr"] = o.lr_g * scale
        for group in self.opt_d.param_groups:
            group["lr"] = o.lr_d * scale
        targets = {"hr": hr_pyramid(hr), "heatmaps": self.heatmaps(landmarks)}
        if any(w.points):
            targets["points"] = self.heatmaps.points(landmarks)
        if w.mask_weight and mask is not None:
            targets["mask"] = hr_pyramid(mask)
        adversarial = step >= o.gan_start and (w.adversarial > 0 or cfg.loss.local_adversarial > 0)
        corners = None
        if adversarial and self.local_discriminator is not None:
            corners = local_crop_corners(mask, hr.shape[0], hr.shape[-1], device=self.device)

        with self.amp:
            out = self.g_model(lr_in)
        loss_d = torch.zeros((), device=self.device)
        matching = adversarial and w.feature_matching > 0
        d_features = None
        if adversarial:  # D's gradients first, on the detached output; applied after the finite check
            for d in self.discriminators:
                d.requires_grad_(True)
            with self.amp:
                real, real_features = self._scores(hr, corners, features=matching)
                fake, _ = self._scores(out["final"].detach(), corners)
                loss_d = lsgan_discriminator_loss(real, fake)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            for d in self.discriminators:
                d.requires_grad_(False)  # G's loss needs gradients through D, not for D
        with self.amp:
            scores = [None, None]
            if adversarial:  # D is not stepped before G's backward: the real features above still hold
                scores, fake_features = self._scores(out["final"], corners, features=matching)
                if matching:
                    d_features = (fake_features, [[f.detach() for f in fs] for fs in real_features])
            loss_g, terms = generator_loss(out, targets, w, self.vgg, scores[0], scores[1] if len(scores) > 1 else None,
                                           d_features, self.identity)
        self.opt_g.zero_grad(set_to_none=True)
        if not all_finite(loss_g, loss_d):
            self.opt_d.zero_grad(set_to_none=True)
            return None
        loss_g.backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), o.grad_clip)
        self.opt_g.step()
        if adversarial:
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for d in self.discriminators for p in d.parameters()], o.grad_clip)
            self.opt_d.step()
        ema_update(self.ema, self.generator, ema_decay_at(step, o.ema_decay, o.ema_warmup))
        return {"g": loss_g.detach(), "d": loss_d.detach(), **terms}

    def state_dict(self) -> dict:
        state = {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                 "ema": self.ema.state_dict(), "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                 "inference_weights": "ema"}
        if self.local_discriminator is not None:
            state["local_discriminator"] = self.local_discriminator.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        if self.local_discriminator is not None:
            self.local_discriminator.load_state_dict(state["local_discriminator"])
        self.ema.load_state_dict(state["ema"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])

    def weights_sha256(self) -> str:
        return weights_sha256(self.generator, *self.discriminators)
