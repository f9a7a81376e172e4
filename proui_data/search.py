"""The face search a recipe's `[detect]` table describes, one policy for the build and for `proui-train infer`.

Where the detector chain (`detect.detect`) runs: on a copy scaled so that the smallest accepted face
(`detect.min_eye_distance`) just fills HOG's window (`detect_scale`), or with the BlazeFace search first on the
photo decoded reduced (`search_photo`), then HOG alone in full only when BlazeFace finds no face there.
`search_photo` gives the boxes; `photo_faces` / `image_faces` add each face's 68 points, every face of the
photo, largest first, as a `detect.faces = "all"` build keeps them.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .blazeface import INPUT as BLAZEFACE_INPUT, MIN_BOX
from .decode import Decoded, decode_image, decodes_reduced
from .detect import (HOG_BOX_PER_EYE, HOG_MIN_BOX, MAX_SEARCH_SCALE, Box, Detection, Located, blazeface_faces,
                     detect, faces_kept, landmark_source, locate_face, rescaled, search_scale)
from .recipe import Recipe


def detect_scale(recipe: Recipe, s: float = 1.0) -> float | None:
    """The scale HOG searches at on an image of `s` px per px of the photo as decoded in full, where the floor
    `detect.min_eye_distance` holds (BlazeFace searches down to its own size for it, `blazeface_min_box`); None:
    at `upsample` levels."""
    det = recipe.detect
    return search_scale(det.min_eye_distance * s) if det.search in ("min-face", "blazeface") else None


def blazeface_min_box(recipe: Recipe, s: float = 1.0) -> float:
    """The box (HOG framing) of the smallest face the recipe accepts, in px of an image of `s` px per px of the
    photo as decoded in full: where BlazeFace's search stops. Not HOG's scale (`detect_scale`), which is capped at
    `detect.MAX_SEARCH_SCALE` (HOG never enlarges a copy further): on a photo decoded at 1/2 the cap had BlazeFace
    search for faces 1.2x the floor, and missed faces (docs/data.md, "Photos from the wild")."""
    eyes = recipe.detect.min_eye_distance
    if eyes <= 0:  # no floor: the smallest face HOG's most enlarged copy finds
        return HOG_MIN_BOX / MAX_SEARCH_SCALE * s
    return HOG_BOX_PER_EYE * eyes * s


def search_options(recipe: Recipe) -> dict[str, Any]:
    """The detector chain's options that a recipe sets, as keywords of `detect.detect` / `locate_face(s)` (all but
    the per-image HOG `scale`, `detect_scale`)."""
    det = recipe.detect
    return {"upsample": det.upsample, "fallback": det.fallback, "recheck": bool(det.recheck),
            "blazeface": det.search == "blazeface"}


def landmark_backend(recipe: Recipe) -> str:
    return "face-alignment" if recipe.detect.landmarks == "face-alignment" else "dlib"


def search_reduction(recipe: Recipe) -> float:
    """How far a photo's decode may be reduced for the recipe's face search (`decode_image`'s `reduce`): BlazeFace's
    finest copy, where the smallest accepted face is `blazeface.MIN_BOX` px; 1 (a full decode) for HOG."""
    if recipe.detect.search != "blazeface":
        return 1.0
    return MIN_BOX / blazeface_min_box(recipe)


def search_decode(data: bytes, recipe: Recipe, full: Decoded | None = None) -> Decoded:
    """A photo decoded for the recipe's face search: reduced as far as `search_reduction` allows (JPEG DCT
    scaling), the long side kept at least BlazeFace's input. `full`: the photo's full decode, when the caller has
    it: returned as it is where the search decode would be the same pixels (not a JPEG, a photo reduced to
    `decode.max_side`, a HOG search), not decoded again. A JPEG's reduced copy is decoded, not made from `full`:
    its pixels are libjpeg's DCT scaling, which the detection pass of a build (no full decode there) sees too, so
    a build, a largest-face build and `infer` find a photo's faces in the same boxes (docs/benchmarks.md, "Search decode given a full decode")."""
    reduce = search_reduction(recipe)
    if full is not None and not decodes_reduced(full, reduce, BLAZEFACE_INPUT):
        return full
    return decode_image(data, recipe.decode.max_pixels, recipe.decode.max_side, reduce, BLAZEFACE_INPUT)


def search_photo(data: bytes, recipe: Recipe, full: Decoded | None = None) -> tuple[Detection | None, list[Box], float]:
    """(what the recipe's detector chain finds in a photo's bytes, None if no face; the faces a `detect.faces =
    "all"` build keeps of it, `detect.faces_kept`; the scale of a full decode), boxes in a full decode's pixels.

    With the BlazeFace search the photo is first decoded reduced to what BlazeFace needs (JPEG DCT scaling: 1/2 on
    the wild photos, less than half the decoding), and in full only when BlazeFace finds no face there (HOG needs
    every pixel); `full`: that full decode, when the caller has it (`search_decode` then decodes only a JPEG's
    reduced copy). Raises DecodeError.
    """
    options = search_options(recipe)
    decoded = search_decode(data, recipe, full)
    if options.pop("blazeface"):
        k = decoded.scale / decoded.full_scale  # 1 but for a reduced decode
        found = blazeface_faces(decoded.rgb, blazeface_min_box(recipe, k))
        if found is not None:  # BlazeFace's boxes need no pixels to be kept (the recheck is HOG's)
            found = rescaled(found, k) if decoded.reduced else found
            return found, faces_kept(decoded.rgb, found), decoded.full_scale
        if decoded.reduced:
            decoded = full or decode_image(data, recipe.decode.max_pixels, recipe.decode.max_side)
    found = detect(decoded.rgb, scale=detect_scale(recipe), **options)  # HOG alone after BlazeFace
    kept = faces_kept(decoded.rgb, found, options["recheck"]) if found is not None else []
    return found, kept, decoded.scale


def located_in_boxes(rgb: np.ndarray, boxes: list[Box], stage: str, recipe: Recipe) -> list[Located]:
    """Each box's 68 points in `rgb` (a full decode), with the recipe's landmark backend."""
    backend = landmark_backend(recipe)
    return [Located(locate_face(rgb, given_box=b, backend=backend).landmarks, landmark_source(backend, stage),
                    len(boxes), tuple(b)) for b in boxes]


def photo_faces(data: bytes, recipe: Recipe, full: Decoded | None = None) -> tuple[Decoded, list[Located]]:
    """(the photo decoded in full, every face the recipe's search keeps in it, largest first, with its 68 points),
    boxes and points in that decode's pixels: the faces a `detect.faces = "all"` build makes samples of. `full`:
    that decode, when the caller has it. Raises DecodeError."""
    full = full or decode_image(data, recipe.decode.max_pixels, recipe.decode.max_side)
    found, kept, _ = search_photo(data, recipe, full)
    return full, ([] if found is None else located_in_boxes(full.rgb, kept, found.stage, recipe))


def image_faces(rgb: np.ndarray, recipe: Recipe) -> list[Located]:
    """`photo_faces` for an image already decoded (RGB uint8 HxWx3): the same chain and faces kept, searched on
    the image itself rather than on a reduced decode."""
    options = search_options(recipe)
    found = blazeface_faces(rgb, blazeface_min_box(recipe)) if options.pop("blazeface") else None
    found = found or detect(rgb, scale=detect_scale(recipe), **options)
    if found is None:
        return []
    return located_in_boxes(rgb, faces_kept(rgb, found, options["recheck"]), found.stage, recipe)
