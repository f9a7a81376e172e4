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

from .degrade import DegradeConfig
from .occlusion import OcclusionConfig
from .tables import build_dataclass, read_toml


class RecipeError(ValueError):
    pass


@dataclass(frozen=True)
class DecodeRecipe:
    max_pixels: int = 64_000_000  # decompression-bomb bound
    max_side: int = 2048  # larger photos are reduced on decode


@dataclass(frozen=True)
class DetectRecipe:
    # "auto": the source's annotation when it has one, else dlib; "annotation": annotation or reject;
    # "dlib": always dlib's 68-point predictor; "face-alignment": always the 2D FAN (needs its weights, see
    # proui_data.fan). Both detectors take their boxes from the dlib chain in proui_data.detect.
    landmarks: str = "auto"
    upsample: int = 0  # HOG pyramid upsampling (1 finds smaller faces, ~4x slower)
    fallback: bool = True  # on a HOG miss try HOG one level up (small images), dlib MMOD, OpenCV Haar
    prior_box: bool = True  # try the source's expected face box when HOG finds nothing (aligned sources)
    min_eye_distance: float = 8.0  # source pixels; smaller faces are rejected


@dataclass(frozen=True)
class StoreRecipe:
    shard_size: int = 256  # samples per shard (one object per array per shard)
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
    if r.degrade.scale != 8:
        raise RecipeError("degrade.scale: the store contract is 128x128 HR and 16x16 LR, so scale must be 8")
    s = r.store
    if s.shard_size < 1 or s.chunk_size < 1 or s.shard_size % s.chunk_size:
        raise RecipeError(f"store: shard_size ({s.shard_size}) must be a positive multiple of chunk_size ({s.chunk_size})")
    if r.occlusion is not None and r.occlusion.variants > 64:
        raise RecipeError(f"occlusion.variants: {r.occlusion.variants} is more than 64 rows per face")
    return r


def parse_recipe(data: dict, where: str = "recipe") -> Recipe:
    """Validate a recipe table (as read from TOML)."""
    try:
        # `occlusion` defaults to None (no occlusion), which says nothing of its type: it is read on its own.
        rest = {k: v for k, v in data.items() if k != "occlusion"}
        r = _build(Recipe, rest, "")
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
