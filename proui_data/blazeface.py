"""MediaPipe's BlazeFace full-range face detector, run on the CPU by LiteRT: a cheaper search than dlib's HOG.

The network (1 MB, proui_data/models, see its NOTICE) scores one anchor per 4x4 input pixels and regresses a box
per anchor. It was made for 192x192 inputs; it is convolutional but for three feature-pyramid upsamplings whose
output sizes are constants of the model, so `_model_for` rewrites those constants (in memory, the shipped file is
unchanged) and an input of any shape in multiples of STEP px gives the same boxes where it holds the same pixels
(tests/test_blazeface.py). `face_boxes` searches a photo so that the smallest face a build accepts is MIN_BOX px
(the network finds such faces 87 % of the time on Helen trainset, 24-px ones 95 %: benchmarks/landmarks.py
--min-box): each level is one input the size of the scaled photo, padded to STEP (cut into tiles overlapping by
OVERLAP beyond MAX_SIDE), coarser levels catch the larger faces, and the last is the whole photo at 192 px. On
the wild photos that is 1.9 input areas of 192x192 per photo where 192-px tiles took 2.6 inputs. Boxes come back
in the photo's pixels in the network's own framing; `detect` maps them onto HOG's (`detect.BOX_TO_HOG`) for
dlib's predictor.

LiteRT interpreters are not thread-safe: each thread gets its own, one per input shape (the CACHE most recent).
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import struct
import sys
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np

from .detect import Box, from_copy

INPUT = 192  # the network's native input side: the last level, the whole photo, fits it
STRIDE = 4  # one anchor per 4x4 input pixels
STEP = 64  # input sides are multiples of this (of the network's coarsest stride, 32; coarser: fewer shapes to keep)
MAX_SIDE = 384  # copies larger than this are cut into tiles of at most this side
MIN_BOX = 20.0  # face box side (input px) the search scales the smallest accepted face to
OVERLAP = 48  # tiles overlap this much: a face up to this size lies wholly inside one tile
SCORE = 0.5  # MediaPipe's own threshold on the sigmoid score
NMS_IOU = 0.3
CACHE = 16  # interpreters kept per thread, one per input shape (~12 MiB each)
MODEL_ENV = "PROUI_BLAZEFACE_MODEL"
MODEL = Path(__file__).parent / "models" / "face_detection_full_range.tflite"
# The feature pyramid upsamples with RESIZE_BILINEAR to sizes stored as constants for the 192x192 input (12, 24
# and 48 px: input / 16, 8, 4): those are rewritten for each input shape, the rest of the network is convolutional.
_RESIZES = {12: 16, 24: 8, 48: 4}

_per_thread = threading.local()
_stderr_lock = threading.Lock()


def model_path() -> Path:
    """The BlazeFace full-range model: $PROUI_BLAZEFACE_MODEL, else the copy shipped in proui_data/models."""
    return Path(os.environ.get(MODEL_ENV) or MODEL)


@functools.lru_cache(maxsize=None)
def _model_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def _model_for(height: int, width: int) -> bytes:
    """The model with its feature pyramid sized for a (height, width) input (multiples of STEP)."""
    path = model_path()
    if not path.is_file():
        raise RuntimeError(f"BlazeFace model not found at {path} (set {MODEL_ENV})")
    model = bytearray(_model_bytes(str(path)))
    at = {}
    for side in _RESIZES:
        # a constant buffer: its byte length (8), then the int32 (height, width) the upsampling produces
        old = struct.pack("<I2i", 8, side, side)
        at[side] = model.find(old)
        if at[side] < 0 or model.find(old, at[side] + 1) >= 0:
            raise RuntimeError(f"{path} is not the BlazeFace full-range model this search reads (its {side}x{side} "
                               "upsampling size is not found exactly once)")
    for side, stride in _RESIZES.items():
        model[at[side]:at[side] + 12] = struct.pack("<I2i", 8, height // stride, width // stride)
    return bytes(model)


def _interpreter(height: int, width: int) -> tuple[object, int, int, int]:
    """(this thread's interpreter for a (height, width) input, its input, regressor and classifier tensor indices);
    the CACHE most recently used shapes are kept."""
    cache = getattr(_per_thread, "blazeface", None)
    if cache is None:
        cache = _per_thread.blazeface = OrderedDict()
    if (height, width) in cache:
        cache.move_to_end((height, width))
        return cache[height, width]
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise RuntimeError("the BlazeFace search needs LiteRT: pip install ai-edge-litert") from e
    net = Interpreter(model_content=_model_for(height, width), num_threads=1)
    inp = net.get_input_details()[0]["index"]
    net.resize_tensor_input(inp, [1, height, width, 3])
    with _native_stderr_silenced():
        net.allocate_tensors()  # XNNPACK (2.5x the plain kernels' speed) logs its arrival here
    outputs = tuple(o["index"] for o in net.get_output_details())  # regressors, classifiers
    cache[height, width] = (net, inp, *outputs)
    if len(cache) > CACHE:
        cache.popitem(last=False)
    return cache[height, width]


@functools.lru_cache(maxsize=None)
def _anchors(height: int, width: int) -> np.ndarray:
    """(height/STRIDE * width/STRIDE, 2) anchor centres x, y in input px, row-major like the network's output."""
    ys, xs = np.mgrid[0:height // STRIDE, 0:width // STRIDE]
    return (np.stack([xs, ys], -1).reshape(-1, 2) + 0.5) * STRIDE


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """LiteRT's C++ core writes an INFO line to file descriptor 2 when it loads XNNPACK: keep it out of the
    command-line output (once per interpreter made; other threads' stderr waits on the lock or is dropped for that
    moment)."""
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


def _padded(side: int) -> int:
    return max(STEP, -(-side // STEP) * STEP)


def _run(tile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(boxes (k, 4) x0 y0 x1 y1 in the tile's pixels, scores (k,)) for a uint8 RGB tile, placed at the top-left
    corner of an input whose sides are the tile's rounded up to STEP (the rest is mid-grey)."""
    height, width = _padded(tile.shape[0]), _padded(tile.shape[1])
    net, inp, regressors, classifiers = _interpreter(height, width)
    x = np.zeros((1, height, width, 3), np.float32)
    x[0, :tile.shape[0], :tile.shape[1]] = tile / 127.5 - 1.0
    net.set_tensor(inp, x)
    net.invoke()
    raw = net.get_tensor(regressors)[0]  # (anchors, 16): centre offset, size, 6 keypoints; input px
    score = 1.0 / (1.0 + np.exp(-np.clip(net.get_tensor(classifiers)[0, :, 0], -100, 100)))
    k = np.flatnonzero(score >= SCORE)
    centre = raw[k, :2] + _anchors(height, width)[k]
    half = raw[k, 2:4] / 2
    return np.concatenate([centre - half, centre + half], 1), score[k]


def levels(height: int, width: int, min_face_box: float) -> list[float]:
    """Scales the photo is searched at, finest first: MIN_BOX / min_face_box, then each level the faces larger
    than OVERLAP at the one before need (tiles cut larger ones), and last the whole photo at INPUT px."""
    whole = INPUT / max(height, width)
    s, out = MIN_BOX / max(min_face_box, 1e-6), []
    while max(height, width) * s > INPUT:
        out.append(s)
        s *= MIN_BOX / OVERLAP
    return out + [whole]


def _tiles(size: int) -> tuple[list[int], int]:
    """(tile origins, tile side) along a side of `size` px: one tile when it is at most MAX_SIDE, else the fewest
    tiles of at most MAX_SIDE, evenly spread, neighbours overlapping by at least OVERLAP."""
    if size <= MAX_SIDE:
        return [0], size
    n = math.ceil((size - OVERLAP) / (MAX_SIDE - OVERLAP))
    side = min(MAX_SIDE, _padded(math.ceil((size + (n - 1) * OVERLAP) / n)))
    return [round(i * (size - side) / (n - 1)) for i in range(n)], side


def face_boxes(rgb: np.ndarray, min_face_box: float) -> list[tuple[Box, float]]:
    """(box in `rgb`'s pixels, score) of every face BlazeFace finds at `levels`, overlapping ones merged.

    `min_face_box`: the box side (in `rgb`'s pixels, HOG framing) of the smallest face the caller accepts.
    """
    import cv2

    h, w = rgb.shape[:2]
    boxes, scores = [], []
    copy = rgb
    for s in levels(h, w, min_face_box):
        size = (max(1, round(w * s)), max(1, round(h * s)))
        # each level is smaller than the one before: reduced from that copy, not from the whole photo again
        copy = cv2.resize(copy, size, interpolation=cv2.INTER_AREA if size[0] < copy.shape[1] else cv2.INTER_LINEAR)
        sx, sy = size[0] / w, size[1] / h
        (xs, tw), (ys, th) = _tiles(size[0]), _tiles(size[1])
        for y0 in ys:
            for x0 in xs:
                found, score = _run(copy[y0:y0 + th, x0:x0 + tw])
                # a face cut by an inner tile edge lies whole in the neighbouring tile (faces <= OVERLAP) or at a
                # coarser level: drop the cut copy
                inner = ((found[:, 0] < 1) & (x0 > 0)) | ((found[:, 1] < 1) & (y0 > 0)) | \
                        ((found[:, 2] > tw - 1) & (x0 + tw < size[0])) | \
                        ((found[:, 3] > th - 1) & (y0 + th < size[1]))
                boxes += [from_copy(b, sx, sy, x0, y0) for b in found[~inner]]
                scores += [float(sc) for sc in score[~inner]]
    return weighted_nms(np.array(boxes, np.float64).reshape(-1, 4), np.array(scores, np.float64))


def weighted_nms(boxes: np.ndarray, scores: np.ndarray) -> list[tuple[Box, float]]:
    """MediaPipe's own merge of the network's detections: the best box and every box overlapping it by IoU >
    NMS_IOU (neighbouring anchors and levels that saw the same face) become one box, their score-weighted mean,
    with the best score; then the next best box left, and so on."""
    out = []
    left = np.argsort(-scores, kind="stable")
    while left.size:
        best = boxes[left[0]]
        ix = np.clip(np.minimum(boxes[left, 2:], best[2:]) - np.maximum(boxes[left, :2], best[:2]), 0, None).prod(1)
        areas = (boxes[left, 2:] - boxes[left, :2]).prod(1)
        same = ix / (areas + (best[2:] - best[:2]).prod() - ix) > NMS_IOU
        same[0] = True
        w = scores[left[same]]
        out.append((tuple(float(v) for v in w @ boxes[left[same]] / w.sum()), float(scores[left[0]])))
        left = left[~same]
    return out
