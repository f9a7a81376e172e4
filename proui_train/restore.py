"""Restore every face of a photo: search -> align to the model's 16x16 frame -> hallucinate -> paste back.

The flow of facexlib's FaceRestoreHelper, as one object (`FaceRestorer`) and one function (`restore`):

- **search**: every face the build's search keeps (`proui_data.search`, the folder recipe), largest first.
- **align**: a face whose eyes are at most `TINY_EYE_DISTANCE` px apart (the template's 27.5: no 128x128 crop of
  it exists without enlarging) is warped from the photo straight to the model's 16x16 input frame. A larger face
  is left as is, or, with `downscale` (the benchmark mode), made 16x16 by the same warp.
- **restore**: the generator turns the 16x16 face into 128x128 in its template's frame.
- **paste back**: the output goes into the photo by the inverse similarity at the face's own scale, blended with
  a soft mask (the landmarks' hull raised to the forehead, eroded and feathered), into the photo enlarged
  `upscale` times by plain bicubic interpolation (the background is not restored).

Images are RGB uint8 arrays (H, W, 3), as `PIL.Image.open(path).convert("RGB")` or `proui_data.decode` give them
(OpenCV's `imread` is BGR: convert it first).
"""
from __future__ import annotations

import copy

import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from proui_data import align
from proui_data.detect import Located
from proui_data.recipe import Recipe, load_recipe
from proui_data.schema import HR_SIZE
from proui_data.search import image_faces

from .runtime import from_uint8, load_generator, model_template, pick_device, to_uint8

LR_SIZE = HR_SIZE // 8  # the model's input side

# Eyes at most this far apart (photo px): the face is smaller than the template's, a tiny face (see module doc).
TINY_EYE_DISTANCE = align.TEMPLATE_EYE_DISTANCE
# Faces down to these eyes are searched (the model's 16x16 frame holds eyes 3.4 px apart; the detectors and the
# 68-point predictor lose faces well before that).
DEFAULT_MIN_EYE_DISTANCE = 10.0
# The paste-back mask in HR px of the template frame: the hull eroded by ERODE, then feathered by a Gaussian
# of sigma FEATHER; the brows are raised by FOREHEAD x the brow-to-chin height to cover the forehead.
ERODE = 4
FEATHER = 4.0
FOREHEAD = 0.35
# HR pixel centre x -> LR pixel centre: x_lr = (x_hr + 0.5) / 8 - 0.5 (the 8x box average's geometry)
HR_TO_LR = np.array([[LR_SIZE / HR_SIZE, 0, 0.5 * LR_SIZE / HR_SIZE - 0.5],
                     [0, LR_SIZE / HR_SIZE, 0.5 * LR_SIZE / HR_SIZE - 0.5]])


@dataclass
class FaceRecord:
    """One face of a photo: where it is, how big, what was done with it. The pictures are not part of
    `to_dict` (they go to files)."""

    face: int  # index in the photo, largest first
    box: tuple[float, float, float, float]  # the detector's box, photo px
    eye_distance: float  # between the eye centres, photo px
    mode: str  # "tiny" (eyes <= TINY_EYE_DISTANCE), "downscaled" (a larger face, with downscale), "large"
    status: str  # "restored", "left_as_is" (a large face without downscale) or "skipped"
    reason: str = ""  # why a face is left or skipped
    landmark_source: str = ""
    seconds: float = 0.0  # search share + align + model + paste of this face
    transform: np.ndarray | None = field(default=None, repr=False)  # (2,3) photo px -> HR px of the template
    lr: np.ndarray | None = field(default=None, repr=False)  # 16x16 input
    sr: np.ndarray | None = field(default=None, repr=False)  # 128x128 output
    aligned: np.ndarray | None = field(default=None, repr=False)  # the photo warped to the 128x128 frame

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("lr", "sr", "aligned", "transform")}
        if self.transform is not None:
            d["transform"] = np.round(self.transform, 6).tolist()
        d["box"] = [round(float(v), 2) for v in self.box]
        d["eye_distance"] = round(self.eye_distance, 2)
        d["seconds"] = round(self.seconds, 4)
        return d


def check_rgb(photo: np.ndarray) -> np.ndarray:
    """The photo as a C-contiguous RGB uint8 (H, W, 3) array, or a ValueError saying what it got."""
    if not isinstance(photo, np.ndarray) or photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[2] != 3:
        got = f"{photo.dtype} array of shape {photo.shape}" if isinstance(photo, np.ndarray) else type(photo).__name__
        raise ValueError(f"expected an RGB uint8 photo of shape (H, W, 3), got {got}")
    return np.ascontiguousarray(photo)


def search_recipe(min_eye_distance: float = DEFAULT_MIN_EYE_DISTANCE) -> Recipe:
    """The folder build's recipe (its search: BlazeFace, HOG, recheck, every face) with the given size floor."""
    r = load_recipe(None, "folder")
    return r.replace(detect=dataclasses.replace(r.detect, min_eye_distance=min_eye_distance))


def face_mask(landmarks_hr: np.ndarray, size: int = HR_SIZE) -> np.ndarray:
    """Soft paste-back mask (float32 in [0, 1], size x size) of a face whose 68 points are `landmarks_hr`: the hull
    of the jaw and the brows raised to the forehead, eroded by ERODE and feathered by FEATHER."""
    jaw, brows = landmarks_hr[0:17], landmarks_hr[17:27]
    lift = FOREHEAD * (jaw[:, 1].max() - brows[:, 1].min())
    points = np.concatenate([jaw, brows - [0.0, lift]]).astype(np.float32)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(points).astype(np.int32), 255)
    mask = cv2.erode(mask, np.ones((2 * ERODE + 1, 2 * ERODE + 1), np.uint8))
    return cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), FEATHER)


def warp_to_lr(photo: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The photo warped by `m` (photo px -> LR px) into the model's 16x16 frame: each LR pixel the mean of the photo
    over its footprint (what the 8x box average of a training HR is), computed on a grid q times finer than the LR
    where q is the smallest that reaches the photo's own resolution (never finer: no 128x128 crop is made up)."""
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    q = max(1, int(np.ceil(1.0 / scale - 1e-6)))
    fine = align.compose(np.array([[q, 0, (q - 1) / 2], [0, q, (q - 1) / 2]]), m)
    grid = cv2.warpAffine(photo, fine, (LR_SIZE * q, LR_SIZE * q), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    return grid.reshape(LR_SIZE, q, LR_SIZE, q, 3).mean((1, 3)).round().astype(np.uint8)


def _roi_warp(image: np.ndarray, m: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, tuple[slice, slice]]:
    """`image` warped by the (2,3) map `m` into the part of an out_hw canvas it covers: (the warped patch, its
    slices in the canvas). A reduction is area-averaged first, so the bilinear warp does not alias."""
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        f = 2.0 * scale
        small = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]
        to_small = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
        m = align.compose(m, np.linalg.inv(to_small)[:2])
        image = small
    h, w = image.shape[:2]
    corners = align.apply_transform(m, np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]]))
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
    x1 = min(int(np.ceil(corners[:, 0].max())) + 2, out_hw[1])
    y1 = min(int(np.ceil(corners[:, 1].max())) + 2, out_hw[0])
    if x1 <= x0 or y1 <= y0:
        return np.zeros((0, 0) + image.shape[2:], image.dtype), (slice(0, 0), slice(0, 0))
    shifted = m.copy()
    shifted[:, 2] -= (x0, y0)
    patch = cv2.warpAffine(image, shifted, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return patch, (slice(y0, y1), slice(x0, x1))


def paste_face(canvas: np.ndarray, sr: np.ndarray, mask: np.ndarray, hr_to_canvas: np.ndarray) -> None:
    """Blend the 128x128 `sr` into `canvas` (float32, in place) through the soft `mask`, both mapped by
    `hr_to_canvas`."""
    face, where = _roi_warp(sr.astype(np.float32), hr_to_canvas, canvas.shape[:2])
    alpha, _ = _roi_warp(mask, hr_to_canvas, canvas.shape[:2])
    region = canvas[where]
    region += alpha[..., None] * (face - region)


def _whole_upscale(upscale: int) -> int:
    if int(upscale) != upscale or upscale < 1:
        raise ValueError(f"upscale must be a whole number >= 1, got {upscale}")
    return int(upscale)


class FaceRestorer:
    """detect -> align -> restore -> paste back for one generator (see the module docstring).

    `model`: a generator module (moved to `device`, put in eval mode), or a path `load_generator` reads (a release
    folder or file, a run); `template`: the frame the model was trained in (None: the one its weights record,
    `runtime.model_template`, for a path; "celeba" for a module); `downscale`: restore faces larger than tiny at
    16x16 too; `upscale`: the restored photo is this many times the input's size; `min_eye_distance`: the smallest
    face searched (eyes this many px apart).
    """

    def __init__(self, model: nn.Module | str | Path, template: str | None = None, *, device: str = "auto",
                 downscale: bool = False, upscale: int = 1,
                 min_eye_distance: float = DEFAULT_MIN_EYE_DISTANCE) -> None:
        self.device = pick_device(device)
        if isinstance(model, (str, Path)):
            template = model_template(model, template)
            model = load_generator(model, self.device)
        self.generator = model.to(self.device).eval()
        self.template = template or "celeba"
        self.points = align.template_points(self.template)
        self.downscale, self.upscale = downscale, _whole_upscale(upscale)
        self.recipe = search_recipe(min_eye_distance)

    def with_options(self, *, downscale: bool | None = None, upscale: int | None = None) -> FaceRestorer:
        """A copy with other options, sharing the generator and the search recipe (nothing loaded again)."""
        other = copy.copy(self)
        if downscale is not None:
            other.downscale = downscale
        if upscale is not None:
            other.upscale = _whole_upscale(upscale)
        return other

    def search(self, photo: np.ndarray) -> list[Located]:
        """Every face of the photo the folder build's search keeps, largest first, with its 68 points."""
        return image_faces(check_rgb(photo), self.recipe)

    def to_template(self, landmarks: np.ndarray) -> np.ndarray:
        """The (2,3) similarity photo px -> HR px of the model's template of a face with these 68 points (a
        ValueError when they are degenerate)."""
        return align.similarity_transform(align.landmarks68_to_5(landmarks), self.points)

    @torch.no_grad()
    def hallucinate(self, lr: np.ndarray) -> np.ndarray:
        """(N, 16, 16, 3) uint8 -> (N, 128, 128, 3) uint8 through the generator."""
        x = torch.from_numpy(np.ascontiguousarray(lr)).permute(0, 3, 1, 2).to(self.device)
        return to_uint8(self.generator(from_uint8(x))["final"]).byte().permute(0, 2, 3, 1).cpu().numpy()

    def restore(self, photo: np.ndarray, faces: list[Located] | None = None) -> tuple[np.ndarray, list[FaceRecord]]:
        """(the restored photo, `upscale` times the size of `photo`; one FaceRecord per face, largest first).
        `faces`: the search's result when the caller has it (`photo_faces` on the file's bytes)."""
        photo = check_rgb(photo)
        t0 = time.perf_counter()
        faces = self.search(photo) if faces is None else faces
        t_search = (time.perf_counter() - t0) / max(1, len(faces))
        h, w = photo.shape[:2]
        n = self.upscale
        canvas = (cv2.resize(photo, (w * n, h * n), interpolation=cv2.INTER_CUBIC) if n > 1 else photo).astype(np.float32)
        photo_to_canvas = np.array([[n, 0, (n - 1) / 2], [0, n, (n - 1) / 2]], np.float64)
        records = []
        for k, found in enumerate(faces):
            t = time.perf_counter()
            p5 = align.landmarks68_to_5(found.landmarks)
            eye = float(np.linalg.norm(p5[1] - p5[0]))
            mode = "tiny" if eye <= TINY_EYE_DISTANCE else ("downscaled" if self.downscale else "large")
            rec = FaceRecord(k, found.box or (0.0, 0.0, 0.0, 0.0), eye, mode, "restored",
                             landmark_source=found.source)
            records.append(rec)
            if mode == "large":
                rec.status = "left_as_is"
                rec.reason = (f"eyes {eye:.1f} px apart, more than {TINY_EYE_DISTANCE} (the model restores faces from "
                              "16x16 thumbnails); --downscale restores it at 16x16 anyway")
                continue
            try:
                m = self.to_template(found.landmarks)
            except ValueError:
                rec.status, rec.reason = "skipped", "degenerate_landmarks"
                continue
            rec.transform = m
            rec.lr = warp_to_lr(photo, align.compose(HR_TO_LR, m))
            rec.aligned = align.warp_to_template(photo, m)
            rec.sr = self.hallucinate(rec.lr[None])[0]
            hr_to_canvas = align.compose(photo_to_canvas, np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2])
            paste_face(canvas, rec.sr, face_mask(align.apply_transform(m, found.landmarks)), hr_to_canvas)
            rec.seconds = t_search + time.perf_counter() - t
        return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), records

    __call__ = restore


def restore(photo_rgb: np.ndarray, model: nn.Module | str | Path, template: str | None = None, *,
            downscale: bool = False, upscale: int = 1, device: str = "auto") -> tuple[np.ndarray, list[FaceRecord]]:
    """Restore every face of `photo_rgb` (RGB uint8, H x W x 3) with `model` (a generator, or a path to a release
    or run); returns (the restored photo, RGB uint8 of `upscale` times the size; one FaceRecord per face, largest
    first). For many photos build one `FaceRestorer` and call it per photo."""
    return FaceRestorer(model, template, device=device, downscale=downscale, upscale=upscale).restore(photo_rgb)
