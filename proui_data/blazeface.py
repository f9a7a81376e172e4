"""MediaPipe's BlazeFace full-range face detector, run on the CPU by LiteRT: a cheaper search than dlib's HOG.

The network (1 MB, proui_data/models, see its NOTICE) scores a 48x48 grid of anchors on a 192x192 RGB image and
regresses a box per anchor. It finds faces whose box is 20 px at that input in 88 % of Helen trainset faces, 24 px
in 96 % (`MIN_BOX`; benchmarks/landmarks.py --calibrate measures it). `face_boxes` searches a photo so that the
smallest face a build accepts is MIN_BOX px: the whole photo letterboxed into one 192-px input when that is
enough (a photo of up to ~470 px for the folder recipe's 20.6-px eyes), else 192-px tiles of a scaled copy plus
coarser levels for the faces larger than the tiles' overlap. Boxes come back in the photo's pixels in the
network's own framing; `detect` maps them onto HOG's (`detect.BOX_TO_HOG`) for dlib's predictor.

LiteRT interpreters are not thread-safe: each thread gets its own (loaded once per thread).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from .detect import Box, from_copy

INPUT = 192  # the network's input side
GRID = 48  # anchors per side, one per 4x4 input pixels
MIN_BOX = 20.0  # face box side (input px) the search scales the smallest accepted face to
OVERLAP = 48  # tiles overlap this much: a face up to this size lies wholly inside one tile
SCORE = 0.5  # MediaPipe's own threshold on the sigmoid score
NMS_IOU = 0.3
MODEL_ENV = "PROUI_BLAZEFACE_MODEL"
MODEL = Path(__file__).parent / "models" / "face_detection_full_range.tflite"

_per_thread = threading.local()
_stderr_lock = threading.Lock()
_ANCHORS = (np.stack(np.meshgrid(np.arange(GRID), np.arange(GRID)), -1).reshape(-1, 2) + 0.5) / GRID  # (2304, 2) x, y


def model_path() -> Path:
    """The BlazeFace full-range model: $PROUI_BLAZEFACE_MODEL, else the copy shipped in proui_data/models."""
    return Path(os.environ.get(MODEL_ENV) or MODEL)


def _interpreter() -> tuple[object, int, int, int]:
    """(this thread's interpreter, its input, regressor and classifier tensor indices)."""
    if not hasattr(_per_thread, "blazeface"):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise RuntimeError("the BlazeFace search needs LiteRT: pip install ai-edge-litert") from e
        path = model_path()
        if not path.is_file():
            raise RuntimeError(f"BlazeFace model not found at {path} (set {MODEL_ENV})")
        net = Interpreter(model_path=str(path), num_threads=1)
        with _native_stderr_silenced():
            net.allocate_tensors()  # XNNPACK (2.5x the plain kernels' speed) logs its arrival here
        outputs = tuple(o["index"] for o in net.get_output_details())  # regressors, classifiers
        _per_thread.blazeface = (net, net.get_input_details()[0]["index"], *outputs)
    return _per_thread.blazeface


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """LiteRT's C++ core writes an INFO line to file descriptor 2 when it loads XNNPACK: keep it out of the
    command-line output (once per thread; other threads' stderr waits on the lock or is dropped for that moment)."""
    with _stderr_lock:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(devnull)
            os.close(saved)


def _run(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (k, 4) x0 y0 x1 y1 in the tile's pixels, scores (k,)) for a uint8 RGB tile of at most 192x192,
    placed at the input's top-left corner (the rest is mid-grey)."""
    net, inp, regressors, classifiers = _interpreter()
    x = np.zeros((1, INPUT, INPUT, 3), np.float32)
    x[0, :tile.shape[0], :tile.shape[1]] = tile / 127.5 - 1.0
    net.set_tensor(inp, x)
    net.invoke()
    raw = net.get_tensor(regressors)[0]  # (2304, 16): centre offset, size, 6 keypoints; input px
    score = 1.0 / (1.0 + np.exp(-np.clip(net.get_tensor(classifiers)[0, :, 0], -100, 100)))
    k = np.flatnonzero(score >= SCORE)
    centre = raw[k, :2] + _ANCHORS[k] * INPUT
    half = raw[k, 2:4] / 2
    return np.concatenate([centre - half, centre + half], 1), score[k]


def levels(height: int, width: int, min_face_box: float) -> list[float]:
    """Scales the photo is searched at, finest first: tiles at MIN_BOX / min_face_box, then each level the
    faces larger than OVERLAP at the one before need, and last the whole photo letterboxed into one input."""
    whole = INPUT / max(height, width)
    s, out = MIN_BOX / max(min_face_box, 1e-6), []
    while max(height, width) * s > INPUT:
        out.append(s)
        s *= MIN_BOX / OVERLAP
    return out + [whole]


def _tile_starts(size: int) -> list[int]:
    """Tile origins along a side of `size` px: evenly spread, neighbours overlapping by at least OVERLAP."""
    if size <= INPUT:
        return [0]
    n = math.ceil((size - OVERLAP) / (INPUT - OVERLAP))
    return [round(i * (size - INPUT) / (n - 1)) for i in range(n)]


def face_boxes(rgb: np.ndarray, min_face_box: float) -> list[tuple[Box, float]]:
    """(box in `rgb`'s pixels, score) of every face BlazeFace finds at `levels`, overlapping ones merged.

    `min_face_box`: the box side (in `rgb`'s pixels, HOG framing) of the smallest face the caller accepts.
    """
    import cv2

    h, w = rgb.shape[:2]
    boxes, scores = [], []
    for s in levels(h, w, min_face_box):
        size = (max(1, round(w * s)), max(1, round(h * s)))
        copy = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        sx, sy = size[0] / w, size[1] / h
        xs, ys = _tile_starts(size[0]), _tile_starts(size[1])
        for y0 in ys:
            for x0 in xs:
                found, score = _run(copy[y0:y0 + INPUT, x0:x0 + INPUT])
                # a face cut by an inner tile edge lies whole in the neighbouring tile (faces <= OVERLAP) or at a
                # coarser level: drop the cut copy
                inner = ((found[:, 0] < 1) & (x0 > 0)) | ((found[:, 1] < 1) & (y0 > 0)) | \
                        ((found[:, 2] > INPUT - 1) & (x0 + INPUT < size[0])) | \
                        ((found[:, 3] > INPUT - 1) & (y0 + INPUT < size[1]))
                boxes += [from_copy(b, sx, sy, x0, y0) for b in found[~inner]]
                scores += [float(sc) for sc in score[~inner]]
    if not boxes:
        return []
    keep = cv2.dnn.NMSBoxes([[b[0], b[1], b[2] - b[0], b[3] - b[1]] for b in boxes], scores, SCORE, NMS_IOU)
    return [(tuple(float(v) for v in boxes[i]), scores[i]) for i in np.asarray(keep).ravel()]
