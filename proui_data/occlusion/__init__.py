"""Randomized synthetic occlusions of an aligned 128x128 face: blocks, brush strokes, random walks, shapes, objects.

`occlude(hr, landmarks, cfg, rng)` draws one kind (weights `cfg.kinds`), one anchor (weights `cfg.anchors`:
random / eyes / nose / mouth) and one target ratio (`cfg.ratio`), and returns the occluded HR face, the alpha mask
(uint8, 255 = fully occluded), and the ratio it achieved. The caller degrades the occluded HR to LR itself.

Ratio = mean(mask / 255) over the face region (`face`): the jaw and the brows lifted for the forehead, from the
landmarks or, when they are unknown, from the mean face shape. Each kind is sized so the achieved ratio lands
near the target where the kind allows; the achieved one is always what is recorded.

Modules:
- `config`: `OcclusionConfig`, the recipe's `[occlusion]` table; `sampling`: draws every kind shares.
- `face`: the face region and named points; `draw`: fixed-point cv2 drawing.
- `masks`: `block`, `stroke`, `shape`; `walk`: the authors' random-walk protocol and a target mode.
- `objects`: the `object` kind, placing a template from `occluders` (RGBA PNGs with alpha) or `procedural`.
- `core`: `occlude` and the kind -> function table.

Every random draw comes from the caller's generator, so a sample is reproducible from its rng state.
"""
from .config import ANCHORS, KINDS, AnchorWeights, KindWeights, OcclusionConfig, RatioDist
from .core import KIND_FUNCTIONS, Occlusion, occlude
from .face import FOREHEAD_LIFT, MEAN_LANDMARKS, FaceGeometry, face_geometry
from .occluders import classify_occluder, load_occluders
from .template import ObjectTemplate

# Internals the tests reach as `proui_data.occlusion._name`.
from .occluders import read_masks_cfg as _read_masks_cfg
from .template import MTF_TARGETS as _MTF_TARGETS
from .walk import folded_walk as _folded_walk

__all__ = [
    "ANCHORS", "KINDS", "KIND_FUNCTIONS", "FOREHEAD_LIFT", "MEAN_LANDMARKS",
    "AnchorWeights", "FaceGeometry", "KindWeights", "ObjectTemplate", "Occlusion", "OcclusionConfig", "RatioDist",
    "classify_occluder", "face_geometry", "load_occluders", "occlude",
]  # fmt: skip
