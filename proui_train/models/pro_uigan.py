"""Pro-UIGAN generator: progressive 16 -> 32 -> 64 -> 128 face hallucination with landmark priors.

Zhang, Yu, Lu, Liu, "Pro-UIGAN: Progressive Face Hallucination from Occluded Thumbnails" (arXiv 2108.00602).
Structure follows the authors' released code (SEU-yang/Pro-UIGAN, models/network.py); it is written anew here.

Each of the three stages works at its input resolution S (16, 32, 64) and doubles it:

    face (B,3,S,S) --prior--> prior heatmaps (B,L,S,S)
    (face, prior) --CrossModalAttention--> refined face (B,3,S,S), refined heatmaps (B,L,S,S)
    (refined face, refined heatmaps) --UpsampleBlock--> out (B,3,2S,2S) = the next stage's face

with L = 7, 42, 68 landmarks (`STAGE_LANDMARKS`). The authors estimate each stage's prior with a frozen FAN
run on the current face upsampled to 256; its weights are not available here, so by default each stage learns
a small prior estimator instead (`prior="learned"`), supervised with heatmaps rendered from the store's
landmarks. `prior="fan"` plugs any external estimator face -> (B,68,64,64) back in.

Parameter count: the released generator has 1,197,343 parameters, 6,336 of them in two 1x1 convs per attention
block that its forward never uses. Ours with the default config has 1,191,007 in the refinement and upsampling
blocks (the same layers minus the unused ones) plus 120,501 in the three learned prior estimators: 1,311,508.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from ..targets import render_heatmaps_torch
from .attention import CrossModalAttention, cross_modal_attention  # noqa: F401 - re-exported
from .blocks import ConvNormAct, ResidualBlock, check_norm, count_parameters, init_weights

NUM_LANDMARKS = 68
# iBUG 68-point indices fed to each stage, in the reference's channel order.
STAGE1_LANDMARKS: tuple[int, ...] = (36, 39, 42, 45, 30, 48, 54)  # eye corners, nose tip, mouth corners
STAGE2_LANDMARKS: tuple[int, ...] = (
    (36, 39, 42, 45, 27, 28, 29, 30, 48, 54)
    + tuple(range(0, 17))  # jaw
    + tuple(range(17, 22))  # right brow
    + tuple(range(22, 27))  # left brow
    + tuple(range(60, 65))  # inner lip, 60-64
)
STAGE3_LANDMARKS: tuple[int, ...] = tuple(range(NUM_LANDMARKS))
STAGE_LANDMARKS: tuple[tuple[int, ...], ...] = (STAGE1_LANDMARKS, STAGE2_LANDMARKS, STAGE3_LANDMARKS)
PRIORS = ("learned", "fan")
PRIOR_ARCHS = ("dilated", "hourglass")

HeatmapEstimator = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ProUIGANConfig:
    """Generator options. Defaults reproduce the reference's layers (plus the learned priors)."""

    input_size: int = 16
    stage_landmarks: tuple[tuple[int, ...], ...] = STAGE_LANDMARKS  # one entry per stage
    # Cross-modal attention. The reference: 1 head, no 1/sqrt(d) scaling, the landmark path through S^T.
    channels: int = 128  # width of the face and landmark branches
    attn_channels: int = 32  # width of queries, keys and values
    heads: int = 1
    scale_attention: bool = False
    symmetric_attention: bool = False  # True: landmarks attend to the face with their own softmax (not the reference)
    residual_heatmaps: bool = False  # True: the refined heatmaps correct the prior's logits (not the reference)
    norm: str = "batch"  # "batch" | "instance" | "none", for every generator block
    # Upsampling block: fuse conv widths (c0, c1), tail widths (c2, c3); tail kernel per stage (3, 5, 5 as released).
    up_channels: tuple[int, int, int, int] = (128, 64, 32, 12)
    up_kernel_sizes: tuple[int, ...] = (3, 5, 5)
    res_blocks: int = 2
    # Stage priors.
    prior: str = "learned"  # "learned" | "fan" (needs heatmap_estimator)
    # The learned prior's network. "dilated": a few dilated convs (what the first releases use). "hourglass" (ours,
    # not the reference): coordinate channels and an encoder-decoder whose bottleneck at S/4 sees the whole face,
    # so jaw and brow points, far from any local evidence in an occluded thumbnail, can be placed.
    prior_arch: str = "dilated"
    prior_channels: int = 32
    prior_dilations: tuple[int, ...] = (1, 2, 4)  # "dilated": receptive field 3 + 2 * sum + 2 = 19 pixels
    fan_input_size: int = 256  # the reference runs FAN on the face upsampled to 256
    init_std: float | None = 0.02  # DCGAN-style init as the reference; None keeps PyTorch's default
    init_bias_std: float = 0.02  # the reference draws biases from N(0, 0.02) too; 0 gives zero biases
    # x2 bilinear upsampling: the reference interpolates with align_corners=True.
    align_corners: bool = True
    # Not the reference: add the bicubic x2 upsampling of each stage's input to the stage's output, so a stage
    # learns a correction to bicubic instead of relearning a face's colours from nothing (see docs/training.md).
    residual: bool = False

    def __post_init__(self) -> None:
        check_norm(self.norm)
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {self.prior!r}")
        if self.prior_arch not in PRIOR_ARCHS:
            raise ValueError(f"prior_arch must be one of {PRIOR_ARCHS}, got {self.prior_arch!r}")
        if self.heads < 1 or self.attn_channels % self.heads:
            raise ValueError(f"attn_channels ({self.attn_channels}) must be a multiple of heads ({self.heads})")
        if len(self.up_kernel_sizes) != len(self.stage_landmarks):
            raise ValueError(
                f"need one up_kernel_size per stage: {len(self.up_kernel_sizes)} for "
                f"{len(self.stage_landmarks)} stages"
            )
        for s, landmarks in enumerate(self.stage_landmarks, 1):
            if not landmarks or not all(0 <= i < NUM_LANDMARKS for i in landmarks):
                raise ValueError(f"stage {s} landmark indices must be a non-empty subset of 0..67, got {landmarks}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProUIGANConfig":
        """Inverse of `dataclasses.asdict` after a JSON round trip (lists back to tuples)."""
        def tupled(v: Any) -> Any:
            return tuple(tupled(x) for x in v) if isinstance(v, (list, tuple)) else v

        return cls(**{k: tupled(v) for k, v in data.items()})

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        """Input resolution of each stage: 16, 32, 64 by default."""
        return tuple(self.input_size * 2**s for s in range(len(self.stage_landmarks)))


def bicubic_x2(face: torch.Tensor) -> torch.Tensor:
    """(B,3,S,S) -> (B,3,2S,2S) bicubic upsampling, the base a residual stage corrects."""
    return F.interpolate(face, scale_factor=2, mode="bicubic", align_corners=False)


class UpsampleBlock(nn.Module):
    """(face, heatmaps) at S -> face at 2S: conv 128 -> conv 64 -> bilinear x2 -> residual blocks -> conv 32 ->
    conv 12 -> conv 3 + tanh (the reference's upsampling-and-inpainting "SRnet")."""

    def __init__(
        self,
        heatmap_channels: int,
        *,
        channels: tuple[int, int, int, int] = (128, 64, 32, 12),
        kernel_size: int = 3,
        res_blocks: int = 2,
        norm: str = "batch",
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        c0, c1, c2, c3 = channels
        self.fuse = nn.Sequential(
            ConvNormAct(3 + heatmap_channels, c0, 3, norm=norm), ConvNormAct(c0, c1, 3, norm=norm)
        )
        self.res = nn.Sequential(*(ResidualBlock(c1, norm) for _ in range(res_blocks)))
        self.tail = nn.Sequential(
            ConvNormAct(c1, c2, kernel_size, norm=norm),
            ConvNormAct(c2, c3, kernel_size, norm=norm),
            nn.Conv2d(c3, 3, 3, 1, 1),
            nn.Tanh(),
        )

    @classmethod
    def from_config(cls, heatmap_channels: int, kernel_size: int, config: "ProUIGANConfig") -> "UpsampleBlock":
        return cls(heatmap_channels, channels=config.up_channels, kernel_size=kernel_size,
                   res_blocks=config.res_blocks, norm=config.norm, align_corners=config.align_corners)

    def forward(self, face: torch.Tensor, heatmaps: torch.Tensor | None = None) -> torch.Tensor:
        x = self.fuse(face if heatmaps is None else torch.cat([face, heatmaps], dim=1))  # (B, 64, S, S)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=self.align_corners)  # (B, 64, 2S, 2S)
        return self.tail(self.res(x))  # (B, 3, 2S, 2S)


class LearnedPrior(nn.Module):
    """face (B,3,S,S) -> heatmaps (B,L,S,S) in [0, 1]: a few dilated 3x3 convs, then sigmoid.

    Stands in for the frozen FAN of the reference; trained with the heatmap loss on `prior`.
    """

    def __init__(
        self,
        heatmap_channels: int,
        *,
        channels: int = 32,
        dilations: Sequence[int] = (1, 2, 4),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [ConvNormAct(3, channels, 3, norm=norm)]
        layers += [ConvNormAct(channels, channels, 3, dilation=d, norm=norm) for d in dilations]
        layers += [nn.Conv2d(channels, heatmap_channels, 3, 1, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        return self.net(face)


def coordinate_channels(face: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,2,H,W): x and y of each pixel in [-1, 1] (CoordConv), in the face's dtype and layout."""
    b, _, h, w = face.shape
    ys = torch.linspace(-1, 1, h, device=face.device, dtype=face.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w, device=face.device, dtype=face.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([xs, ys], dim=1)


class HourglassPrior(nn.Module):
    """face (B,3,S,S) -> heatmaps (B,L,S,S) in [0, 1] through an encoder-decoder with skips (not the reference).

    Faces are aligned to a template, so where a landmark lies is mostly a function of the pixel's position with
    the face's evidence moving it: the input carries (x, y) coordinate channels, and two stride-2 levels bring
    the face to S/4, where dilated convs and a global context vector (the mean of the features, through a 1x1
    conv, added everywhere) see all of it before the decoder returns to S.

        face + coords (B,5,S,S) -> stem (B,C,S,S) -> down (B,C,S/2,S/2) -> down (B,C,S/4,S/4) -> dilated convs
        + global context -> up + skip (B,C,S/2,S/2) -> up + skip (B,C,S,S) -> 1x1 conv, sigmoid (B,L,S,S)
    """

    def __init__(self, heatmap_channels: int, size: int, *, channels: int = 32, dilations: Sequence[int] = (1, 2, 4),
                 norm: str = "batch", levels: int = 2) -> None:
        super().__init__()
        c = channels
        self.size = size
        # The mean training shape (`set_mean_shape`): its heatmaps' logits are added to the head's, so training
        # starts from the mean face's landmarks and learns how each face departs from them. A sigma of 0: none.
        self.register_buffer("mean_points", torch.zeros(heatmap_channels, 2))  # HR pixels
        self.register_buffer("mean_sigma", torch.zeros(()))
        # Their logits, derived once (here, in set_mean_shape, after loading weights) rather than in every forward:
        # rendering them there reads the sigma on the host, a sync on CUDA and a graph break under torch.compile.
        self.register_buffer("mean_logits", self.shape_logits(), persistent=False)  # (L, S, S)
        self.register_load_state_dict_post_hook(lambda module, incompatible: module.refresh_mean_logits())
        self.stem = ConvNormAct(5, c, 3, norm=norm)
        self.down = nn.ModuleList(ConvNormAct(c, c, 3, stride=2, norm=norm) for _ in range(levels))
        self.middle = nn.Sequential(*(ConvNormAct(c, c, 3, dilation=d, norm=norm) for d in dilations))
        self.context = nn.Sequential(nn.Conv2d(c, c, 1), nn.ReLU())
        self.up = nn.ModuleList(ConvNormAct(2 * c, c, 3, norm=norm) for _ in range(levels))
        self.head = nn.Conv2d(c, heatmap_channels, 1)

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = self.stem(torch.cat([face, coordinate_channels(face)], dim=1))  # (B, C, S, S)
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(x)  # (B, C, S/2, S/2), then (B, C, S/4, S/4)
        x = self.middle(x)
        x = x + self.context(x.mean((2, 3), keepdim=True))  # (B, C, S/4, S/4) + (B, C, 1, 1)
        for up, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = up(torch.cat([x, skip], dim=1))  # (B, C, S/2, S/2), then (B, C, S, S)
        return torch.sigmoid(self.head(x) + self.mean_logits.to(x.dtype))  # (B, L, S, S)

    def shape_logits(self, floor: float = 0.01) -> torch.Tensor:
        """(L,S,S) logits of the mean shape's heatmaps clipped to [floor, 1 - floor]; zeros before `set_mean_shape`."""
        if float(self.mean_sigma) <= 0:
            return self.mean_points.new_zeros(self.mean_points.shape[0], self.size, self.size)
        maps = render_heatmaps_torch(self.mean_points[None], size=self.size, sigma=float(self.mean_sigma))[0]
        return torch.logit(maps.clamp(floor, 1 - floor))

    @torch.no_grad()
    def set_mean_shape(self, points: torch.Tensor, sigma: float) -> None:
        """Start from the heatmaps of `points` (L,2), the mean shape in HR pixels, rendered with `sigma` at S."""
        self.mean_points.copy_(points)
        self.mean_sigma.fill_(sigma)
        self.refresh_mean_logits()

    @torch.no_grad()
    def refresh_mean_logits(self) -> None:
        self.mean_logits.copy_(self.shape_logits())


class FANPrior(nn.Module):
    """An external 68-point heatmap estimator, cut down to a stage's landmarks and resolution.

    `estimator` takes faces in [-1, 1] at `input_size` (B,3,256,256) and returns (B,68,h,w) heatmaps (FAN: 64x64);
    any normalisation it needs is its own business. It is deliberately not registered as a submodule: its
    weights stay out of the generator's parameters, optimiser and state dict, and moving it to a device is the
    caller's job. Gradients flow through it into the previous stage, as in the reference; freeze its weights.
    """

    def __init__(
        self, estimator: HeatmapEstimator, landmarks: Sequence[int], size: int, input_size: int = 256
    ) -> None:
        super().__init__()
        if not callable(estimator):
            raise TypeError(f"heatmap estimator must be callable, got {type(estimator).__name__}")
        object.__setattr__(self, "estimator", estimator)  # bypass nn.Module registration (see above)
        self.register_buffer("index", torch.tensor(list(landmarks), dtype=torch.long), persistent=False)
        self.size = size
        self.input_size = input_size

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(face, size=self.input_size, mode="bilinear", align_corners=False)
        heatmaps = self.estimator(x)
        if heatmaps.ndim != 4 or heatmaps.shape[:2] != (face.shape[0], NUM_LANDMARKS):
            raise ValueError(f"heatmap estimator must return (B, 68, h, w), got {tuple(heatmaps.shape)}")
        heatmaps = heatmaps.index_select(1, self.index)  # (B, L, h, w)
        if heatmaps.shape[-1] != self.size or heatmaps.shape[-2] != self.size:
            heatmaps = F.interpolate(
                heatmaps, size=self.size, mode="bilinear", align_corners=False, antialias=True
            )
        return heatmaps  # (B, L, S, S)


class ProUIStage(nn.Module):
    """One progressive stage at resolution S: prior -> cross-modal refinement -> x2 upsampling."""

    def __init__(
        self,
        landmarks: Sequence[int],
        size: int,
        up_kernel_size: int,
        config: ProUIGANConfig,
        heatmap_estimator: HeatmapEstimator | None = None,
    ) -> None:
        super().__init__()
        n = len(landmarks)
        self.size = size
        if config.prior == "learned":
            if config.prior_arch == "hourglass":
                self.prior = HourglassPrior(n, size, channels=config.prior_channels,
                                            dilations=config.prior_dilations, norm=config.norm)
            else:
                self.prior = LearnedPrior(n, channels=config.prior_channels, dilations=config.prior_dilations,
                                          norm=config.norm)
        else:
            if heatmap_estimator is None:
                raise ValueError('prior="fan" needs a heatmap_estimator: a callable face -> (B, 68, 64, 64)')
            self.prior = FANPrior(heatmap_estimator, landmarks, size, config.fan_input_size)
        self.refine = CrossModalAttention(
            n,
            channels=config.channels,
            attn_channels=config.attn_channels,
            heads=config.heads,
            scale=config.scale_attention,
            symmetric=config.symmetric_attention,
            norm=config.norm,
            residual_heatmaps=config.residual_heatmaps,
        )
        self.upsample = UpsampleBlock.from_config(n, up_kernel_size, config)
        self.residual = config.residual

    def forward(self, face: torch.Tensor) -> dict[str, torch.Tensor]:
        prior = self.prior(face)  # (B, L, S, S)
        refined_face, refined_heatmaps = self.refine(face, prior)  # (B, 3, S, S), (B, L, S, S)
        out = self.upsample(refined_face, refined_heatmaps)  # (B, 3, 2S, 2S)
        if self.residual:
            out = out + bicubic_x2(face)
        return {"face": refined_face, "heatmaps": refined_heatmaps, "prior": prior, "out": out}


class Progressive(nn.Module):
    """The progressive frame both generators share: lr (B,3,16,16) through `self.stages`, each doubling
    the resolution and feeding its "out" to the next -> {"stages": [per-stage dicts], "final": (B,3,128,128)}."""

    config: "ProUIGANConfig"
    stages: nn.ModuleList

    def forward(self, lr: torch.Tensor) -> dict:
        size = self.config.input_size
        if lr.ndim != 4 or lr.shape[1] != 3 or lr.shape[-2:] != (size, size):
            raise ValueError(f"lr must have shape (B, 3, {size}, {size}), got {tuple(lr.shape)}")
        stages = []
        face = lr
        for stage in self.stages:
            outputs = stage(face)
            stages.append(outputs)
            face = outputs["out"]
        return {"stages": stages, "final": face}

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per stage and part ({'stage1/refine': ..., 'stage1/upsample': ..., ..., 'total': ...})."""
        parts = ("prior", "refine", "upsample")
        counts = {f"stage{s}/{part}": count_parameters(getattr(stage, part))
                  for s, stage in enumerate(self.stages, 1) for part in parts if hasattr(stage, part)}
        counts["total"] = count_parameters(self)
        return counts


HUB_METADATA = dict(library_name="proui", tags=["face-hallucination", "super-resolution"],
                    paper_url="https://arxiv.org/abs/2108.00602", license="other")


def as_config(config: ProUIGANConfig | Mapping[str, Any] | None) -> ProUIGANConfig:
    """A config, or the dict `from_pretrained` hands back from config.json."""
    if config is None or isinstance(config, ProUIGANConfig):
        return config or ProUIGANConfig()
    return ProUIGANConfig.from_dict(config)


class ProUIGAN(Progressive, PyTorchModelHubMixin, **HUB_METADATA):
    """Pro-UIGAN generator: lr (B,3,16,16) in [-1, 1] -> three progressive stages -> (B,3,128,128).

    `save_pretrained` / `from_pretrained` (a folder or a Hub id) / `push_to_hub` come from huggingface_hub's
    PyTorchModelHubMixin: config.json holds the config, model.safetensors the weights.

    forward returns {"stages": [stage1, stage2, stage3], "final": (B,3,128,128)}, where stage s (input S = 16,
    32, 64) is a dict with
      face     (B,3,S,S)   refined face (compare with the HR downsampled to S)
      heatmaps (B,L,S,S)   refined heatmaps of the stage's landmarks (STAGE_LANDMARKS[s-1])
      prior    (B,L,S,S)   heatmaps estimated from the stage's input face, before refinement
      out      (B,3,2S,2S) the upsampled face, input of the next stage (compare with the HR at 2S)
    and "final" is stage 3's "out".
    """

    def __init__(
        self, config: ProUIGANConfig | None = None, heatmap_estimator: HeatmapEstimator | None = None
    ) -> None:
        super().__init__()
        self.config = config = as_config(config)
        self.stages = nn.ModuleList(
            ProUIStage(landmarks, size, k, config, heatmap_estimator)
            for landmarks, size, k in zip(config.stage_landmarks, config.stage_sizes, config.up_kernel_sizes)
        )
        if config.init_std is not None:
            init_weights(self, config.init_std, config.init_bias_std)

    def set_mean_shape(self, landmarks: torch.Tensor, sigmas: Sequence[float]) -> None:
        """Start each hourglass prior from the heatmaps of `landmarks` (68,2), the mean training shape in HR
        pixels, rendered with each stage's target sigma. A no-op for other priors."""
        for stage, index, sigma in zip(self.stages, self.config.stage_landmarks, sigmas):
            if isinstance(stage.prior, HourglassPrior):
                stage.prior.set_mean_shape(landmarks[list(index)].float(), sigma)
