"""BlazeFace (proui_data.blazeface): the folder recipe's first face search, on copies where the smallest
accepted face is its minimum size, tiled when the photo is large."""
from __future__ import annotations

import dataclasses
import threading

import cv2
import numpy as np
import pytest

from proui_data import blazeface, detect

from fixtures import demo_photo, write_jpeg

MIN_FACE = detect.HOG_BOX_PER_EYE * 20.6  # the folder recipe's smallest face: eyes 20.6 px apart


def hopper_on_grey() -> np.ndarray:
    """A 700x900 grey photo with the Grace Hopper demo photo at (300, 100): one face, large enough to find."""
    canvas = np.full((700, 900, 3), 110, np.uint8)
    hopper = demo_photo("grace_hopper.jpg")
    canvas[100:100 + hopper.shape[0], 300:300 + hopper.shape[1]] = hopper
    return canvas


def spy_decode_widths(monkeypatch, search) -> list[int]:
    """The widths of the images `search` decodes from now on, in order."""
    from proui_data import decode

    widths: list[int] = []
    real = decode.decode_image

    def spy(*args, **kwargs):
        decoded = real(*args, **kwargs)
        widths.append(decoded.rgb.shape[1])
        return decoded
    monkeypatch.setattr(search, "decode_image", spy)
    return widths


def in_thread(fn):
    """fn() on a fresh thread (its own interpreter cache); returns its result or raises its exception."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_finds_the_demo_faces_where_hog_does_and_not_the_badge():
    for name in ("astronaut.jpg", "grace_hopper.jpg"):
        rgb = demo_photo(name)
        found = blazeface.face_boxes(rgb, MIN_FACE)
        assert len(found) == 1 and found[0][1] > 0.8  # one face: the astronaut's badge is not one
        hog = detect.hog_boxes(rgb)[0]
        assert detect.box_iou(detect.to_hog_frame(found[0][0], "blazeface"), hog) > 0.7  # calibrated onto HOG's framing
        hit = detect.detect(rgb, 0, False, detect.search_scale(20.6), blazeface=True)
        assert hit.stage == "blazeface" and len(hit.boxes) == 1 and hit.scores[0] == found[0][1]
    for blank in (np.full((300, 400, 3), 90, np.uint8), np.random.default_rng(0).integers(0, 256, (400, 400, 3),
                                                                                          dtype=np.uint8)):
        assert blazeface.face_boxes(blank, MIN_FACE) == []
        assert detect.detect(blank, 0, False, detect.search_scale(20.6), blazeface=True) is None


def test_levels_and_tiles():
    # a photo that fits the input at the floor's scale: the whole photo once, letterboxed (at a larger scale)
    assert blazeface.levels(400, 300, MIN_FACE) == [192 / 400]
    # a 500 px photo needs the floor's scale (20 px faces) in tiles, then the whole photo for the larger faces
    s0 = blazeface.MIN_BOX / MIN_FACE
    assert blazeface.levels(400, 500, MIN_FACE) == [pytest.approx(s0), 192 / 500]
    big = blazeface.levels(3744, 5616, MIN_FACE)
    assert big[0] == pytest.approx(s0) and big[-1] == 192 / 5616
    for finer, coarser in zip(big, big[1:-1]):  # a face larger than the tiles' overlap is >= MIN_BOX one level up
        assert coarser == pytest.approx(finer * blazeface.MIN_BOX / blazeface.OVERLAP)
    assert blazeface._tiles(300) == ([0], 300)  # one tile, the input rounded up to STEP around it
    for size in (385, 500, 700, 2275):
        starts, side = blazeface._tiles(size)
        assert starts[0] == 0 and starts[-1] + side == size and side <= blazeface.MAX_SIDE
        assert side % blazeface.STEP == 0 and len(starts) == -(-(size - blazeface.OVERLAP) //
                                                                (blazeface.MAX_SIDE - blazeface.OVERLAP))
        assert all(b - a <= side - blazeface.OVERLAP for a, b in zip(starts, starts[1:]))


def test_an_input_of_any_shape_finds_what_the_native_192_input_finds():
    """The network's upsampling sizes are rewritten for each input shape (multiples of STEP): a face in a 192x192
    input and in wider or taller ones, moved by whole anchor cells, gets the same box and score."""
    hopper = demo_photo("grace_hopper.jpg")
    f = 150 / max(hopper.shape[:2])
    face = cv2.resize(hopper, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)  # 150 px: box ~60 px
    ref_box, ref_score = blazeface._run(face)  # padded to 192x192, the model as shipped
    assert len(ref_score) >= 1
    for h, w, y, x in ((192, 320, 0, 128), (256, 384, 64, 0), (384, 192, 128, 20)):
        canvas = np.full((h, w, 3), 127, np.uint8)  # 127.5 would be the padding's exact grey
        canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
        box, score = blazeface._run(canvas)
        best = np.argmax(score)
        shifted = box[best] - [x, y, x, y]
        assert detect.box_iou(shifted, ref_box[np.argmax(ref_score)]) > 0.95
        assert abs(score[best] - ref_score.max()) < 0.03


def test_small_faces_in_a_large_photo_are_found_once_across_tiles():
    """Grace Hopper shrunk to just above the floor (box ~60 px) at tile seams of a 1600x1200 photo, and the
    astronaut at full size (box ~88 px, found at a coarser level): each face is one box, where it was put."""
    canvas = np.full((1200, 1600, 3), 120, np.uint8)
    hopper = demo_photo("grace_hopper.jpg")
    box = detect.hog_boxes(hopper)[0]
    f = 60 / (box[2] - box[0])
    small = cv2.resize(hopper, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    s0 = blazeface.MIN_BOX / MIN_FACE
    seam = blazeface._tiles(round(1600 * s0))[0][1] / s0  # where the second tile starts, in photo px
    places = [(int(seam - box[0] * f - 30), 100), (300, 700)]
    expected = []
    for x, y in places:
        canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
        expected.append((x + box[0] * f, y + box[1] * f, x + box[2] * f, y + box[3] * f))
    astronaut = demo_photo("astronaut.jpg")
    canvas[600:1112, 1000:1512] = astronaut
    a = detect.hog_boxes(astronaut)[0]
    expected.append((a[0] + 1000, a[1] + 600, a[2] + 1000, a[3] + 600))
    found = [detect.to_hog_frame(b, "blazeface") for b, _ in blazeface.face_boxes(canvas, MIN_FACE)]
    assert len(found) == 3
    for e in expected:
        assert max(detect.box_iou(e, b) for b in found) > 0.6


def test_threads_get_their_own_interpreter_and_the_same_answers():
    rgb = demo_photo("grace_hopper.jpg")
    ref = blazeface.face_boxes(rgb, MIN_FACE)
    results = [None] * 4

    def work(i):
        results[i] = [blazeface.face_boxes(rgb, MIN_FACE) for _ in range(3)]
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r == [ref] * 3 for r in results)


def test_clear_errors_without_the_model_or_the_runtime(monkeypatch, tmp_path):
    rgb = demo_photo("grace_hopper.jpg")
    monkeypatch.setenv(blazeface.MODEL_ENV, str(tmp_path / "missing.tflite"))
    with pytest.raises(RuntimeError, match="BlazeFace model not found at .*missing.tflite"):
        in_thread(lambda: blazeface.face_boxes(rgb, MIN_FACE))
    other = tmp_path / "other.tflite"
    other.write_bytes(b"\0" * 4096)
    monkeypatch.setenv(blazeface.MODEL_ENV, str(other))
    with pytest.raises(RuntimeError, match="not the BlazeFace full-range model"):
        in_thread(lambda: blazeface.face_boxes(rgb, MIN_FACE))
    monkeypatch.delenv(blazeface.MODEL_ENV)
    monkeypatch.setitem(__import__("sys").modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(RuntimeError, match="pip install ai-edge-litert"):
        in_thread(lambda: blazeface.face_boxes(rgb, MIN_FACE))
    assert blazeface.model_path() == blazeface.MODEL and blazeface.MODEL.is_file()


def test_the_folder_search_reads_a_reduced_decode_and_gives_full_size_boxes(tmp_path, monkeypatch):
    """`search.search_photo`: BlazeFace searches the JPEG decoded at 1/2 (DCT scaling), its boxes come back in a
    full decode's pixels, close to a search of the full decode; a photo where it finds no face is decoded in full
    for HOG, which searches it alone (BlazeFace does not search the same photo again at the same scales)."""
    from proui_data import decode, search
    from proui_data.recipe import load_recipe

    canvas = hopper_on_grey()
    write_jpeg(tmp_path / "x.jpg", canvas)
    write_jpeg(tmp_path / "blank.jpg", np.full((700, 900, 3), 110, np.uint8))
    recipe = load_recipe(None, "folder")
    real = decode.decode_image
    widths = spy_decode_widths(monkeypatch, search)
    found, kept, s = search.search_photo((tmp_path / "x.jpg").read_bytes(), recipe)
    assert widths == [450] and s == 1.0  # 1/2 keeps the finest copy (0.405 of the photo): one reduced decode
    assert found.stage == "blazeface" and kept == found.boxes and len(kept) == 1
    full = real((tmp_path / "x.jpg").read_bytes())
    ref = detect.detect(full.rgb, 0, False, search.detect_scale(recipe), blazeface=True)
    assert detect.box_iou(found.boxes[0], ref.boxes[0]) > 0.9
    widths.clear()
    searched = []
    monkeypatch.setattr(blazeface, "face_boxes", lambda rgb, box: searched.append(rgb.shape[1]) or [])
    assert search.search_photo((tmp_path / "blank.jpg").read_bytes(), recipe) == (None, [], 1.0)
    assert widths == [450, 900]  # no face at 1/2: HOG searched the full decode
    assert searched == [450]


def test_on_a_reduced_decode_blazeface_searches_down_to_the_floor(tmp_path, monkeypatch):
    """The smallest face BlazeFace looks for in the 1/2 decode is the floor's (eyes 20.6 px apart in the photo: a
    box of 2.4 x 20.6 / 2 px there), not the one HOG's capped scale stands for (2x at most: 30 px, 1.2x the floor)."""
    from proui_data import search
    from proui_data.recipe import load_recipe

    write_jpeg(tmp_path / "blank.jpg", np.full((700, 900, 3), 110, np.uint8))
    asked = []
    monkeypatch.setattr(blazeface, "face_boxes", lambda rgb, box: asked.append((rgb.shape[1], box)) or [])
    search.search_photo((tmp_path / "blank.jpg").read_bytes(), load_recipe(None, "folder"))
    assert asked == [(450, pytest.approx(detect.HOG_BOX_PER_EYE * 20.6 / 2))]


def test_the_floor_search_finds_the_people_beside_helens_annotated_face(shared_data):
    """Helen photos where the search at the floor finds a second, real person that HOG's capped scale, which
    left the 512-px photos to the whole-photo 192-px level, missed (the one beside her; the boy in the film strip
    below him)."""
    from proui_data import search
    from proui_data.recipe import load_recipe

    recipe = load_recipe(None, "folder")
    for name in ("19618587_1.jpg", "118736733_2.jpg"):
        data = (shared_data / "300w" / "helen" / "trainset" / name).read_bytes()
        _, faces = search.photo_faces(data, recipe)
        eyes = [np.linalg.norm(f.landmarks[36:42].mean(0) - f.landmarks[42:48].mean(0)) for f in faces]
        assert len(faces) == 2 and min(eyes) > 60, (name, eyes)
        assert detect.box_iou(faces[0].box, faces[1].box) == 0


def test_a_search_given_the_full_decode_decodes_only_a_jpegs_reduced_copy(tmp_path, monkeypatch):
    """`search_photo(data, recipe, full)`: where the search's decode would be the full decode's pixels (a PNG, a
    photo reduced to `decode.max_side`) it searches `full` instead of decoding again; a JPEG's 1/2 copy is still
    decoded (the pixels the detection pass searches); the faces found are the same either way."""
    from proui_data import decode, search
    from proui_data.recipe import load_recipe

    canvas = hopper_on_grey()
    write_jpeg(tmp_path / "x.jpg", canvas)
    cv2.imwrite(str(tmp_path / "x.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    recipe = load_recipe(None, "folder")
    real = decode.decode_image
    widths = spy_decode_widths(monkeypatch, search)
    for name, max_side, decoded in (("x.png", 2048, []), ("x.jpg", 2048, [450]), ("x.jpg", 600, [])):
        recipe_at = recipe.replace(decode=dataclasses.replace(recipe.decode, max_side=max_side))
        data = (tmp_path / name).read_bytes()
        widths.clear()
        alone = search.search_photo(data, recipe_at)
        assert len(widths) == 1
        widths.clear()
        given = search.search_photo(data, recipe_at, real(data, max_side=max_side))
        assert widths == decoded, name
        assert given == alone and alone[0].stage == "blazeface", name
