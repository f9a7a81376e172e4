"""Image-quality metrics as the face-hallucination literature reports them.

PSNR and SSIM on the Y channel of ITU-R BT.601 YCbCr (MATLAB `rgb2ycbcr`: Y = 16 + (65.481 R + 128.553 G
+ 24.966 B) / 255 for R, G, B in 0..255), data range 255, no border crop. SSIM is Wang et al. (2004): an
11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, over the 'valid' region, averaged. RGB
variants average over the three channels. Masked variants restrict the mean to a region (e.g. inside or
outside the occlusion mask); SSIM's map is then averaged over the region eroded by nothing: the window
centres inside it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) RGB in 0..255 -> (B,1,H,W) BT.601 luma in 16..235."""
    w = img.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return 16.0 + (img * w).sum(1, keepdim=True) / 255.0


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 255.0) -> torch.Tensor:
    """Per-image PSNR (B,) of (B,C,H,W) tensors in 0..data_range; `mask` (B,1,H,W) in {0,1} restricts it."""
    err = (a.double() - b.double()) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        m = mask.double().expand_as(err)
        mse = (err * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-12))


def _gaussian_1d(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64, device=device) - size // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_valid(x: torch.Tensor, c: int) -> torch.Tensor:
    """11x11 Gaussian filter over the 'valid' region of (B,C,H,W) float32."""
    g = _gaussian_1d(device=x.device)
    if x.device.type == "cpu":
        # OpenCV's separable filter is ~50x faster than torch's CPU conv2d for one-channel planes; the
        # valid region does not depend on the border mode.
        import cv2
        import numpy as np

        k = g.numpy().astype(np.float64 if x.dtype == torch.float64 else np.float32)
        arr = x.contiguous().numpy()
        out = np.stack([np.stack([cv2.sepFilter2D(p, -1, k, k)[5:-5, 5:-5] for p in img]) for img in arr])
        return torch.from_numpy(out)
    w = (g[:, None] * g[None, :]).to(x.dtype).view(1, 1, 11, 11).expand(c, 1, 11, 11)
    return F.conv2d(x, w, groups=c)


def ssim(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 255.0) -> torch.Tensor:
    """Per-image SSIM (B,) of (B,C,H,W) tensors, averaged over channels (and over `mask` when given)."""
    # On CPU (OpenCV's filter) in float64: E[x^2] - E[x]^2 of values up to 255 loses ~1e-6 of SSIM in float32.
    # On GPU float32: torch's float64 convolution is slow and 4 reported digits need no more.
    dtype = torch.float64 if a.device.type == "cpu" else torch.float32
    a, b = a.to(dtype), b.to(dtype)
    c = a.shape[1]
    conv = lambda x: _gaussian_valid(x, c)  # noqa: E731
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = conv(a), conv(b)
    s_aa = conv(a * a) - mu_a**2
    s_bb = conv(b * b) - mu_b**2
    s_ab = conv(a * b) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    if mask is None:
        return smap.flatten(1).mean(1).double()
    m = mask.to(dtype)[..., 5:-5, 5:-5].expand_as(smap)  # window centres
    return ((smap * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)).double()


LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))


def high_frequency_energy(y: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared 3x3 Laplacian (B,) of (B,1,H,W) luma over the valid region: the energy of detail."""
    kernel = torch.tensor(LAPLACIAN, dtype=torch.float64, device=y.device).view(1, 1, 3, 3)
    return (F.conv2d(y.double(), kernel) ** 2).flatten(1).mean(1)


def high_frequency_ratio(sr_y: torch.Tensor, hr_y: torch.Tensor) -> torch.Tensor:
    """Per-image high-frequency energy of `sr_y` over that of `hr_y` (B,): a no-reference sharpness figure put on
    HR's scale, 1 = as much detail as the ground truth, below 1 = smoother (bicubic is far below), above 1 =
    more (noise, artefacts, or hallucinated texture)."""
    return high_frequency_energy(sr_y) / high_frequency_energy(hr_y).clamp_min(1e-12)


def quality(sr: torch.Tensor, hr: torch.Tensor, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """PSNR/SSIM on Y and RGB for uint8-range (B,3,H,W) tensors, and the high-frequency ratio on Y (`hf_ratio`);
    with `mask`, also PSNR/SSIM inside/outside it."""
    out = {}
    ys, yh = rgb_to_y(sr), rgb_to_y(hr)
    out["psnr_y"], out["ssim_y"] = psnr(ys, yh), ssim(ys, yh)
    out["hf_ratio"] = high_frequency_ratio(ys, yh)
    out["psnr_rgb"], out["ssim_rgb"] = psnr(sr, hr), ssim(sr, hr)
    if mask is not None:
        inside = (mask > 0.5).to(sr.dtype)
        for name, m in (("in", inside), ("out", 1 - inside)):
            out[f"psnr_y_{name}"] = psnr(ys, yh, m)
            out[f"ssim_y_{name}"] = ssim(ys, yh, m)
    return out


def verification_auc(same: "np.ndarray", different: "np.ndarray") -> float:
    """Face verification AUC: the chance that a same-person pair scores above a different-person pair, ties
    counted half (the Mann-Whitney statistic over all ordered pairs)."""
    import numpy as np

    scores = np.concatenate([same, different]).astype(np.float64)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2  # average 1-based rank of each distinct value
    ranks = mid_rank[inverse]
    return float((ranks[:len(same)].sum() - len(same) * (len(same) + 1) / 2) / (len(same) * len(different)))
