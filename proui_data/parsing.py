"""Face parsing maps in the 11 Helen classes (Smith et al., "Exemplar-Based Face Parsing", CVPR 2013).

Classes (the order of Helen's `<name>_lbl00.png` ... `<name>_lbl10.png` label probability maps):

    0 background, 1 skin (face skin, excluding ears and neck), 2 left brow, 3 right brow, 4 left eye,
    5 right eye, 6 nose, 7 upper lip, 8 inner mouth, 9 lower lip, 10 hair

Left/right convention: **viewer's (image) side**. Class 2/4 are the brow/eye on the image's left (smaller x),
i.e. the subject's right: iBUG points 17-21 and 36-41. Class 3/5 are on the image's right: points 22-26 and
42-47. `parsing_from_landmarks`, `CELEBAMASK_TO_HELEN` (CelebAMask-HQ names sides from the subject's view,
checked on its label maps: `l_eye` lies at the larger x) and `proui_data.flip.PARSING_FLIP` all follow it, so
a horizontal flip swaps 2<->3 and 4<->5.

Three sources:
- `parsing_from_helen_labels`: Helen's own soft masks, argmax over the 11 layers, warped into the crop.
- `parsing_from_celebamask`: CelebAMask-HQ 19-class maps through `CELEBAMASK_TO_HELEN`, warped into the crop.
- `parsing_from_landmarks`: polygons drawn from the 68 landmarks, for data without parsing labels. Hair
  (class 10) cannot be known from landmarks and is never produced; the forehead is an estimate.

Warps use nearest-neighbour sampling (class ids must not be blended); outside the source is background.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .schema import HR_SIZE

NUM_CLASSES = 11
CLASS_NAMES = (
    "background", "skin", "left_brow", "right_brow", "left_eye", "right_eye",
    "nose", "upper_lip", "inner_mouth", "lower_lip", "hair",
)  # fmt: skip
BACKGROUND, SKIN, LEFT_BROW, RIGHT_BROW, LEFT_EYE, RIGHT_EYE, NOSE, UPPER_LIP, INNER_MOUTH, LOWER_LIP, HAIR = range(11)

CELEBAMASK_NAMES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
# CelebAMask-HQ class id -> Helen class id. Choices:
# - l_*/r_* are the subject's sides, so l_eye/l_brow (image right) -> Helen right (5/3), r_* -> left (4/2).
# - eye_g (eyeglasses) -> skin: frames and lenses sit on the face; CelebAMask-HQ paints the eyes over the
#   glasses when they are visible, and the prior should keep describing the face region under an occluder.
# - ears, earrings -> background: Helen's skin label explicitly excludes ears.
# - neck, necklace, cloth -> background (Helen excludes the neck); hat -> background (it is not hair).
# - mouth (the opening between the lips) -> inner mouth.
CELEBAMASK_TO_HELEN = {
    0: BACKGROUND, 1: SKIN, 2: NOSE, 3: SKIN, 4: RIGHT_EYE, 5: LEFT_EYE, 6: RIGHT_BROW, 7: LEFT_BROW,
    8: BACKGROUND, 9: BACKGROUND, 10: INNER_MOUTH, 11: UPPER_LIP, 12: LOWER_LIP, 13: HAIR, 14: BACKGROUND,
    15: BACKGROUND, 16: BACKGROUND, 17: BACKGROUND, 18: BACKGROUND,
}  # fmt: skip
_CELEBAMASK_LUT = np.array([CELEBAMASK_TO_HELEN[i] for i in range(len(CELEBAMASK_NAMES))], dtype=np.uint8)

# Shape constants of `parsing_from_landmarks` (fractions of face measurements, see there).
FOREHEAD_RATIO = 0.8  # forehead height / (brow line - nose base) distance
BROW_THICKNESS = 0.12  # brow band thickness / distance between the eye centres
_SHIFT = 4  # cv2 fixed-point fractional bits: polygons are rasterised with 1/16-pixel vertex precision


def _rescale_transform(transform: np.ndarray, size: int, hr_size: int) -> np.ndarray:
    """Compose a source->HR (2,3) affine with the HR->size grid change (pixel-area aligned)."""
    m = np.asarray(transform, dtype=np.float64)
    if m.shape != (2, 3) or not np.isfinite(m).all():
        raise ValueError(f"transform must be a finite (2, 3) affine matrix, got shape {m.shape}")
    if size == hr_size:
        return m
    s = size / hr_size
    out = m * s
    out[:, 2] += 0.5 * s - 0.5
    return out


def _warp_classes(class_map: np.ndarray, transform: np.ndarray, size: int, hr_size: int) -> np.ndarray:
    m = _rescale_transform(transform, size, hr_size)
    return cv2.warpAffine(
        np.ascontiguousarray(class_map, dtype=np.uint8), m, (size, size),
        flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND,
    )  # fmt: skip


def parsing_from_helen_labels(
    label_dir: Path | str, name: str, transform: np.ndarray, size: int = HR_SIZE, hr_size: int = HR_SIZE
) -> np.ndarray:
    """Helen `label_dir/<name>/<name>_lbl00..10.png` soft masks -> (size, size) uint8 class map in the crop.

    Each pixel takes the class of its strongest layer (background where all layers are 0). `transform` is the
    (2,3) source-pixels -> HR-pixels affine of the aligned crop.
    """
    folder = Path(label_dir) / name
    layers = []
    for k in range(NUM_CLASSES):
        path = folder / f"{name}_lbl{k:02d}.png"
        if not path.is_file():
            raise FileNotFoundError(f"Helen label file missing: {path}")
        layer = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if layer is None:
            raise ValueError(f"cannot decode Helen label file {path}")
        if layers and layer.shape != layers[0].shape:
            raise ValueError(f"{path} is {layer.shape}, but {name}_lbl00.png is {layers[0].shape}")
        layers.append(layer)
    # argmax returns the first maximum, so all-zero pixels are class 0 (background).
    class_map = np.argmax(np.stack(layers), axis=0).astype(np.uint8)
    return _warp_classes(class_map, transform, size, hr_size)


def parsing_from_celebamask(
    label: np.ndarray,
    transform: np.ndarray,
    size: int = HR_SIZE,
    hr_size: int = HR_SIZE,
    source_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """CelebAMask-HQ (H, W) label map (ids 0..18) -> (size, size) uint8 Helen class map in the crop.

    `transform` maps source pixels to HR pixels. CelebAMask-HQ labels are 512x512 while the images are
    1024x1024: pass the image's (H, W) as `source_shape` when `transform` refers to the image's pixel grid.
    """
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label must be a 2-D (H, W) class map, got shape {label.shape}")
    if label.size and int(label.max()) >= len(_CELEBAMASK_LUT):
        raise ValueError(f"CelebAMask-HQ label ids are 0..18, found {int(label.max())}")
    classes = _CELEBAMASK_LUT[label]
    m = np.asarray(transform, dtype=np.float64)
    if source_shape is not None and tuple(source_shape) != label.shape:
        # label pixel -> source pixel, area aligned, then source -> HR.
        sy, sx = source_shape[0] / label.shape[0], source_shape[1] / label.shape[1]
        to_source = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        m = (np.vstack([_rescale_transform(m, hr_size, hr_size), [0, 0, 1]]) @ to_source)[:2]
    return _warp_classes(classes, m, size, hr_size)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-6)


def _fill(canvas: np.ndarray, polygon: np.ndarray, value: int) -> None:
    pts = np.round(polygon * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(canvas, [pts], value, lineType=cv2.LINE_8, shift=_SHIFT)


def parsing_from_landmarks(landmarks: np.ndarray, size: int = HR_SIZE, hr_size: int = HR_SIZE) -> np.ndarray:
    """(68, 2) iBUG landmarks in HR pixels -> (size, size) uint8 parsing map drawn from polygons.

    Skin is the jaw contour closed by an estimated forehead; brows are bands below points 17-21 / 22-26;
    eyes, nose, lips and inner mouth are polygons of their points. Hair is never produced. Any NaN landmark
    gives an all-background map.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"landmarks must have shape (68, 2), got {lm.shape}")
    canvas = np.zeros((size, size), dtype=np.uint8)
    if not np.isfinite(lm).all():
        return canvas
    lm = (lm + 0.5) * (size / hr_size) - 0.5

    eye_image_left, eye_image_right = lm[36:42].mean(0), lm[42:48].mean(0)
    across = _unit(eye_image_right - eye_image_left)  # image left -> image right along the eye line
    up = np.array([across[1], -across[0]])  # towards the forehead (image y grows downwards)
    eye_dist = float(np.linalg.norm(eye_image_right - eye_image_left))

    # Skin: jaw 0..16 closed over the brows, which are lifted by a forehead estimate. The forehead height
    # follows the facial-thirds rule (hairline-brow ~ brow-nose base), shortened by a fifth because hair often
    # covers the top of the forehead; towards the brow tails the lift tapers so the outline meets the temples.
    brow_mid = lm[17:27].mean(0)
    third = float(np.dot(brow_mid - lm[33], up))
    brows = lm[26:16:-1]  # image right to image left, continuing the jaw's 0..16 order
    t = np.linspace(-1.0, 1.0, len(brows))
    lift = FOREHEAD_RATIO * third * np.sqrt(1.0 - (0.85 * t) ** 2)
    forehead = brows + lift[:, None] * up
    _fill(canvas, np.concatenate([lm[0:17], forehead]), SKIN)

    # Nose: the bridge (27-30) widened to a narrow band, opening into the alae (wings), which reach outside
    # and above the outer nostril points 31 / 35.
    half_bridge = 0.12 * eye_dist
    half_base = 0.5 * float(np.linalg.norm(lm[35] - lm[31]))
    nose = np.stack(
        [
            lm[27] - half_bridge * across,
            lm[29] - 1.3 * half_bridge * across,
            lm[31] - 0.5 * half_base * (across - up),
            lm[31] - 0.25 * half_base * across,
            lm[32], lm[33], lm[34],
            lm[35] + 0.25 * half_base * across,
            lm[35] + 0.5 * half_base * (across + up),
            lm[29] + 1.3 * half_bridge * across,
            lm[27] + half_bridge * across,
        ]
    )  # fmt: skip
    _fill(canvas, nose, NOSE)

    # Brows: the points trace the brow's upper edge; the band below it is thickest in the middle of the brow.
    for idx, cls in ((slice(17, 22), LEFT_BROW), (slice(22, 27), RIGHT_BROW)):
        upper = lm[idx]
        thickness = BROW_THICKNESS * eye_dist * np.array([0.5, 0.9, 1.0, 1.0, 0.8])
        if cls == RIGHT_BROW:
            thickness = thickness[::-1]
        lower = upper - thickness[:, None] * up
        _fill(canvas, np.concatenate([upper, lower[::-1]]), cls)

    _fill(canvas, lm[36:42], LEFT_EYE)
    _fill(canvas, lm[42:48], RIGHT_EYE)
    _fill(canvas, np.concatenate([lm[48:55], lm[64:59:-1]]), UPPER_LIP)
    _fill(canvas, np.concatenate([lm[54:60], lm[48:49], lm[60:61], lm[67:63:-1]]), LOWER_LIP)
    _fill(canvas, lm[60:68], INNER_MOUTH)
    return canvas

