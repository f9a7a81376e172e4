"""Identity similarity: cosine of dlib's ResNet face descriptors (shipped offline in face_recognition_models).

Both images are aligned 128x128 faces in a known frame (a template of `proui_data.align`), so the 5-point
shape predictor runs in that template's face box and dlib cuts its own 150x150 chip from that.
"""
from __future__ import annotations

import functools

import numpy as np

from proui_data.align import TEMPLATE_BOX
from proui_data.detect import dlib_models_dir

# The cosine above which two faces count as one person: 1 % of different-person pairs of HR CelebA train faces
# score above it (`benchmarks/judge.py`, which prints it); a scale-free reading of `identity_similarity`.
VERIFY_THRESHOLD = 0.912


@functools.lru_cache(maxsize=None)
def _models():
    import dlib

    d = dlib_models_dir()
    return (dlib.shape_predictor(str(d / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(d / "dlib_face_recognition_resnet_model_v1.dat")))


def face_descriptor(face: np.ndarray, box: tuple[float, float, float, float] = TEMPLATE_BOX) -> np.ndarray:
    """(128,128,3) uint8 aligned face -> (128,) descriptor; `box`: the frame's face box (align.template_box)."""
    import dlib

    sp, net = _models()
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    shape = sp(np.ascontiguousarray(face), dlib.rectangle(x0, y0, x1, y1))
    return np.asarray(net.compute_face_descriptor(np.ascontiguousarray(face), shape), dtype=np.float64)


def identity_similarity(a: np.ndarray, b: np.ndarray, box: tuple[float, float, float, float] = TEMPLATE_BOX) -> float:
    """Cosine similarity of the descriptors of two faces aligned in the same frame (1 = same descriptor)."""
    da, db = face_descriptor(a, box), face_descriptor(b, box)
    return float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db) + 1e-12))
