"""PSNR/SSIM against hand computations and the published bicubic figures of the FSRNet test sets."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from proui_train.metrics import psnr, quality, rgb_to_y, ssim


def test_y_channel_matches_bt601():
    img = torch.tensor([[255.0, 255.0, 255.0], [0.0, 0.0, 0.0], [255.0, 0.0, 0.0]]).T.reshape(1, 3, 3, 1)
    y = rgb_to_y(img).flatten()
    np.testing.assert_allclose(y.numpy(), [235.0, 16.0, 16 + 65.481], atol=1e-3)


def test_psnr_by_hand_and_mask():
    a = torch.zeros(1, 1, 4, 4)
    b = a.clone()
    b[..., 0, 0] = 16.0  # mse = 256 / 16 = 16
    assert psnr(a, b).item() == pytest.approx(10 * np.log10(255**2 / 16))
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 0, 0] = 1
    assert psnr(a, b, mask).item() == pytest.approx(10 * np.log10(255**2 / 256))
    assert psnr(a, b, 1 - mask).item() > 100  # identical outside


def test_quality_keys_and_mask_split():
    rng = np.random.default_rng(1)
    hr = torch.tensor(rng.uniform(0, 255, (2, 3, 32, 32)))
    sr = hr.clone()
    sr[..., :16, :] += 10.0
    mask = torch.zeros(2, 1, 32, 32)
    mask[..., :16, :] = 1
    q = quality(sr, hr, mask)
    assert set(q) >= {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "psnr_y_in", "psnr_y_out", "ssim_y_in", "ssim_y_out"}
    assert (q["psnr_y_out"] > 100).all() and (q["psnr_y_in"] < q["psnr_y"]).all()


def test_ssim_identity_and_degradation():
    rng = np.random.default_rng(0)
    x = torch.tensor(cv2.GaussianBlur(rng.uniform(0, 255, (64, 64)), (0, 0), 3))[None, None]
    assert ssim(x, x).item() == pytest.approx(1.0)
    noisy = x + torch.tensor(rng.normal(0, 20, (64, 64)))[None, None]
    s = ssim(x, noisy).item()
    assert 0.0 < s < 0.9


def _load(path) -> torch.Tensor:
    rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    return torch.from_numpy(rgb).permute(2, 0, 1).double()


@pytest.mark.parametrize("name,hr_dir,lr_dir,published_psnr,published_ssim", [
    ("celeba", "celeba_val_1000_HR", "celeba_val_1000_LR_8x", 23.58, 0.6285),
    ("helen", "helen_val_50_HR", "helen_val_50_LR_8x", 23.88, 0.6628),
])
def test_bicubic_baseline_on_fsrnet_sets(shared_data, name, hr_dir, lr_dir, published_psnr, published_ssim):
    """The FSRNet LR files hold the 16x16 input already bicubic-upsampled to 128 (JPEG re-encoded)."""
    root = shared_data / "benchmark" / "fsrnet"
    files = sorted(p.name for p in (root / hr_dir).iterdir())
    hr = torch.stack([_load(root / hr_dir / f) for f in files])
    lr = torch.stack([_load(root / lr_dir / f) for f in files])
    y_lr, y_hr = rgb_to_y(lr), rgb_to_y(hr)
    p, s = psnr(y_lr, y_hr).mean().item(), ssim(y_lr, y_hr).mean().item()
    # Measured: CelebA 23.53 / 0.6326, Helen 23.69 / 0.6600 (see README: the JPEG re-encoding of our copy).
    assert abs(p - published_psnr) < 0.25 and abs(s - published_ssim) < 0.01


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'face-like' image and a degraded copy (blur + noise + a flat occluder), uint8 RGB 64x64."""
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (64, 64, 3)).astype(np.float32), (0, 0), 3)
    base = cv2.normalize(base, None, 0, 255, cv2.NORM_MINMAX)
    hr = base.round().astype(np.uint8)
    sr = cv2.GaussianBlur(base, (0, 0), 1.2) + rng.normal(0, 6, base.shape)
    sr[40:60, 8:30] = 128.0  # a flat block: SSIM's variance terms near zero
    return np.clip(sr, 0, 255).round().astype(np.uint8), hr


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_and_psnr_equal_scikit_image(seed):
    metrics = pytest.importorskip("skimage.metrics")
    sr, hr = _pair(seed)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].double()  # noqa: E731
    y_sr, y_hr = rgb_to_y(t(sr)), rgb_to_y(t(hr))
    ref = metrics.structural_similarity(y_sr[0, 0].numpy(), y_hr[0, 0].numpy(), gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, data_range=255)
    assert abs(ssim(y_sr, y_hr).item() - ref) < 1e-6
    ref_rgb = metrics.structural_similarity(sr.astype(np.float64), hr.astype(np.float64), gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2)
    assert abs(ssim(t(sr), t(hr)).item() - ref_rgb) < 1e-6
    ref_psnr = metrics.peak_signal_noise_ratio(y_hr[0, 0].numpy(), y_sr[0, 0].numpy(), data_range=255)
    assert abs(psnr(y_sr, y_hr).item() - ref_psnr) < 1e-6


def test_masked_ssim_averages_the_map_over_window_centres_in_the_mask():
    metrics = pytest.importorskip("skimage.metrics")
    sr, hr = _pair(3)
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].double()  # noqa: E731
    y_sr, y_hr = rgb_to_y(t(sr)), rgb_to_y(t(hr))
    _, full = metrics.structural_similarity(y_sr[0, 0].numpy(), y_hr[0, 0].numpy(), gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False, data_range=255, full=True)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 35:62, 5:35] = 1  # around the flat block, partly in the 5-pixel border
    inner = full[5:-5, 5:-5]
    expected = inner[mask[0, 0, 5:-5, 5:-5].numpy() > 0].mean()
    assert abs(ssim(y_sr, y_hr, mask).item() - expected) < 1e-6
    assert ssim(y_sr, y_hr, mask).item() < ssim(y_sr, y_hr, 1 - mask).item()  # the degraded part scores lower


def test_recover_lr_inverts_matlab_bicubic_upsampling():
    """The FSRNet LR files are 16x16 images upsampled x8 by MATLAB's bicubic: recover_lr gets the 16x16 back."""
    from proui_train.evaluate import bicubic_upsampling_matrix, recover_lr

    a = bicubic_upsampling_matrix(16, 8)
    assert a.shape == (128, 16)
    np.testing.assert_allclose(a.sum(1), 1.0, atol=1e-12)  # a constant image stays constant
    # MATLAB imresize([0 0 0 1 0 0 0 0 ...], 8, 'bicubic') samples the Keys kernel (a = -0.5) at offsets
    # (i + 0.5) / 8 - 0.5 - 3: e.g. output pixel 27 sits at u = 2.9375, 0.0625 before input pixel 3
    assert a[27, 3] == pytest.approx(1 - 2.5 * 0.0625**2 + 1.5 * 0.0625**3)  # (a+2)|x|^3 - (a+3)|x|^2 + 1
    rng = np.random.default_rng(0)
    lr = rng.integers(40, 216, (16, 16, 3)).astype(np.float64)  # the upsampling's overshoot stays in 0..255
    up = np.einsum("ij,jkc,lk->ilc", a, lr, a)
    assert 0 <= up.min() and up.max() <= 255
    np.testing.assert_array_equal(recover_lr(up), lr.astype(np.uint8))
    noisy = np.clip(np.round(up + rng.normal(0, 2.0, up.shape)), 0, 255)  # JPEG-like noise on the big image
    assert np.abs(recover_lr(noisy).astype(float) - lr).max() <= 2.0


def test_high_frequency_ratio_against_opencv_laplacian(shared_data):
    """The sharpness figure equals OpenCV's Laplacian energy ratio, is 1 for HR itself, and ranks a real face:
    HR > bicubic from 16x16 (far below 1)."""
    from proui_train.metrics import high_frequency_ratio
    from proui_train.report import bicubic

    path = sorted((shared_data / "benchmark" / "fsrnet" / "celeba_val_1000_HR").iterdir())[0]
    hr_np = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    hr = torch.from_numpy(hr_np).permute(2, 0, 1)[None].double()
    lr = torch.nn.functional.interpolate(hr, size=16, mode="area")
    sr = bicubic(lr.float()).double()
    y_hr, y_sr = rgb_to_y(hr), rgb_to_y(sr)

    def opencv_energy(y: torch.Tensor) -> float:
        lap = cv2.Laplacian(y[0, 0].numpy(), cv2.CV_64F, ksize=1)[1:-1, 1:-1]  # ksize 1: the 3x3 cross
        return float((lap**2).mean())

    ratio = high_frequency_ratio(y_sr, y_hr).item()
    assert ratio == pytest.approx(opencv_energy(y_sr) / opencv_energy(y_hr), rel=1e-9)
    assert high_frequency_ratio(y_hr, y_hr).item() == pytest.approx(1.0)
    assert ratio < 0.2
    assert "hf_ratio" in quality(sr, hr)
