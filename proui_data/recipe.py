"""Build recipes: declarative TOML files in `pipelines/`, validated into dataclasses.

Unknown keys are errors (a typo must not silently fall back to a default). `load_recipe(None, source)`
gives the shipped default for a source (`pipelines/<source>.toml`). Every section, the stages' own configs
(`DegradeConfig`, `OcclusionConfig`) included, is read once here by `tables.build_dataclass`.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .align import BORDERS, TEMPLATE_EYE_DISTANCE, TEMPLATES
from .degrade import DegradeConfig
from .occlusion import OcclusionConfig
from .tables import build_dataclass, read_toml


class RecipeError(ValueError):
    pass


@dataclass(frozen=True)
class DecodeRecipe:
    max_pixels: int = 64_000_000  # decompression-bomb bound
    max_side: int = 2048  # larger photos are reduced on decode


# A detected face is a target when its HR crop enlarges it at most 1 / MIN_TARGET_SCALE (1.33x): eyes at least
# 0.75 x the template's 27.5 HR px apart. On Helen test faces made smaller, the HR keeps 32.0 dB PSNR and 47 %
# of the high-band energy of a sharp HR at 0.75 (35.0 dB, 61 % at 1.0; 28.6 dB, 37 % at 0.5): no knee, so the
# bound trades sharpness for faces (docs/data.md#rejects).
MIN_TARGET_SCALE = 0.75
DEFAULT_MIN_EYE_DISTANCE = round(MIN_TARGET_SCALE * TEMPLATE_EYE_DISTANCE, 1)  # 20.6 px
SEARCHES = ("upsample", "min-face", "blazeface")
FACES = ("largest", "all")


@dataclass(frozen=True)
class DetectRecipe:
    # "auto": the source's annotation when it has one, else dlib; "annotation": annotation or reject;
    # "dlib": always dlib's 68-point predictor; "face-alignment": always the 2D FAN (needs its weights, see
    # proui_data.fan). Both detectors take their boxes from the dlib chain in proui_data.detect.
    landmarks: str = "auto"
    upsample: int = 0  # HOG pyramid upsampling (1 finds smaller faces, ~4x slower)
    fallback: bool = True  # on a HOG miss try HOG one level up (small images), dlib MMOD, OpenCV Haar
    prior_box: bool = True  # try the source's expected face box when HOG finds nothing (aligned sources)
    # eyes closer than this (px of the photo as decoded: its own unless over decode.max_side) are face_too_small
    min_eye_distance: float = DEFAULT_MIN_EYE_DISTANCE
    # Where HOG searches: "upsample" (unset) the full image at `upsample` pyramid levels; "min-face" a copy
    # scaled so that a face with eyes `min_eye_distance` apart just fills HOG's window (detect.search_scale),
    # landmarks still at full resolution; "blazeface" MediaPipe's BlazeFace CNN first, on copies where that face is
    # its minimum size (proui_data.blazeface), then the "min-face" HOG search on photos where it finds none.
    # Unset rather than "upsample" so that the recipes that do not use it record, and fingerprint, exactly what
    # they did before.
    search: str | None = None
    # Which faces of a photo whose landmarks come from the detector become rows: "largest" (unset) the largest
    # one; "all" every face the detector finds, one row each (`<file>#<k>`, largest first; `<file>` when there
    # is one). Unset rather than "largest" for the same reason as `search`.
    faces: str | None = None
    # true: when HOG finds no face above its threshold, its best box scoring just under it (>= detect.LOW_SCORE)
    # is kept if HOG, run on that face aligned upright, calls it a face; with faces = "all", boxes scoring far
    # under the photo's best face are kept on the same check (detect.confirmed). Unset (off) for the same reason.
    recheck: bool | None = None


@dataclass(frozen=True)
class AlignRecipe:
    template: str = "celeba"  # align.TEMPLATES: "celeba" (ours), "fsrnet" (the FSRNet test sets' frame)
    # Where the crop reaches past the photo: "constant" (the photo's mean colour) is closest to the missing
    # content among the fills that draw no streaks (benchmarks/border.py, 206 Helen photos cut on one side:
    # PSNR-Y 13.4 dB constant, 12.1 reflect, 14.3 replicate, whose edge streaks the model would learn).
    # The share of each crop that is fill is stored as `padded`.
    border: str = "constant"


@dataclass(frozen=True)
class StoreRecipe:
    # samples per shard (one object per array per shard), or "auto": ~16 shards per split, 32 to 256 samples
    # each (store.auto_layout; the size chosen is recorded per split like a fixed one)
    shard_size: int | str = 256
    chunk_size: int = 32  # samples per inner chunk (random-access granularity)
    zstd_level: int = 3


@dataclass(frozen=True)
class PriorsRecipe:
    enabled: bool = True
    heatmap_size: int = 64
    heatmap_sigma: float = 1.5
    parsing: bool = True


@dataclass(frozen=True)
class Recipe:
    source: str = ""
    seed: int = 0  # degradation draws
    occlusion_seed: int = 0  # occlusion draws (change it for new masks on the same faces)
    decode: DecodeRecipe = field(default_factory=DecodeRecipe)
    detect: DetectRecipe = field(default_factory=DetectRecipe)
    align: AlignRecipe = field(default_factory=AlignRecipe)
    degrade: DegradeConfig = field(default_factory=DegradeConfig)
    store: StoreRecipe = field(default_factory=StoreRecipe)
    priors: PriorsRecipe = field(default_factory=PriorsRecipe)
    occlusion: OcclusionConfig | None = None  # None: no occlusion arrays

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able table `parse_recipe` reads back: what a store records (and fingerprints)."""
        d = dataclasses.asdict(self)
        if self.occlusion is not None:
            d["occlusion"] = self.occlusion.written()  # the table as the recipe wrote it
        return _plain(d)

    def replace(self, **kw: Any) -> "Recipe":
        """A copy with fields changed; an `occlusion` table (a dict) is read like the recipe file's."""
        if isinstance(kw.get("occlusion"), dict):
            kw["occlusion"] = OcclusionConfig.from_dict(kw["occlusion"], "occlusion", RecipeError)
        return dataclasses.replace(self, **kw)


def _plain(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items() if v is not None}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _build(cls: type, data: dict, where: str) -> Any:
    return build_dataclass(cls, data, where, RecipeError)


def _check(r: Recipe) -> Recipe:
    if r.detect.landmarks not in ("auto", "annotation", "dlib", "face-alignment"):
        raise RecipeError(f"detect.landmarks: {r.detect.landmarks!r} is not one of auto, annotation, dlib, face-alignment")
    if r.detect.search not in (None, *SEARCHES):
        raise RecipeError(f"detect.search: {r.detect.search!r} is not one of {', '.join(SEARCHES)}")
    if r.detect.faces not in (None, *FACES):
        raise RecipeError(f"detect.faces: {r.detect.faces!r} is not one of {', '.join(FACES)}")
    if r.align.template not in TEMPLATES:
        raise RecipeError(f"align.template: {r.align.template!r} is not one of {', '.join(TEMPLATES)}")
    if r.align.border not in BORDERS:
        raise RecipeError(f"align.border: {r.align.border!r} is not one of {', '.join(BORDERS)}")
    if r.detect.min_eye_distance < 0:
        raise RecipeError(f"detect.min_eye_distance: {r.detect.min_eye_distance} is negative")
    if r.degrade.scale != 8:
        raise RecipeError("degrade.scale: the store contract is 128x128 HR and 16x16 LR, so scale must be 8")
    s = r.store
    if s.shard_size == "auto":
        if s.chunk_size < 1:
            raise RecipeError(f"store: chunk_size ({s.chunk_size}) must be positive")
    elif s.shard_size < 1 or s.chunk_size < 1 or s.shard_size % s.chunk_size:
        raise RecipeError(f"store: shard_size ({s.shard_size}) must be a positive multiple of chunk_size ({s.chunk_size})")
    if r.occlusion is not None and r.occlusion.variants > 64:
        raise RecipeError(f"occlusion.variants: {r.occlusion.variants} is more than 64 rows per face")
    return r


def parse_recipe(data: dict, where: str = "recipe") -> Recipe:
    """Validate a recipe table (as read from TOML)."""
    try:
        # `occlusion` defaults to None (no occlusion), which says nothing of its type: it is read on its own.
        rest = {k: v for k, v in data.items() if k != "occlusion"}
        auto = isinstance(rest.get("store"), dict) and rest["store"].get("shard_size") == "auto"
        if auto:  # the one string a number field takes
            rest["store"] = {k: v for k, v in rest["store"].items() if k != "shard_size"}
        r = _build(Recipe, rest, "")
        if auto:
            r = r.replace(store=dataclasses.replace(r.store, shard_size="auto"))
        if data.get("occlusion") is not None:
            r = r.replace(occlusion=OcclusionConfig.from_dict(data["occlusion"], "occlusion", RecipeError))
        return _check(r)
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from None


def default_recipe_path(source: str) -> importlib.resources.abc.Traversable:
    return importlib.resources.files("proui_pipelines") / f"{source}.toml"


def load_recipe(path: str | Path | None, source: str) -> Recipe:
    """Read and validate a recipe file; None -> the shipped default for `source`."""
    data, where = read_toml(path, default_recipe_path(source), f"pipelines/{source}.toml", RecipeError)
    r = parse_recipe(data, where)
    if r.source and r.source != source:
        raise RecipeError(f"{where} is a recipe for source {r.source!r}, not {source!r}")
    return r.replace(source=source)
