"""The demo page (proui_train/demo.py): its request against `restore` called directly, the synthetic occluder
against the build's `occlude`, bad input, and the page served on 127.0.0.1 and called through gradio_client."""
from __future__ import annotations

import os
import socket
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from proui_data import align
from proui_data.decode import DEFAULT_MAX_SIDE
from proui_data.occlusion import KindWeights, occlude
from proui_train import FaceRestorer, restore
from proui_train.cli import main
from proui_train.demo import EXAMPLES, RELEASED, editor_photos, fit_photo, occlude_faces, restore_request
from proui_train.infer import strip
from proui_train.restore import HR_TO_LR, LR_SIZE, warp_to_lr

WEIGHTS = RELEASED[0]


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES[0]).convert("RGB"))  # astronaut.jpg: one face, eyes 44 px apart


@pytest.fixture(scope="module")
def restorer() -> FaceRestorer:
    return FaceRestorer(WEIGHTS, device="cpu", downscale=True)


@pytest.fixture(scope="module")
def faces(photo, restorer):
    return restorer.search(photo)


def test_request_is_restore(photo, restorer):
    """Without an occluder the page's request is `restore` on the same photo and model, to the pixel."""
    expected, records = restore(photo, WEIGHTS, downscale=True, device="cpu")
    r = restore_request(photo, restorer)
    assert len(r.faces) == len(records) == 1 and r.faces[0].status == "restored"
    assert np.array_equal(r.restored, expected) and np.array_equal(r.model_input, photo)
    assert r.message.startswith("1 of 1 face(s) restored.")


def test_synthetic_occluder_is_the_builds(photo, restorer, faces):
    """The occluder in the photo, seen in the template frame, is what `occlude` draws on the aligned face with the
    same draws; nothing outside the face's crop changes; the 16x16 input the model gets changes."""
    occluded = occlude_faces(photo, restorer, faces, "block", seed=3)
    assert np.array_equal(occluded, occlude_faces(photo, restorer, faces, "block", seed=3))
    assert not np.array_equal(occluded, occlude_faces(photo, restorer, faces, "block", seed=4))

    m = restorer.to_template(faces[0].landmarks)
    ref = occlude(align.warp_to_template(photo, m), align.apply_transform(m, faces[0].landmarks),
                  replace(restorer.recipe.occlusion, kinds=KindWeights(block=1.0)), np.random.default_rng(3))
    assert ref.kind == "block" and ref.ratio > 0.05
    core = cv2.erode(ref.mask, np.ones((5, 5), np.uint8)) == 255  # away from the edge the two resamplings blur
    back = align.warp_to_template(occluded, m).astype(int)
    assert core.sum() > 200
    assert np.abs(back[core] - ref.hr_occluded[core].astype(int)).mean() < 1.0
    assert np.abs(back[core] - align.warp_to_template(photo, m)[core].astype(int)).mean() > 20.0

    crop = cv2.warpAffine(np.full((128, 128), 255, np.uint8), cv2.invertAffineTransform(m), photo.shape[1::-1])
    changed = np.any(occluded != photo, axis=2)
    assert changed.any() and not (changed & (cv2.dilate(crop, np.ones((5, 5), np.uint8)) == 0)).any()
    lr = align.compose(HR_TO_LR, m)
    assert warp_to_lr(occluded, lr).shape == (LR_SIZE, LR_SIZE, 3)
    assert np.abs(warp_to_lr(occluded, lr).astype(int) - warp_to_lr(photo, lr)).max() > 30


def test_request_with_occluders(photo, restorer, faces):
    """A painted photo is the model's input with the faces of the unpainted one; a synthetic occluder goes on top."""
    painted = photo.copy()
    cv2.rectangle(painted, (180, 60), (260, 100), (0, 0, 0), -1)
    r = restore_request(photo, restorer, painted, "walk", seed=1)
    model_input = occlude_faces(painted, restorer, faces, "walk", seed=1)
    expected, records = restorer.restore(model_input, faces)
    assert np.array_equal(r.model_input, model_input) and np.array_equal(r.restored, expected)
    assert [f.status for f in r.faces] == [f.status for f in records] == ["restored"]


def test_bad_input(restorer):
    flat = np.full((200, 300, 3), 128, np.uint8)
    r = restore_request(flat, restorer)
    assert r.restored is None and r.faces == [] and r.message.startswith("No face found")
    bomb = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (9000, 8000, 3))  # 72 Mpx, no memory
    with pytest.raises(ValueError, match="8000x9000, more than the 64 Mpx"):
        fit_photo(bomb)
    wide = np.zeros((1000, 3 * DEFAULT_MAX_SIDE, 3), np.uint8)
    small, painted, note = fit_photo(wide)
    assert small.shape == (333, DEFAULT_MAX_SIDE, 3) and painted is None and "reduced to 2048x333" in note
    assert editor_photos(None) == (None, None)
    big = FaceRestorer(WEIGHTS, device="cpu", upscale=4)
    r = restore_request(np.full((1500, 1200, 3), 128, np.uint8), big)
    assert "Upscale x4 lowered to x2" in r.message and r.message.endswith("try a photo with a frontal face.")
    assert big.upscale == 4  # the caller's restorer is left as it was


def test_cli_without_gradio(monkeypatch):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    result = CliRunner().invoke(main, ["demo", "--checkpoint", str(WEIGHTS)])
    assert result.exit_code == 2
    assert "pip install 'proui[demo]'" in result.output and "Traceback" not in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The page on 127.0.0.1 (in this process, its own thread), closed after the module."""
    cache = tmp_path_factory.mktemp("gradio")
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    pytest.importorskip("gradio")
    client_mod = pytest.importorskip("gradio_client")
    from proui_train.demo import launch

    app = launch([str(p) for p in RELEASED], port=_free_port(), device="cpu", block=False)
    try:
        yield client_mod, client_mod.Client(app.local_url, verbose=False, download_files=str(cache / "client"))
    finally:
        app.close()
        if old is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = old


def _editor(client_mod, background, composite=None) -> dict:
    handle = client_mod.handle_file
    return {"background": handle(str(background)), "layers": [],
            "composite": handle(str(composite)) if composite else None, "id": None}


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_page_restores_through_gradio_client(served, tmp_path):
    """Two faces side by side, through the page: the restored photo (2x), the strips and the face count are
    `restore`'s on the same photo and model, to the pixel."""
    client_mod, client = served
    a, b = (_rgb(p) for p in EXAMPLES)
    pair = np.zeros((max(a.shape[0], b.shape[0]), a.shape[1] + b.shape[1], 3), np.uint8)
    pair[:a.shape[0], :a.shape[1]], pair[:b.shape[0], a.shape[1]:] = a, b
    Image.fromarray(pair).save(tmp_path / "pair.png")
    model_input, restored, strips, message = client.predict(
        _editor(client_mod, tmp_path / "pair.png"), RELEASED[-1].name, "none", 0, True, 2, api_name="/restore")
    expected, records = restore(pair, RELEASED[-1], downscale=True, upscale=2, device="cpu")
    assert len(records) == 2 and all(r.status == "restored" for r in records)
    assert _rgb(restored).shape == (2 * pair.shape[0], 2 * pair.shape[1], 3)
    assert np.array_equal(_rgb(restored), expected) and np.array_equal(_rgb(model_input), pair)
    assert np.array_equal(_rgb(strips), np.concatenate([strip(r) for r in records]))  # (2 x 128, 3 x 128)
    assert message.startswith("2 of 2 face(s) restored.")


def test_page_painted_and_no_face(served, photo, restorer, faces, tmp_path):
    client_mod, client = served
    painted = photo.copy()
    cv2.circle(painted, (220, 140), 30, (255, 255, 255), -1)
    Image.fromarray(painted).save(tmp_path / "painted.png")
    model_input, restored, strips, _ = client.predict(
        _editor(client_mod, EXAMPLES[0], tmp_path / "painted.png"), WEIGHTS.name, "none", 0, True, 1,
        api_name="/restore")
    assert np.array_equal(_rgb(model_input), painted)
    assert np.array_equal(_rgb(restored), restorer.restore(painted, faces)[0])

    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(tmp_path / "flat.png")
    model_input, restored, strips, message = client.predict(
        _editor(client_mod, tmp_path / "flat.png"), WEIGHTS.name, "random", 0, True, 1, api_name="/restore")
    assert restored is None and strips is None and message.startswith("No face found")
