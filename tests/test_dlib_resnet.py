"""dlib's face-recognition ResNet in torch: the .dat parser, agreement with dlib, gradients, the 128 -> chip path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fixtures import demo_photo
from proui_data import align
from proui_data.detect import dlib_models_dir, hog_boxes, predict_in_box
from proui_train.models.dlib_resnet import (
    CHIP_PADDING,
    CHIP_SIZE,
    MODEL_FILE,
    face_chips,
    load_dlib_face_resnet,
    read_dlib_face_resnet,
)

DEMO_PHOTOS = ("astronaut.jpg", "grace_hopper.jpg")
CELEBA_FILES = ("000002.jpg", "000058.jpg", "000086.jpg", "000132.jpg", "000161.jpg", "000168.jpg")  # 6 identities


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return load_dlib_face_resnet()


@pytest.fixture(scope="module")
def dlib_net(dlib_models):
    """(dlib, 5-point predictor, dlib's face_recognition_model_v1): what identity.face_descriptor uses."""
    from proui_train.identity import _models

    return (dlib_models[0], *_models())


def chip_and_face(dlib_net, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dlib's 150x150 chip as compute_face_descriptor cuts it, the 128x128 face aligned to TEMPLATE_5)."""
    dlib, sp, _ = dlib_net
    boxes = hog_boxes(rgb, 0) or hog_boxes(rgb, 1)
    assert boxes, "fixture photo must contain a face"
    rect = dlib.rectangle(*(int(round(v)) for v in boxes[0]))
    chip = dlib.get_face_chip(rgb, sp(rgb, rect), CHIP_SIZE, CHIP_PADDING)
    five = align.landmarks68_to_5(predict_in_box(rgb, boxes[0]))
    face = align.warp_to_template(rgb, align.similarity_transform(five, align.TEMPLATE_5))
    return chip, face


@pytest.fixture(scope="module")
def demo_faces(dlib_net) -> list[tuple[np.ndarray, np.ndarray]]:
    """Both demo photos and their mirror images (4 inputs, 2 people)."""
    photos = [demo_photo(name) for name in DEMO_PHOTOS]
    return [chip_and_face(dlib_net, rgb) for p in photos for rgb in (p, np.ascontiguousarray(p[:, ::-1]))]


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def assert_matches_dlib(net, dlib_net, chips: list[np.ndarray]) -> float:
    with torch.no_grad():
        ours = net(to_tensor(chips)).double().numpy()
    theirs = np.array([np.asarray(dlib_net[2].compute_face_descriptor(c)) for c in chips])
    diff = float(np.abs(ours - theirs).max())
    assert diff < 1e-4, f"max abs descriptor difference {diff:.2e}"  # measured 2.8e-7 on the demo chips
    return diff


def assert_chip_path_matches_identity(net, faces: list[np.ndarray]) -> np.ndarray:
    from proui_train.identity import face_descriptor

    with torch.no_grad():
        ours = net(face_chips(to_tensor(faces))).double().numpy()
    return cosine(ours, np.array([face_descriptor(f) for f in faces]))


# --------------------------------------------------------------------------------------------- the file


def test_file_holds_anet_type_layers_in_order():
    weights = read_dlib_face_resnet(dlib_models_dir() / MODEL_FILE)
    kinds = [layer.kind for layer in weights.layers]
    counts = {k: kinds.count(k) for k in set(kinds)}
    assert counts == {"con": 29, "affine": 29, "relu": 29, "max_pool": 1, "avg_pool": 5, "add_prev": 14, "fc": 1}
    assert kinds[:4] == ["con", "affine", "relu", "max_pool"] and kinds[-2:] == ["avg_pool", "fc"]
    assert weights.layers[0].tensors["filters"].shape == (32, 3, 7, 7)
    assert weights.layers[-1].tensors["weights"].shape == (256, 128)
    np.testing.assert_allclose(weights.mean_rgb, [122.782, 117.001, 104.298], rtol=1e-6)
    assert weights.chip_size == (150, 150)


def test_loaded_network_is_frozen_and_in_eval(net):
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())
    weights = read_dlib_face_resnet(dlib_models_dir() / MODEL_FILE)
    stored = sum(t.size for layer in weights.layers for t in layer.tensors.values())
    assert sum(p.numel() for p in net.parameters()) == stored == 5_614_592  # every stored value has a home
    assert net(torch.zeros(2, 3, 150, 150)).shape == (2, 128)


def test_missing_file_is_a_clear_error(tmp_path):
    missing = tmp_path / MODEL_FILE
    with pytest.raises(RuntimeError, match="not found.*" + MODEL_FILE):
        load_dlib_face_resnet(missing)


@pytest.mark.parametrize("kind", ["other_dlib_model", "truncated", "noise"])
def test_wrong_file_is_a_clear_error(tmp_path, kind):
    real = dlib_models_dir() / MODEL_FILE
    path = tmp_path / f"{kind}.dat"
    if kind == "other_dlib_model":
        path = dlib_models_dir() / "shape_predictor_5_face_landmarks.dat"
    elif kind == "truncated":
        path.write_bytes(real.read_bytes()[:200_000])
    else:
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(RuntimeError, match=f"{path.name} is not dlib's face recognition ResNet"):
        load_dlib_face_resnet(path)


# -------------------------------------------------------------------------------------- against dlib


def test_descriptors_match_dlib_on_demo_chips(net, dlib_net, demo_faces):
    assert_matches_dlib(net, dlib_net, [chip for chip, _ in demo_faces])


def test_gradients_reach_the_chip_and_the_aligned_face(net, demo_faces):
    chip = to_tensor([demo_faces[0][0]]).requires_grad_(True)
    other = net(to_tensor([demo_faces[2][0]]))
    (1 - torch.cosine_similarity(net(chip), other)).sum().backward()
    assert torch.isfinite(chip.grad).all() and chip.grad.abs().sum() > 0

    face = to_tensor([demo_faces[0][1]]).requires_grad_(True)
    net(face_chips(face)).square().sum().backward()
    assert torch.isfinite(face.grad).all() and face.grad.abs().sum() > 0


def test_aligned_face_chip_path_agrees_with_identity_descriptor(net, demo_faces):
    cos = assert_chip_path_matches_identity(net, [face for _, face in demo_faces])
    assert (cos > 0.99).all(), cos  # measured 0.9928 .. 0.9972


def test_celeba_faces(net, dlib_net, shared_data):
    """Six CelebA people: dlib's chips agree with dlib, and the fixed 128 -> chip map with identity's path."""
    import cv2

    faces = [chip_and_face(dlib_net, cv2.imread(str(shared_data / "celeba/img_align_celeba" / f))[..., ::-1].copy())
             for f in CELEBA_FILES]
    assert_matches_dlib(net, dlib_net, [chip for chip, _ in faces])
    cos = assert_chip_path_matches_identity(net, [face for _, face in faces])
    assert cos.mean() > 0.99 and cos.min() > 0.97, cos  # 197 CelebA faces: mean 0.9946, min 0.975
