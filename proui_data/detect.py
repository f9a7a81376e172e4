"""Face detection and 68-point landmarks that work offline on a fresh machine.

dlib's HOG frontal face detector and its 68-point shape predictor (iBUG 300-W scheme), with the weights that
the `face_recognition_models` package installs from the registry. Models load once per process (so once per
Dask worker) and are reused. When HOG finds nothing on a source whose frame is known (CelebA's aligned
images), the predictor is run in the source's expected face box: those images are aligned by construction.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels


class NoFace(Exception):
    """No usable face; the message is the reject reason."""


def dlib_models_dir() -> Path:
    """Folder of the dlib `.dat` weights: $PROUI_DLIB_MODELS, else the face_recognition_models package.

    The package's own helpers import pkg_resources, which recent setuptools no longer ships, so we only
    locate its files.
    """
    env = os.environ.get("PROUI_DLIB_MODELS")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "dlib weights not found: install the 'face_recognition_models' package "
            "(pip install face_recognition_models) or set PROUI_DLIB_MODELS to a folder with "
            "shape_predictor_68_face_landmarks.dat"
        )
    return Path(spec.origin).parent / "models"


@functools.lru_cache(maxsize=None)
def _dlib_models() -> tuple[object, object]:
    import dlib

    path = dlib_models_dir() / "shape_predictor_68_face_landmarks.dat"
    if not path.is_file():
        raise RuntimeError(f"missing dlib weights {path}")
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


@dataclass(frozen=True)
class Located:
    landmarks: np.ndarray  # (68,2) float64 in the given image's pixels
    source: str  # "dlib-hog" | "dlib-prior-box" | "dlib-given-box"
    n_faces: int


def predict_in_box(rgb: np.ndarray, box: Box) -> np.ndarray:
    """68 points from dlib's shape predictor inside a face box."""
    import dlib

    _, predictor = _dlib_models()
    rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])), int(round(box[3])))
    shape = predictor(rgb, rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def detect_faces(rgb: np.ndarray, upsample: int = 0) -> list[Box]:
    """HOG face boxes, largest first."""
    detector, _ = _dlib_models()
    rects = detector(rgb, upsample)
    boxes = [(r.left(), r.top(), r.right(), r.bottom()) for r in rects]
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def locate_face(rgb: np.ndarray, upsample: int = 0, prior_box: Box | None = None,
                given_box: Box | None = None) -> Located:
    """The largest face's 68 landmarks, trying: a given (annotated) box, HOG, the prior box. Raises NoFace."""
    if given_box is not None:
        return Located(predict_in_box(rgb, given_box), "dlib-given-box", 1)
    boxes = detect_faces(rgb, upsample)
    if boxes:
        return Located(predict_in_box(rgb, boxes[0]), "dlib-hog", len(boxes))
    if prior_box is not None:
        return Located(predict_in_box(rgb, prior_box), "dlib-prior-box", 0)
    raise NoFace("no_face")
