"""Face detection and 68-point landmarks that work offline on a fresh machine.

The offline default is dlib's 68-point shape predictor (iBUG 300-W scheme) with the weights that the
`face_recognition_models` package installs from the registry. Its face box comes from a fallback chain,
each stage tried only when the ones before found nothing:

  blazeface      (search = "blazeface") MediaPipe's BlazeFace CNN (proui_data.blazeface), searching copies
                 where the smallest accepted face is its minimum size: a quarter of the CPU of the min-face HOG
                 search on the wild photos (6.5 vs 26.9 ms in a build), and it finds more faces
  dlib-hog       HOG frontal detector at the recipe's upsample level, or (search = "min-face" and after a
                 BlazeFace miss) on a copy scaled so that the smallest accepted face just fills HOG's window
                 (`search_scale`)
  dlib-hog-rechecked  (recipe `detect.recheck`) the best box HOG scored just under its threshold, kept when HOG
                 scores the face a face once it is aligned upright (`confirmed`); costs nothing when HOG
                 found a face
  dlib-hog-upN   HOG one pyramid level up (N = upsample + 1), only on small images (not with "min-face":
                 its copy already reaches the smallest accepted face)
  dlib-mmod      dlib's MMOD CNN detector on a reduced image (about 1 s on one core, so only for misses)
  opencv-haar    OpenCV's frontal Haar cascade, where the OpenCV build ships it (OpenCV 5 wheels do not)
  dlib-prior-box the source's expected face box (aligned sources such as CelebA)

The predictor was trained on HOG boxes, so MMOD and Haar boxes are mapped to HOG framing first
(`BOX_TO_HOG`, measured on Helen trainset by `benchmarks/landmarks.py --calibrate`). The largest face wins
(among confident detections, see RELATIVE_SCORE); with the recipe's `detect.faces = "all"` the build keeps every
confident box, in that order (`Detection.faces`), and with `detect.recheck` also the weak ones that `confirmed`
passes (`faces_kept`): in group photos those are mostly real faces of the people behind.
The `face-alignment` backend (proui_data.fan, a 2D FAN) takes its boxes from the same chain.
Models load once per process (so once per Dask worker) and are reused; dlib's detectors are not
thread-safe (the HOG one releases the GIL), so each thread gets its own detector instances.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .fan import landmarker
from .schema import HR_SIZE

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels

# A HOG miss is retried one pyramid level up only when the upsampled image stays this small (cost ~4x).
UPSAMPLE_MAX_SIDE = 1024
# MMOD runs on the image reduced to this long side (1-2 s on one core). It needs faces of ~50-60 px at that
# size, so this stage misses faces under about a sixth of the photo's long side (HOG's stages cover those).
MMOD_MAX_SIDE = 384
# Box (centre shift dx, dy in box widths; size factor) that turns a stage's box into the HOG box of the same
# face: medians over faces both detectors found on Helen trainset (benchmarks/landmarks.py --calibrate).
# MMOD (at MMOD_MAX_SIDE): 429 faces of the first 400 photos; on photos 400-519 it lowers the predictor's NME
# on MMOD boxes from 0.0363 (raw) to 0.0293 (HOG boxes: 0.0279). Haar: 314 faces of the first 360,
# measured with an OpenCV 4.14 wheel (OpenCV 5 has no cascades). Both frame faces higher than HOG does.
# BlazeFace (searched as the folder recipe does, reduced decode and weighted merge): 943 faces of Helen trainset;
# the predictor in its mapped boxes gives NME 0.0269 on Helen test (largest face) against 0.0257 in HOG's own
# (benchmarks/landmarks.py --compare).
BOX_TO_HOG = {
    "dlib-mmod": (0.0451, 0.0694, 0.9871),
    "opencv-haar": (0.0063, 0.0724, 0.8905),
    "blazeface": (-0.0037, 0.0133, 0.9207),
}
# dlib's frontal HOG detector scans an 80x80 window; the face box it reports is HOG_BOX_PER_EYE x the eye-centre
# distance (median over 379 Helen-test and 190 wild faces, IQR 2.25-2.6) and reliably at least HOG_MIN_BOX px:
# of the 19 faces with eyes 20.6-30 px apart that HOG one level up finds in Helen test + wild, a copy at scale 1.2
# (smallest box ~59 px) misses none, at scale 1.0 two (measured with benchmarks/landmarks.py's photos).
HOG_MIN_BOX = 60
HOG_BOX_PER_EYE = 2.4
# The "min-face" search never enlarges more than HOG one pyramid level up (upsample = 1) would.
MAX_SEARCH_SCALE = 2.0
# The largest face wins among detections (HOG, MMOD) scoring at least this fraction of the best one: keeps weak
# false positives (a patch on a suit) from beating a real face; on Helen trainset it picks the annotated
# face in 812 of 844 photos (largest alone: 807).
RELATIVE_SCORE = 0.25
# HOG boxes scoring in [LOW_SCORE, 0) are recheck candidates (dlib's own threshold is 0). On Helen trainset 29 of
# 870 photos have no box >= 0; in 27 of them the best box >= LOW_SCORE is the annotated face, in none a wrong one.
LOW_SCORE = -0.5
# The recheck runs HOG on the face aligned to the template at this scale: its box (~66 px at 128) becomes ~130 px,
# well inside what HOG finds. A box passes when HOG finds a face there (IoU >= RECHECK_IOU with the template's
# face box) scoring >= 0 and at least RECHECK_GAIN more than in the photo. Helen trainset: 22 of those 27 faces
# pass; of 870 photos with every face we could find painted over, the clutter boxes >= LOW_SCORE (23) pass in
# none but two, both faces the painting missed; of the 28 boxes the largest-face rule ranks weak (all but one
# real faces, mostly people behind or cut by the photo's edge), 17 pass.
RECHECK_SCALE = 2.0
RECHECK_IOU = 0.4
RECHECK_GAIN = 0.1


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


def _dlib_file(name: str) -> str:
    path = dlib_models_dir() / name
    if not path.is_file():
        raise RuntimeError(f"missing dlib weights {path}")
    return str(path)


_per_thread = threading.local()
_haar_lock = threading.Lock()  # one CascadeClassifier serves every thread; OpenCV does not promise it is reentrant


@functools.lru_cache(maxsize=None)
def _predictor() -> object:
    import dlib

    # shape_predictor is read-only at inference, so one instance serves all threads
    return dlib.shape_predictor(_dlib_file("shape_predictor_68_face_landmarks.dat"))


def _dlib_models() -> tuple[object, object]:
    """(this thread's HOG detector, the shared 68-point predictor)."""
    import dlib

    if not hasattr(_per_thread, "hog"):
        _per_thread.hog = dlib.get_frontal_face_detector()
    return _per_thread.hog, _predictor()


def _mmod() -> object:
    import dlib

    if not hasattr(_per_thread, "mmod"):
        _per_thread.mmod = dlib.cnn_face_detection_model_v1(_dlib_file("mmod_human_face_detector.dat"))
    return _per_thread.mmod


def haar_cascade_path() -> Path | None:
    """OpenCV's frontal face cascade: $PROUI_HAAR_CASCADE, else the one the OpenCV wheel ships (if any)."""
    env = os.environ.get("PROUI_HAAR_CASCADE")
    if env:
        return Path(env)
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder or "") / "haarcascade_frontalface_default.xml"
    return path if folder and path.is_file() else None


@functools.lru_cache(maxsize=None)
def _haar() -> object | None:
    import cv2

    path = haar_cascade_path()
    # OpenCV 5 dropped CascadeClassifier from the main modules along with the bundled cascades.
    if path is None or not hasattr(cv2, "CascadeClassifier"):
        return None
    cascade = cv2.CascadeClassifier(str(path))
    return None if cascade.empty() else cascade


@dataclass(frozen=True)
class Located:
    landmarks: np.ndarray  # (68,2) float64 in the given image's pixels
    source: str  # the stage that found the box, e.g. "dlib-hog", "dlib-mmod", "fan+dlib-hog", "dlib-given-box"
    n_faces: int
    box: Box | None = None  # the HOG-framed box the landmarks were predicted in


@dataclass(frozen=True)
class Detection:
    boxes: list[Box]  # HOG-framed, largest first
    stage: str  # which chain stage found them
    confident: int | None = None  # the first `confident` boxes score >= RELATIVE_SCORE x the best; None: all
    scores: tuple[float, ...] | None = None  # the stage's score of each box (HOG's margin, BlazeFace's probability)

    def faces(self) -> list[Box]:
        """Every confident face, largest first (what a `detect.faces = "all"` build keeps): the boxes that
        could win the largest-face choice, not the weak ones ranked after them (a patch on a suit)."""
        return self.boxes if self.confident is None else self.boxes[:self.confident]


def _checked(rgb: np.ndarray) -> np.ndarray:
    """The image as dlib needs it (C-contiguous uint8 HxWx3), or a clear error."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        got = f"{rgb.dtype} array of shape {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {got}")
    return np.ascontiguousarray(rgb)


def _area(b: Box) -> float:
    return (b[2] - b[0]) * (b[3] - b[1])


def _ranked(boxes: list[Box], scores: Sequence[float] | None = None) -> tuple[list[Box], int]:
    """(boxes largest first but those scoring under RELATIVE_SCORE x the best score after all the others,
    how many lead that are not such weak ones)."""
    if scores is None or not len(boxes):
        return sorted(boxes, key=lambda b: -_area(b)), len(boxes)
    top = max(scores)
    ranked = sorted(((s < RELATIVE_SCORE * top, -_area(b), b) for b, s in zip(boxes, scores)), key=lambda t: t[:2])
    return [b for _, _, b in ranked], sum(not weak for weak, _, _ in ranked)


def _largest_first(boxes: list[Box], scores: Sequence[float] | None = None) -> list[Box]:
    """Largest first, but boxes scoring under RELATIVE_SCORE x the best score go after all the others."""
    return _ranked(boxes, scores)[0]


def to_hog_frame(box: Box, stage: str) -> Box:
    """A stage's raw box mapped to the framing of a dlib HOG box of the same face."""
    if stage not in BOX_TO_HOG:
        return box
    dx, dy, s = BOX_TO_HOG[stage]
    w, h = box[2] - box[0], box[3] - box[1]
    cx, cy = (box[0] + box[2]) / 2 + dx * w, (box[1] + box[3]) / 2 + dy * w
    return (cx - s * w / 2, cy - s * h / 2, cx + s * w / 2, cy + s * h / 2)


def from_copy(box: Sequence[float], sx: float, sy: float, x0: float = 0.0, y0: float = 0.0) -> Box:
    """A box found on a copy resized by (sx, sy), at (x0, y0) of that copy (a tile's origin), in the original's
    pixels: pixel centres map as x_copy = s * x + (s - 1) / 2."""
    return ((box[0] + x0 - (sx - 1) / 2) / sx, (box[1] + y0 - (sy - 1) / 2) / sy,
            (box[2] + x0 - (sx - 1) / 2) / sx, (box[3] + y0 - (sy - 1) / 2) / sy)


def to_copy(box: Sequence[float], s: float) -> Box:
    """A box of the original in the pixels of a copy resized by `s` (the inverse of `from_copy`)."""
    return tuple(v * s + (s - 1) / 2 for v in box)


def hog_boxes(rgb: np.ndarray, upsample: int = 0) -> list[Box]:
    """dlib HOG face boxes, largest first."""
    return _hog(rgb, upsample)[0]


def _hog(rgb: np.ndarray, upsample: int) -> tuple[list[Box], int]:
    return _rank(_hog_scored(rgb, upsample))


def _rank(scored: list[tuple[Box, float]]) -> tuple[list[Box], int]:
    return _ranked([b for b, _ in scored], [s for _, s in scored])


def _hog_scored(rgb: np.ndarray, upsample: int = 0, scale: float | None = None,
                threshold: float = 0.0) -> list[tuple[Box, float]]:
    """(box in `rgb`'s pixels, HOG score) of every detection scoring >= `threshold`, found at `upsample` pyramid
    levels or, with `scale`, on a copy resized by it."""
    import cv2

    rgb = _checked(rgb)
    if scale is not None and abs(scale - 1.0) < 1e-6:
        scale = None
    if scale is None:
        copy, sx, sy = rgb, 1.0, 1.0
    else:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        copy = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=interpolation)
        sx, sy = copy.shape[1] / rgb.shape[1], copy.shape[0] / rgb.shape[0]  # exact, after rounding the size
    detector, _ = _dlib_models()
    rects, scores, _ = detector.run(copy, 0 if scale is not None else upsample, threshold)
    return [(from_copy((r.left(), r.top(), r.right(), r.bottom()), sx, sy), float(score))
            for r, score in zip(rects, scores)]


def search_scale(min_eye_distance: float) -> float:
    """Scale of the copy HOG searches so that a face with eyes `min_eye_distance` px apart fills its window
    (below 1 for large faces: a reduced copy)."""
    if min_eye_distance <= 0:
        return MAX_SEARCH_SCALE
    return min(MAX_SEARCH_SCALE, HOG_MIN_BOX / (HOG_BOX_PER_EYE * min_eye_distance))


def hog_boxes_scaled(rgb: np.ndarray, scale: float) -> list[Box]:
    """dlib HOG face boxes found on a copy of `rgb` resized by `scale`, in `rgb`'s pixels, largest first."""
    return _hog_scaled(rgb, scale)[0]


def _hog_scaled(rgb: np.ndarray, scale: float) -> tuple[list[Box], int]:
    return _rank(_hog_scored(rgb, scale=scale))


def mmod_boxes(rgb: np.ndarray, max_side: int = MMOD_MAX_SIDE) -> list[Box]:
    """dlib MMOD CNN face boxes (raw framing, in `rgb`'s pixels), largest first; run on a reduced copy."""
    return _mmod_ranked(rgb, max_side)[0]


def _mmod_ranked(rgb: np.ndarray, max_side: int = MMOD_MAX_SIDE) -> tuple[list[Box], int]:
    import cv2

    rgb = _checked(rgb)
    s = min(1.0, max_side / max(rgb.shape[:2]))
    small = cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA) if s < 1 else rgb
    found = _mmod()(_checked(small), 0)
    return _ranked([from_copy((d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()), s, s) for d in found],
                   [d.confidence for d in found])


def haar_boxes(rgb: np.ndarray) -> list[Box] | None:
    """OpenCV Haar frontal face boxes (raw framing), largest first; None when OpenCV has no cascade."""
    import cv2

    cascade = _haar()
    if cascade is None:
        return None
    gray = cv2.cvtColor(_checked(rgb), cv2.COLOR_RGB2GRAY)
    with _haar_lock:
        found = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(40, 40))
    return _largest_first([(float(x), float(y), float(x + w - 1), float(y + h - 1)) for x, y, w, h in found])


def detect(rgb: np.ndarray, upsample: int = 0, fallback: bool = True, scale: float | None = None,
           recheck: bool = False, blazeface: bool = False) -> Detection | None:
    """The first chain stage that finds a face (see module docstring), boxes in HOG framing; None if none does.

    `scale`: search HOG on a copy resized by it (`search_scale`) instead of at `upsample` pyramid levels.
    `recheck`: when HOG finds no box >= 0, its best box >= LOW_SCORE that `confirmed` passes is the face.
    `blazeface`: BlazeFace first, for the faces down to the size `scale` stands for (HOG_MIN_BOX / scale px).
    """
    if blazeface:
        found = blazeface_faces(rgb, HOG_MIN_BOX / (scale or 1.0))
        if found is not None:
            return found
    scored = _hog_scored(rgb, upsample, scale, LOW_SCORE if recheck else 0.0)
    found = _scored_detection([(b, s) for b, s in scored if s >= 0], "dlib-hog")
    if found is not None:
        return found
    if scored:  # only with recheck: every box scored under 0
        best, score = max(scored, key=lambda t: t[1])
        if confirmed(rgb, best, score):
            return Detection([best], "dlib-hog-rechecked", scores=(score,))
    if not fallback:
        return None
    if scale is None and max(rgb.shape[:2]) * 2 ** (upsample + 1) <= UPSAMPLE_MAX_SIDE:
        boxes, confident = _hog(rgb, upsample + 1)
        if boxes:
            return Detection(boxes, f"dlib-hog-up{upsample + 1}", confident)
    boxes, confident = _mmod_ranked(rgb)
    if boxes:
        return Detection([to_hog_frame(b, "dlib-mmod") for b in boxes], "dlib-mmod", confident)
    boxes = haar_boxes(rgb)  # Haar gives no scores: every box counts
    if boxes:
        return Detection([to_hog_frame(b, "opencv-haar") for b in boxes], "opencv-haar")
    return None


def blazeface_faces(rgb: np.ndarray, min_face_box: float) -> Detection | None:
    """The chain's BlazeFace stage alone: faces down to a box of `min_face_box` px (HOG framing), in HOG framing;
    None when it finds none."""
    from . import blazeface as bf

    return _scored_detection([(to_hog_frame(b, "blazeface"), s) for b, s in bf.face_boxes(rgb, min_face_box)],
                             "blazeface")


def rescaled(found: Detection, k: float) -> Detection:
    """A Detection made on a copy resized by `k`, in the original's pixels."""
    return dataclasses.replace(found, boxes=[from_copy(b, k, k) for b in found.boxes])


def _scored_detection(scored: list[tuple[Box, float]], stage: str) -> Detection | None:
    """The (box, score) pairs of a stage as a Detection, ranked by `_ranked`, scores kept; None when empty."""
    if not scored:
        return None
    score_of = dict(scored)
    boxes, confident = _rank(list(score_of.items()))
    return Detection(boxes, stage, confident, tuple(score_of[b] for b in boxes))


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = _area(a) + _area(b) - ix * iy
    return ix * iy / union if union > 0 else 0.0


def confirmed(rgb: np.ndarray, box: Box, score: float) -> bool:
    """Whether HOG, which scored `box` `score` in the photo, calls it a face once the face is aligned upright:
    the 68-point predictor's eyes, nose and mouth corners mapped onto the template, scaled by RECHECK_SCALE, and
    a box where the face should be scoring >= 0 and >= score + RECHECK_GAIN. Tilted, rolled or low-contrast faces
    score higher upright; clutter, whose points land anywhere, does not (a badge on a sleeve: 0.18 -> 0.19)."""
    import cv2

    from . import align

    try:
        m = align.similarity_transform(align.landmarks68_to_5(predict_in_box(rgb, box)),
                                       align.TEMPLATE_5 * RECHECK_SCALE)
    except ValueError:  # degenerate points: not a face
        return False
    side = int(round(HR_SIZE * RECHECK_SCALE))
    upright = cv2.warpAffine(_checked(rgb), m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    expected = tuple(v * RECHECK_SCALE for v in align.TEMPLATE_BOX)
    bar = max(0.0, score + RECHECK_GAIN)
    return any(s >= bar and box_iou(b, expected) >= RECHECK_IOU for b, s in _hog_scored(upright))


def faces_kept(rgb: np.ndarray, found: Detection, recheck: bool = False) -> list[Box]:
    """The faces a `detect.faces = "all"` build keeps, largest first: the confident boxes and, with `recheck`, the
    weak ones (under RELATIVE_SCORE x the best score) that `confirmed` passes."""
    n = len(found.faces())
    scores = found.scores or (0.0,) * len(found.boxes)
    recheck = recheck and found.stage == "dlib-hog"  # the recheck compares HOG scores
    weak = [b for b, s in zip(found.boxes[n:], scores[n:]) if recheck and confirmed(rgb, b, s)]
    return sorted(found.faces() + weak, key=lambda b: -_area(b))


def predict_in_box(rgb: np.ndarray, box: Box) -> np.ndarray:
    """68 points from dlib's shape predictor inside a (HOG-framed) face box."""
    import dlib

    rect = dlib.rectangle(int(round(box[0])), int(round(box[1])), int(round(box[2])), int(round(box[3])))
    shape = _predictor()(_checked(rgb), rect)
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def _find_box(rgb: np.ndarray, upsample: int, prior_box: Box | None, given_box: Box | None,
              fallback: bool, scale: float | None = None, recheck: bool = False,
              blazeface: bool = False) -> tuple[Box, str, int]:
    if given_box is not None:
        return tuple(given_box), "given-box", 1
    found = detect(rgb, upsample, fallback, scale, recheck, blazeface)
    if found is not None:
        return found.boxes[0], found.stage, len(found.boxes)
    if prior_box is not None:
        return tuple(prior_box), "prior-box", 0
    raise NoFace("no_face")


def landmark_source(backend: str, stage: str) -> str:
    """The `landmark_source` a row records for a landmark backend and the chain stage that found its box."""
    if stage in ("given-box", "prior-box"):
        return f"dlib-{stage}" if backend == "dlib" else f"fan+{stage}"
    return stage if backend == "dlib" else f"fan+{stage}"


def locate_face(rgb: np.ndarray, upsample: int = 0, prior_box: Box | None = None,
                given_box: Box | None = None, backend: str = "dlib", fallback: bool = True,
                scale: float | None = None, recheck: bool = False, blazeface: bool = False) -> Located:
    """The largest face's 68 landmarks. Box from: a given (annotated) box, the detector chain, the prior box.

    `backend` is "dlib" (shape predictor) or "face-alignment" (2D FAN, proui_data.fan); either runs on the full
    image, whatever `scale` the detector searched at. Raises NoFace.
    """
    return locate_faces([rgb], upsample, [prior_box], [given_box], backend, fallback, [scale], recheck,
                        blazeface)[0]


def locate_faces(images: Sequence[np.ndarray], upsample: int = 0,
                 prior_boxes: Sequence[Box | None] | None = None, given_boxes: Sequence[Box | None] | None = None,
                 backend: str = "dlib", fallback: bool = True,
                 scales: Sequence[float | None] | None = None, recheck: bool = False,
                 blazeface: bool = False) -> list[Located | NoFace]:
    """`locate_face` on many images; the face-alignment backend runs one batched forward for all of them.

    Raises NoFace for the first image without a face when there is one image; otherwise that image's
    entry is the NoFace exception itself (so a batch is not lost to one bad image).
    """
    if backend not in ("dlib", "face-alignment"):
        raise ValueError(f"landmark backend {backend!r} is not 'dlib' or 'face-alignment'")
    n = len(images)
    prior_boxes = list(prior_boxes) if prior_boxes is not None else [None] * n
    given_boxes = list(given_boxes) if given_boxes is not None else [None] * n
    scales = list(scales) if scales is not None else [None] * n
    found: list[tuple[Box, str, int] | NoFace] = []
    for rgb, prior, given, scale in zip(images, prior_boxes, given_boxes, scales):
        try:
            found.append(_find_box(rgb, upsample, prior, given, fallback, scale, recheck, blazeface))
        except NoFace as e:
            found.append(e)
    if n == 1 and isinstance(found[0], NoFace):
        raise found[0]
    ok = [i for i, f in enumerate(found) if not isinstance(f, NoFace)]
    if backend == "dlib":
        marks = {i: predict_in_box(images[i], found[i][0]) for i in ok}
    else:
        pts = landmarker().predict([(images[i], found[i][0]) for i in ok])
        marks = dict(zip(ok, pts))
    return [f if isinstance(f, NoFace) else Located(marks[i], landmark_source(backend, f[1]), f[2], f[0])
            for i, f in enumerate(found)]
