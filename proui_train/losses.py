"""Pro-UIGAN losses: pixel L2, total variation, VGG style and perceptual terms, LSGAN, heatmap MSE; ours: identity.

Term definitions and per-stage weights follow the authors' train.py (SEU-yang/Pro-UIGAN): L2 is MSE, TV is the
mean absolute difference of neighbouring pixels, style is the L1 distance of Gram matrices, perceptual is the
MSE of VGG features, the adversarial term is least-squares. Images are in [-1, 1], heatmaps in [0, 1].
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from proui_data.schema import HR_SIZE

from .models.vgg import VGGFeatureExtractor

HR_SIZES = (16, 32, 64, HR_SIZE)  # each stage's input and output resolutions


def l2_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
            mask_weight: float = 0.0) -> torch.Tensor:
    """Mean squared error; with a (B,1,H,W) `mask` in [0, 1], pixels inside it weigh (1 + mask_weight)."""
    if mask is None or not mask_weight:
        return F.mse_loss(pred, target)
    return ((pred - target) ** 2 * (1.0 + mask_weight * mask)).mean()


HEATMAP_LOSSES = ("mse", "weighted")
IDENTITY_NETS = ("dlib", "facenet")
FOREGROUND_LEVEL = 0.2  # a target pixel >= this (after a 3x3 dilation) is foreground for the weighted loss


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse", foreground_weight: float = 10.0
                 ) -> torch.Tensor:
    """Mean squared error between heatmaps (B,L,H,W) in [0, 1].

    kind "mse": the reference's plain MSE. Each map is one point on a background of zeros, so a map that is
    low everywhere is a cheap minimum, and the maps collapse towards it.
    kind "weighted": pixels in the 3x3-dilated region where the target is >= FOREGROUND_LEVEL weigh
    1 + foreground_weight (the loss-weight map of Wang et al., "Adaptive Wing Loss", ICCV 2019).
    """
    if pred.shape != target.shape:
        raise ValueError(f"heatmap shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if kind == "mse":
        return F.mse_loss(pred, target)
    if kind != "weighted":
        raise ValueError(f"heatmap loss kind must be one of {HEATMAP_LOSSES}, got {kind!r}")
    foreground = F.max_pool2d(target.float(), 3, stride=1, padding=1) >= FOREGROUND_LEVEL
    weight = 1.0 + foreground_weight * foreground.to(pred.dtype)
    return ((pred - target) ** 2 * weight).mean()


def soft_argmax(heatmaps: torch.Tensor) -> torch.Tensor:
    """(B,L,H,W) heatmaps in (0, 1) -> (B,L,2) expected (x, y) in the maps' pixels under the spatial softmax of
    their logits (integral regression, Sun et al., ECCV 2018): differentiable, so a point loss reaches maps."""
    b, k, h, w = heatmaps.shape
    logits = torch.logit(heatmaps.float().clamp(1e-6, 1 - 1e-6)).flatten(2)
    p = torch.softmax(logits, dim=-1).view(b, k, h, w)
    xs = torch.arange(w, device=heatmaps.device, dtype=p.dtype)
    ys = torch.arange(h, device=heatmaps.device, dtype=p.dtype)
    return torch.stack([(p.sum(-2) * xs).sum(-1), (p.sum(-1) * ys).sum(-1)], dim=-1)


def point_loss(heatmaps: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the soft-argmax of (B,L,H,W) heatmaps and (B,L,2) points in the maps' pixels,
    as a fraction of the map's side (comparable across stages); NaN points (missing landmarks) are left out."""
    pred = soft_argmax(heatmaps)
    known = torch.isfinite(points).all(-1, keepdim=True)
    error = (pred - torch.where(known, points, pred.detach())).abs()
    return error.sum() / (known.sum() * 2).clamp_min(1) / heatmaps.shape[-1]


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic L1 total variation: mean |x[.., i, j+1] - x[.., i, j]| + mean |x[.., i+1, j] - x[.., i, j]|."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return dx + dy


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """(B,C,H,W) -> (B,C,C) = F F^T / (C*H*W), in float32 (sums over H*W overflow half precision's range)."""
    b, c, h, w = features.shape
    flat = features.float().reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def style_loss(pred_features: Sequence[torch.Tensor], target_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the L1 distance between Gram matrices."""
    if len(pred_features) != len(target_features) or not pred_features:
        raise ValueError(f"need matching non-empty feature lists, got {len(pred_features)}, {len(target_features)}")
    return sum(F.l1_loss(gram_matrix(p), gram_matrix(t)) for p, t in zip(pred_features, target_features))


def perceptual_loss(pred_features: Sequence[torch.Tensor], target_features: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the MSE between VGG feature maps."""
    if len(pred_features) != len(target_features) or not pred_features:
        raise ValueError(f"need matching non-empty feature lists, got {len(pred_features)}, {len(target_features)}")
    return sum(F.mse_loss(p.float(), t.float()) for p, t in zip(pred_features, target_features))


def identity_loss(descriptor: Callable[[torch.Tensor], torch.Tensor], pred: torch.Tensor, target: torch.Tensor
                  ) -> torch.Tensor:
    """1 - cosine similarity of face-recognition descriptors of the output and the HR ((B,3,128,128) aligned
    faces in [-1, 1]); the HR's descriptor is a constant of the step."""
    with torch.no_grad():
        wanted = descriptor(target)
    return (1.0 - F.cosine_similarity(descriptor(pred), wanted, dim=1)).mean()


def _as_list(scores: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return [scores] if isinstance(scores, torch.Tensor) else list(scores)


def lsgan_generator_loss(d_fake: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """Generator side of LSGAN: mean (D(G(x)) - 1)^2, summed over discriminators (global, local, ...)."""
    return sum(((d.float() - 1) ** 2).mean() for d in _as_list(d_fake))


def lsgan_discriminator_loss(
    d_real: torch.Tensor | Sequence[torch.Tensor], d_fake: torch.Tensor | Sequence[torch.Tensor]
) -> torch.Tensor:
    """Discriminator side of LSGAN: 0.5 * (mean (D(y) - 1)^2 + mean D(G(x))^2), summed over discriminators.

    Pass the generator's output detached for d_fake.
    """
    real, fake = _as_list(d_real), _as_list(d_fake)
    if len(real) != len(fake):
        raise ValueError(f"{len(real)} real but {len(fake)} fake discriminator outputs")
    return sum(0.5 * (((r.float() - 1) ** 2).mean() + (f.float() ** 2).mean()) for r, f in zip(real, fake))


def feature_matching_loss(fake_features: Sequence[Sequence[torch.Tensor]],
                          real_features: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    """Sum over discriminators of the mean over their blocks of the L1 distance between the block outputs on
    the generated and on the real faces (pix2pixHD's feature matching): a perceptual term in the
    discriminator's own features, which need no download. Pass the real features detached."""
    if len(fake_features) != len(real_features) or not fake_features:
        raise ValueError(f"{len(fake_features)} fake but {len(real_features)} real discriminator feature lists")
    return sum(sum(F.l1_loss(f.float(), r.float()) for f, r in zip(fake, real)) / len(fake)
               for fake, real in zip(fake_features, real_features))


@dataclass(frozen=True)
class LossConfig:
    """Loss weights per stage (stage 1, 2, 3), as in the reference's train.py unless marked; the `[loss]`
    table of a training config.

    face_l2      L2 between the refined face and the HR at the stage's input resolution (16, 32, 64)
    out_l2       L2 between the upsampled output and the HR at twice that (32, 64, 128)
    heatmap      MSE between the refined heatmaps and the target heatmaps of the stage's landmarks
    prior        MSE between the prior heatmaps and the same targets (ours: the reference's FAN prior was
                 frozen); set 0 for an external, frozen estimator
    tv           total variation of the upsampled output
    style        Gram-matrix L1 between the upsampled output and the HR at 2x (needs VGG)
    perceptual   VGG-feature MSE, applied to both the refined face and the upsampled output (needs VGG)
    points       not the reference: L1 between the soft-argmax of the refined heatmaps (and of the prior, where
                 `prior` is trained) and the stage's landmarks, a fraction of the map's side (`point_loss`)
    heatmap_kind "mse" (the reference) or "weighted" (foreground pixels weigh 1 + heatmap_foreground), for both
                 the heatmap and the prior terms (`heatmap_loss`)
    adversarial  LSGAN generator term of the global discriminator on the final 128x128 output
    local_adversarial  the same for the local discriminator on 64x64 crops (the paper's; not in the released code)
    feature_matching  not the reference: L1 between the discriminators' block outputs on the output and on the HR
                 (`feature_matching_loss`), during the adversarial phase; a perceptual term without VGG
    mask_weight  not the reference: face_l2 and out_l2 weigh pixels inside the occlusion mask 1 + mask_weight
    identity     not the reference: 1 - cosine of face-recognition descriptors of the final output and the HR
                 (`identity_loss`), by the network `identity_net` names; off by default (docs/training.md,
                 "An identity term": either network as the loss raises its own figure and lowers the other's)
    identity_net "dlib" (its ResNet ported to torch, `models.dlib_resnet`; `eval`'s `identity_cosine`) or
                 "facenet" (`models.facenet`; `eval`'s `identity_facenet`)
    vgg_weights  a local torchvision `vgg19` state dict (.pth) or .safetensors file for the style and
                 perceptual terms (VGG19 cannot be downloaded here); empty: both terms are off
    """

    face_l2: tuple[float, ...] = (10.0, 1.0, 1.0)
    out_l2: tuple[float, ...] = (10.0, 1.0, 1.0)
    heatmap: tuple[float, ...] = (1.0, 1.0, 1.0)
    prior: tuple[float, ...] = (1.0, 1.0, 1.0)
    tv: tuple[float, ...] = (0.1, 0.1, 0.01)
    style: tuple[float, ...] = (10.0, 10.0, 1.0)
    perceptual: tuple[float, ...] = (0.1, 0.01, 0.01)
    points: tuple[float, ...] = (0.0, 0.0, 0.0)
    heatmap_kind: str = "mse"
    heatmap_foreground: float = 10.0
    adversarial: float = 1e-3
    local_adversarial: float = 0.0
    feature_matching: float = 0.0
    mask_weight: float = 0.0
    identity: float = 0.0
    identity_net: str = "dlib"
    vgg_weights: str = ""

    def __post_init__(self) -> None:
        scalars = ("adversarial", "local_adversarial", "feature_matching", "mask_weight", "identity", "identity_net",
                   "vgg_weights", "heatmap_kind", "heatmap_foreground")
        if self.heatmap_kind not in HEATMAP_LOSSES:
            raise ValueError(f"heatmap_kind must be one of {HEATMAP_LOSSES}, got {self.heatmap_kind!r}")
        if self.identity_net not in IDENTITY_NETS:
            raise ValueError(f"identity_net must be one of {IDENTITY_NETS}, got {self.identity_net!r}")
        lengths = {f.name: len(getattr(self, f.name)) for f in fields(self) if f.name not in scalars}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"every per-stage weight needs one value per stage, got lengths {lengths}")

    @property
    def n_stages(self) -> int:
        return len(self.face_l2)


StageLossWeights = LossConfig  # the name generator_loss's callers have used


def hr_pyramid(hr: torch.Tensor, sizes: Sequence[int] = HR_SIZES) -> dict[int, torch.Tensor]:
    """HR faces (B,3,128,128) -> {size: HR area-downsampled to size x size}, the per-stage image targets."""
    if hr.ndim != 4:
        raise ValueError(f"hr must have shape (B, 3, H, W), got {tuple(hr.shape)}")
    return {s: hr if hr.shape[-1] == s else F.interpolate(hr, size=(s, s), mode="area") for s in sizes}


def make_targets(hr: torch.Tensor, heatmaps: Mapping[int, torch.Tensor]) -> dict[str, dict[int, torch.Tensor]]:
    """The `targets` of `generator_loss`: {"hr": hr_pyramid(hr), "heatmaps": {16: (B,7,..), 32: .., 64: ..}}."""
    return {"hr": hr_pyramid(hr), "heatmaps": dict(heatmaps)}


def _lookup(table: Mapping[int, torch.Tensor], size: int, what: str) -> torch.Tensor:
    if size not in table:
        raise KeyError(f"targets[{what!r}] has no {size}x{size} entry (has {sorted(table)})")
    return table[size]


class _TargetFeatures:
    """VGG features of the HR pyramid, computed once per size: the same resolution is the target of one
    stage's `out` and the next stage's `face`."""

    def __init__(self, vgg: VGGFeatureExtractor, hr: Mapping[int, torch.Tensor]) -> None:
        self.vgg, self.hr, self.cache = vgg, hr, {}

    def __call__(self, size: int) -> dict[int, torch.Tensor]:
        if size not in self.cache:
            with torch.no_grad():
                self.cache[size] = self.vgg(_lookup(self.hr, size, "hr"))
        return self.cache[size]


def _vgg_terms(stage: Mapping[str, torch.Tensor], vgg: VGGFeatureExtractor, targets: _TargetFeatures,
               style_weight: float, perceptual_weight: float) -> list[tuple[str, torch.Tensor]]:
    """A stage's style term (Gram L1 on `out`) and perceptual term (feature MSE on `face` and `out`)."""
    if not (style_weight or perceptual_weight):
        return []
    size, up = stage["face"].shape[-1], stage["out"].shape[-1]
    out_layers = (vgg.style_layers if style_weight else ()) + (vgg.perceptual_layers if perceptual_weight else ())
    out_features, out_targets = vgg(stage["out"], out_layers), targets(up)
    terms = []
    if style_weight:
        layers = vgg.style_layers
        terms.append(("style", style_loss([out_features[k] for k in layers], [out_targets[k] for k in layers])))
    if perceptual_weight:
        layers = vgg.perceptual_layers
        face_features, face_targets = vgg(stage["face"], layers), targets(size)
        value = perceptual_loss([face_features[k] for k in layers], [face_targets[k] for k in layers])
        value = value + perceptual_loss([out_features[k] for k in layers], [out_targets[k] for k in layers])
        terms.append(("perceptual", value))
    return terms


def generator_loss(
    outputs: Mapping,
    targets: Mapping[str, Mapping[int, torch.Tensor]],
    weights: LossConfig | None = None,
    vgg: VGGFeatureExtractor | None = None,
    d_fake: torch.Tensor | Sequence[torch.Tensor] | None = None,
    d_fake_local: torch.Tensor | None = None,
    d_features: tuple[Sequence[Sequence[torch.Tensor]], Sequence[Sequence[torch.Tensor]]] | None = None,
    identity: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of every generator term -> (total, {name: unweighted term, detached}).

    outputs: what `ProUIGAN.forward` returns ({"stages": [...], "final": ...}).
    targets: {"hr": {16, 32, 64, 128: (B,3,s,s)}, "heatmaps": {16: (B,7,16,16), 32: (B,42,32,32),
             64: (B,68,64,64)}}, keyed by resolution (`make_targets`); heatmaps carry the stage's landmarks in
             `STAGE_LANDMARKS` order. Stage s (input resolution S = 16, 32, 64) compares
               face            with hr[S]          (face_l2, perceptual)
               out             with hr[2S]         (out_l2, perceptual, style; tv on out alone)
               heatmaps, prior with heatmaps[S]    (heatmap, prior)
    vgg:     enables the style and perceptual terms; without it they are skipped (not computed, not reported).
    d_fake:  discriminator output(s) on outputs["final"], not detached; adds the LSGAN generator term.
    d_fake_local: the local discriminator's output on crops of outputs["final"]; adds 'local_adversarial'.
    d_features: (fake, real) block outputs of each discriminator on the output and on the HR; adds
             'feature_matching'.
    identity: aligned [-1, 1] faces -> face-recognition descriptors; with weights.identity adds 'identity'.
    targets may hold "points": {16: (B,7,2), 32: (B,42,2), 64: (B,68,2)}, the stage's landmarks in its heatmaps'
    pixels (needed when weights.points is set), and "mask": {size: (B,1,s,s)} occlusion masks; with weights.mask_weight the pixel L2 terms
    weigh occluded pixels more. Stages without "heatmaps" (the plain baseline) skip the heatmap terms.

    Terms are named 'stage{s}/{face_l2,out_l2,heatmap,prior,points,tv,style,perceptual}' and 'adversarial'; a term
    whose weight is 0 is skipped. The dict holds 0-d tensors (call .item() when logging, not per step).
    """
    weights = weights or LossConfig()
    stages = outputs["stages"]
    if len(stages) != weights.n_stages:
        raise ValueError(f"{len(stages)} generator stages but weights for {weights.n_stages}")
    hr, heatmaps, masks = targets["hr"], targets.get("heatmaps", {}), targets.get("mask", {})
    points = targets.get("points", {})
    total = outputs["final"].new_zeros((), dtype=torch.float32)
    terms: dict[str, torch.Tensor] = {}

    def add(name: str, weight: float, value: torch.Tensor) -> None:
        nonlocal total
        terms[name] = value.detach().float()
        total = total + weight * value.float()

    target_features = _TargetFeatures(vgg, hr) if vgg is not None else None
    for s, stage in enumerate(stages, 1):
        i = s - 1
        size, up = stage["face"].shape[-1], stage["out"].shape[-1]
        if weights.face_l2[i]:
            add(f"stage{s}/face_l2", weights.face_l2[i],
                l2_loss(stage["face"], _lookup(hr, size, "hr"), masks.get(size), weights.mask_weight))
        if weights.out_l2[i]:
            add(f"stage{s}/out_l2", weights.out_l2[i],
                l2_loss(stage["out"], _lookup(hr, up, "hr"), masks.get(up), weights.mask_weight))
        if (weights.heatmap[i] or weights.prior[i]) and "heatmaps" in stage:
            target = _lookup(heatmaps, size, "heatmaps")
            kind, foreground = weights.heatmap_kind, weights.heatmap_foreground
            if weights.heatmap[i]:
                add(f"stage{s}/heatmap", weights.heatmap[i], heatmap_loss(stage["heatmaps"], target, kind, foreground))
            if weights.prior[i]:
                add(f"stage{s}/prior", weights.prior[i], heatmap_loss(stage["prior"], target, kind, foreground))
        if weights.points[i] and "heatmaps" in stage:
            target_points = _lookup(points, size, "points")
            value = point_loss(stage["heatmaps"], target_points)
            if weights.prior[i]:  # a frozen external prior is not trained (its prior weight is 0)
                value = value + point_loss(stage["prior"], target_points)
            add(f"stage{s}/points", weights.points[i], value)
        if weights.tv[i]:
            add(f"stage{s}/tv", weights.tv[i], total_variation(stage["out"]))
        if target_features is not None:
            for name, value in _vgg_terms(stage, vgg, target_features, weights.style[i], weights.perceptual[i]):
                add(f"stage{s}/{name}", getattr(weights, name)[i], value)

    if d_fake is not None and weights.adversarial:
        add("adversarial", weights.adversarial, lsgan_generator_loss(d_fake))
    if d_fake_local is not None and weights.local_adversarial:
        add("local_adversarial", weights.local_adversarial, lsgan_generator_loss(d_fake_local))
    if d_features is not None and weights.feature_matching:
        add("feature_matching", weights.feature_matching, feature_matching_loss(*d_features))
    if identity is not None and weights.identity:
        add("identity", weights.identity, identity_loss(identity, outputs["final"], _lookup(hr, HR_SIZE, "hr")))
    return total, terms
