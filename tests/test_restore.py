"""Restoring faces in photos (`proui_train.restore`) with the released generator and the shipped detectors: tiny
faces straight to 16x16, larger ones left or downscaled, paste-back geometry and seams, the model's frame from its
weights, the Python API and the README's examples."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from fixtures import demo_photo
from proui_data import align
from proui_data.degrade import downsample
from proui_train.restore import HR_TO_LR, TINY_EYE_DISTANCE, FaceRestorer, face_mask, paste_face

ROOT = Path(__file__).resolve().parents[1]
RELEASE = ROOT / "weights" / "proui-celeba-gpu"
RELEASE_FSRNET = ROOT / "weights" / "proui-celeba-fsrnet-cpu"
HOPPER_EYES = 82.7  # px between the eye centres of the demo photo grace_hopper.jpg (600x512)


def tiny_face_photo(scale: float = 0.25) -> np.ndarray:
    """Grace Hopper at `scale` (eyes ~21 px apart at 0.25) on a grey 240x320 photo."""
    small = cv2.resize(demo_photo("grace_hopper.jpg"), None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    photo = np.full((240, 320, 3), 120, np.uint8)
    photo[40:40 + small.shape[0], 90:90 + small.shape[1]] = small
    return photo


@pytest.fixture(scope="module")
def restorer() -> FaceRestorer:
    return FaceRestorer(RELEASE, device="cpu")


@pytest.fixture(scope="module")
def tiny(restorer):
    photo = tiny_face_photo()
    return photo, restorer.search(photo)


def to_canvas(m: np.ndarray, n: int) -> np.ndarray:
    """HR px -> px of the photo enlarged n times (pixel centres: x_n = n x + (n - 1) / 2), written independently."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    return (np.array([[n, 0, (n - 1) / 2], [0, n, (n - 1) / 2], [0, 0, 1]]) @ inv)[:2]


def test_a_tiny_face_is_warped_straight_to_16x16_like_the_build_would_make_it(restorer, tiny):
    photo, faces = tiny
    assert len(faces) == 1
    out, [rec] = restorer.restore(photo, faces)
    assert rec.mode == "tiny" and rec.status == "restored" and rec.face == 0
    assert rec.eye_distance == pytest.approx(HOPPER_EYES * 0.25, rel=0.1) and rec.eye_distance <= TINY_EYE_DISTANCE
    assert rec.lr.shape == (16, 16, 3) and rec.sr.shape == (128, 128, 3) and rec.sr.dtype == np.uint8
    # the build's way (an enlarged 128 crop, 8x box average) and the footprint integral sampled at 1024 px agree
    build = downsample(align.warp_to_template(photo, rec.transform), 8).astype(float)
    to_1024 = align.compose(np.array([[8, 0, 3.5], [0, 8, 3.5]]), rec.transform)
    fine = cv2.warpAffine(photo, to_1024, (1024, 1024), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ideal = cv2.resize(fine, (16, 16), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(rec.lr - ideal).mean() < 1.0 and np.abs(rec.lr - build).mean() < 1.0
    plain = align.warp_to_template(photo, align.compose(HR_TO_LR, rec.transform), size=16)  # a plain warp aliases
    assert np.abs(plain - ideal).mean() > 3 * np.abs(rec.lr - ideal).mean()
    assert out.shape == photo.shape and not np.array_equal(out, photo)
    assert rec.to_dict()["mode"] == "tiny" and len(rec.to_dict()["transform"]) == 2


def test_a_larger_face_is_left_as_is_unless_downscaled():
    photo = demo_photo("grace_hopper.jpg")
    keep = FaceRestorer(RELEASE, device="cpu")
    faces = keep.search(photo)
    out, [rec] = keep.restore(photo, faces)
    assert rec.mode == "large" and rec.status == "left_as_is" and "--downscale" in rec.reason
    assert rec.eye_distance == pytest.approx(HOPPER_EYES, abs=2.0)
    assert np.array_equal(out, photo) and rec.sr is None
    out, [rec] = FaceRestorer(RELEASE, device="cpu", downscale=True).restore(photo, faces)
    assert rec.mode == "downscaled" and rec.status == "restored" and rec.lr.shape == (16, 16, 3)
    assert not np.array_equal(out, photo)


def test_paste_back_puts_the_aligned_face_where_it_came_from(tiny):
    """Pasting the photo's own aligned crop back (2x canvas) gives the bicubic-enlarged photo again under the
    mask: the inverse similarity lands every pixel where it was."""
    photo, [face] = tiny
    m = align.similarity_transform(align.landmarks68_to_5(face.landmarks), align.TEMPLATE_5)
    aligned = align.warp_to_template(photo, m)
    canvas = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    before = canvas.copy()
    mask = face_mask(align.apply_transform(m, face.landmarks))
    paste_face(canvas, aligned, mask, to_canvas(m, 2))
    alpha = cv2.warpAffine(mask, to_canvas(m, 2), (640, 480))
    inside = alpha > 0.5
    assert inside.sum() > 1000
    err = np.abs(canvas - before)[inside].mean()
    assert err < 5.0  # resampling twice (bilinear into HR and back), not a shifted face:
    for shift in ([0.5, 0], [-0.5, 0], [0, 0.5], [0, -0.5]):  # half a canvas px off either way is worse
        off = before.copy()
        paste_face(off, aligned, mask, to_canvas(m, 2) + np.array([[0, 0, shift[0]], [0, 0, shift[1]]]))
        assert np.abs(off - before)[inside].mean() > err + 0.3, shift


def across_boundary(img: np.ndarray, alpha: np.ndarray) -> float:
    """Mean |luminance gradient along the mask's normal| over the middle of its transition (0.25 < alpha < 0.75)."""
    lum = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY).astype(np.float32)
    normal = np.stack([cv2.Sobel(alpha, cv2.CV_32F, 1, 0), cv2.Sobel(alpha, cv2.CV_32F, 0, 1)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-9
    grad = np.stack([cv2.Sobel(lum, cv2.CV_32F, 1, 0), cv2.Sobel(lum, cv2.CV_32F, 0, 1)], -1)
    band = (alpha > 0.25) & (alpha < 0.75)
    return float(np.abs((grad * normal).sum(-1))[band].mean())


def test_no_seam_across_the_mask_boundary(tiny):
    """The restored photo's gradient across the mask boundary is at most 1.2x the (bicubic-enlarged) photo's own
    there; the same output pasted with a hard mask and 40 grey levels brighter shows a seam by that measure."""
    photo, faces = tiny
    out, [rec] = FaceRestorer(RELEASE, device="cpu", upscale=2).restore(photo, faces)
    assert out.shape == (480, 640, 3)
    base = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    alpha = cv2.warpAffine(face_mask(align.apply_transform(rec.transform, faces[0].landmarks)),
                           to_canvas(rec.transform, 2), (640, 480))
    own = across_boundary(base, alpha)
    assert across_boundary(out.astype(np.float32), alpha) <= 1.2 * own
    face = cv2.warpAffine(rec.sr.astype(np.float32) + 40, to_canvas(rec.transform, 2), (640, 480))
    assert across_boundary(np.where((alpha > 0.5)[..., None], face, base), alpha) > 1.2 * own


def test_the_model_frame_comes_from_its_weights(caplog, demo_store, tmp_path):
    from proui_train.models import ProUIGAN
    from proui_train.release import recorded_template, save_release
    from proui_train.config import TrainConfig
    from proui_train.runtime import model_template, run_template

    assert model_template(RELEASE) == "celeba" and model_template(RELEASE_FSRNET) == "fsrnet"
    assert model_template(RELEASE_FSRNET / "model.safetensors") == "fsrnet"
    with caplog.at_level(logging.WARNING):
        assert model_template(RELEASE_FSRNET, "celeba") == "celeba"
    assert "trained in the 'fsrnet' frame" in caplog.text
    assert FaceRestorer(RELEASE_FSRNET, device="cpu").template == "fsrnet"
    # a run's frame is its training store's; a release records it in the weights' metadata
    assert run_template({"config": {"data": {"store": demo_store}}}) == "celeba"
    assert run_template({"config": {"data": {"store": str(tmp_path / "gone.zarr")}}}) is None
    save_release(tmp_path / "rel", ProUIGAN(), TrainConfig(), extra={"template": "fsrnet"})
    assert recorded_template(tmp_path / "rel") == "fsrnet"
    save_release(tmp_path / "bare", ProUIGAN(), TrainConfig())
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert model_template(tmp_path / "bare") == "celeba"
    assert "records no template" in caplog.text


def test_python_api(tiny):
    from proui_train import ProUIGAN, restore

    photo, _ = tiny
    model = ProUIGAN.from_pretrained(str(RELEASE))
    out, faces = restore(photo, model, upscale=2, device="cpu")
    assert out.shape == (480, 640, 3) and out.dtype == np.uint8
    assert [(f.mode, f.status) for f in faces] == [("tiny", "restored")]
    with pytest.raises(ValueError, match=r"expected an RGB uint8 photo of shape \(H, W, 3\), got float32"):
        restore(photo.astype(np.float32), model, device="cpu")
    with pytest.raises(ValueError, match="upscale must be a whole number"):
        restore(photo, model, upscale=0, device="cpu")


def test_readme_python_examples_run_as_written(monkeypatch):
    """Every ```python block of the README that uses proui_train runs, from the repository root."""
    blocks = [b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
              if "proui_train" in b]
    assert blocks
    monkeypatch.chdir(ROOT)
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
