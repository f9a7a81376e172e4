"""Gaussian landmark heatmaps: geometry, NaN handling, numpy/torch agreement, storage cost."""
from __future__ import annotations

import time

import numpy as np
import pytest

from proui_data.align import TEMPLATE_5, similarity_transform as similarity
from proui_data.heatmaps import render_heatmaps
from proui_train.targets import render_heatmaps_torch

RAW_BYTES = 68 * 64 * 64


def read_pts(path) -> np.ndarray:
    lines = path.read_text().splitlines()
    start = lines.index("{") + 1
    return np.array([[float(v) for v in line.split()] for line in lines[start : start + 68]])


def aligned_helen_landmarks(shared_data, n: int) -> list[np.ndarray]:
    """Human 68-point annotations of the first n Helen test photos, mapped into the 128x128 crop."""
    out = []
    for pts in sorted((shared_data / "300w/helen/testset").glob("*.pts"))[:n]:
        lm = read_pts(pts)
        five = np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
        m = similarity(five, TEMPLATE_5)
        out.append((lm @ m[:, :2].T + m[:, 2]).astype(np.float32))
    return out


def mapped(landmarks: np.ndarray, size: int, hr_size: int = 128) -> np.ndarray:
    return (landmarks.astype(np.float64) + 0.5) * size / hr_size - 0.5


def test_shape_dtype_and_formula():
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(0, 127, (68, 2)).astype(np.float32)
    maps = render_heatmaps(landmarks)
    assert maps.shape == (68, 64, 64) and maps.dtype == np.uint8
    # Direct (non-separable) float64 evaluation of the documented formula.
    q = mapped(landmarks, 64)
    ys, xs = np.mgrid[0:64, 0:64]
    d2 = (xs[None] - q[:, 0, None, None]) ** 2 + (ys[None] - q[:, 1, None, None]) ** 2
    reference = 255.0 * np.exp(-d2 / (2 * 1.5**2))
    assert np.abs(maps - reference).max() <= 0.5 + 1e-3


@pytest.mark.parametrize("size", [16, 32, 64])
def test_argmax_at_mapped_landmark(size):
    rng = np.random.default_rng(1)
    landmarks = rng.uniform(0, 127, (68, 2)).astype(np.float32)
    maps = render_heatmaps(landmarks, size=size, sigma=1.5 * size / 64)
    flat = maps.reshape(68, -1).argmax(1)
    peak_xy = np.stack([flat % size, flat // size], 1)
    q = np.clip(mapped(landmarks, size), 0, size - 1)
    # The peak is the nearest pixel centre; within ~0.01 px of a half-pixel the rounded neighbours tie.
    assert np.abs(peak_xy - q).max() <= 0.51

def test_peak_is_255_only_on_a_pixel_centre():
    on_centre = render_heatmaps(np.full((1, 2), 20.5, np.float32))  # q = 21 / 2 - 0.5 = 10
    assert on_centre[0, 10, 10] == 255
    between = render_heatmaps(np.full((1, 2), 63.5, np.float32))  # q = 31.5: four pixels tie
    expected = round(255 * np.exp(-0.5 / (2 * 1.5**2)))  # distance^2 = 0.25 + 0.25
    assert between.max() == expected and (between[0, 31:33, 31:33] == expected).all()


def test_nan_points_give_zero_maps():
    rng = np.random.default_rng(2)
    landmarks = rng.uniform(10, 117, (68, 2)).astype(np.float32)
    landmarks[5] = np.nan
    landmarks[7, 1] = np.nan  # one coordinate is enough
    maps = render_heatmaps(landmarks)
    assert maps[5].max() == 0 and maps[7].max() == 0
    others = np.delete(maps, [5, 7], axis=0)
    assert (others.reshape(66, -1).max(1) >= 200).all()  # sigma 1.5: the nearest centre keeps >= 0.89 of the peak


def test_batched_equals_per_sample():
    rng = np.random.default_rng(3)
    landmarks = rng.uniform(0, 127, (2, 3, 68, 2)).astype(np.float32)
    landmarks[1, 2, :10] = np.nan
    maps = render_heatmaps(landmarks, size=32)
    assert maps.shape == (2, 3, 68, 32, 32)
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(maps[i, j], render_heatmaps(landmarks[i, j], size=32))


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(\.\.\., K, 2\)"):
        render_heatmaps(np.zeros((68, 3)))
    with pytest.raises(ValueError, match="sigma"):
        render_heatmaps(np.zeros((68, 2)), sigma=0)


@pytest.mark.parametrize("size", [16, 32, 64])
def test_torch_agrees_with_stored(size):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    landmarks = rng.uniform(-5, 132, (3, 68, 2)).astype(np.float32)  # a few points fall outside the crop
    landmarks[1, 3] = np.nan
    sigma = 1.5 * size / 64
    stored = render_heatmaps(landmarks, size=size, sigma=sigma)
    live = render_heatmaps_torch(torch.from_numpy(landmarks), size=size, sigma=sigma)
    assert live.shape == (3, 68, size, size) and live.dtype == torch.float32
    assert float(live.min()) >= 0.0 and float(live.max()) <= 1.0
    # Stored maps are the torch maps rounded to 1/255 steps.
    assert np.abs(live.numpy() * 255.0 - stored).max() <= 0.5 + 1e-3
    assert float(live[1, 3].abs().max()) == 0.0
    # float64 in -> float64 out, same values.
    live64 = render_heatmaps_torch(torch.from_numpy(landmarks).double(), size=size, sigma=sigma)
    assert live64.dtype == torch.float64
    assert torch.allclose(live64.float(), live, atol=1e-5)


def test_zstd_bytes_per_sample(shared_data):
    numcodecs = pytest.importorskip("numcodecs")
    codec = numcodecs.Zstd(level=3)
    sizes = [len(codec.encode(render_heatmaps(lm))) for lm in aligned_helen_landmarks(shared_data, 20)]
    # Measured 5.2-5.7 kB per sample on Helen faces (98% of the bytes are zeros), ~50x below raw.
    assert max(sizes) < RAW_BYTES / 25
    assert min(sizes) > 1000  # 68 Gaussians do not compress to nothing: guards against empty maps


def test_render_is_fast():
    landmarks = np.random.default_rng(5).uniform(0, 127, (68, 2)).astype(np.float32)
    render_heatmaps(landmarks)
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        render_heatmaps(landmarks)
        times.append(time.perf_counter() - t0)
    # ~0.2 ms on one core. The bound leaves room for a busy shared core; a dense (non-separable) float64
    # implementation takes ~2 ms and a Python loop over pixels far longer.
    assert np.median(times) < 1.5e-3
