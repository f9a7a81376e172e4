"""Robust image decoding: bytes in, RGB uint8 out, or a `DecodeError` whose message becomes a reject reason.

Handles EXIF orientation, CMYK, 16-bit and float images, palette/alpha images, grayscale, truncated or
corrupt files, and decompression bombs. Images larger than `max_side` are reduced on decode; the returned
`scale` (decoded pixels per source pixel) keeps coordinates exact, so the stored `transform` still maps
source-image pixels (in EXIF-corrected orientation) to HR pixels. Conversions run in strips of
`STRIP_PIXELS`, so a large photo costs its decoded Pillow image and little more (benchmarks/decode_memory.py).
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

# Pillow's own bomb check triggers at ~89 Mpx (warning) and 179 Mpx (error); we bound it ourselves.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MAX_SIDE = 2048


class DecodeError(ValueError):
    """The bytes are not a usable image; `reason` is a short machine-readable tag."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Decoded:
    rgb: np.ndarray  # (H, W, 3) uint8
    scale: float  # decoded pixels per source pixel (1.0 unless the image was reduced)
    source_size: tuple[int, int]  # (width, height) of the source after EXIF orientation
    full_scale: float  # the scale a full decode has: `scale` unless decoded reduced (`decode_image`'s `reduce`)
    format: str | None = None  # Pillow's name of the file format ("JPEG", "PNG", ...)

    @property
    def reduced(self) -> bool:
        return self.scale < self.full_scale


WIDE_GRAY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # grayscale modes wider than 8 bits
STRIP_PIXELS = 1 << 16  # images are converted (to 8 bits, to numpy) in strips of this many pixels


def _wide_gray_to_l(img: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grayscale image as L: 16-bit maps 0-65535, the others their own min-max,
    onto 0-255 (rounded). Strip by strip: the float64 temporaries are a strip's, not the image's."""
    w, h = img.size
    lo, hi = (0.0, 65535.0) if img.mode.startswith("I;16") else (float(v) for v in img.getextrema())
    out = np.zeros((h, w), np.uint8)
    if hi > lo:
        rows = max(1, STRIP_PIXELS // w)
        for y in range(0, h, rows):
            strip = np.asarray(img.crop((0, y, w, min(h, y + rows))), dtype=np.float64)
            strip -= lo
            strip *= 255.0 / (hi - lo)
            strip += 0.5
            out[y:y + rows] = np.clip(strip, 0, 255, out=strip)
    return Image.fromarray(out)


def _rgb_array(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of an RGB or L image, copied strip by strip (Pillow's `tobytes` of a whole image would
    hold two copies at once)."""
    w, h = img.size
    rows = max(1, STRIP_PIXELS // w)
    if rows >= h:  # one strip: the image itself
        arr = np.asarray(img)
        return arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
    out = np.empty((h, w, 3), np.uint8)
    for y in range(0, h, rows):
        strip = np.asarray(img.crop((0, y, w, min(h, y + rows))))
        out[y:y + rows] = strip[..., None] if strip.ndim == 2 else strip
    return out


def _composited_on_grey(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 of an image with alpha composited on mid grey (transparent pixels carry no face: grey rather
    than black or white extremes), strip by strip: the RGBA copy, the grey base and the composite are a strip's,
    and the image and the result are all a full decode holds."""
    w, h = img.size
    out = np.empty((h, w, 3), np.uint8)
    rows = max(1, STRIP_PIXELS // w)
    for y in range(0, h, rows):
        strip = img.crop((0, y, w, min(h, y + rows))).convert("RGBA")
        base = Image.new("RGBA", strip.size, (128, 128, 128, 255))
        out[y:y + rows] = np.asarray(Image.alpha_composite(base, strip).convert("RGB"))
    return out


def _to_8bit(img: Image.Image) -> Image.Image | np.ndarray:
    """RGB, or L for a grayscale source (made RGB once reduced to `max_side`: a third of the memory); an image with
    alpha comes composited, as the (H, W, 3) uint8 array."""
    mode = img.mode
    if mode in WIDE_GRAY:
        return _wide_gray_to_l(img)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        return _composited_on_grey(img)
    if mode in ("RGB", "L"):
        return img
    return img.convert("RGB")  # 1, P, CMYK, YCbCr, LAB, HSV


def _size(img: Image.Image | np.ndarray) -> tuple[int, int]:
    """(width, height) of a Pillow image or an (H, W, 3) array."""
    return (img.shape[1], img.shape[0]) if isinstance(img, np.ndarray) else img.size


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE,
                 reduce: float = 1.0, min_side: int = 0) -> Decoded:
    """Decode image bytes into RGB uint8 (see module docstring). Raises `DecodeError`.

    `reduce` < 1: a JPEG that a full decode does not reduce (to `max_side`) is decoded at the largest DCT scaling
    (1/2, 1/4, 1/8) that keeps at least `reduce` of its size and a long side of at least `min_side` px, for a
    search that only needs that much (a fraction of the cost); `full_scale` then says what a full decode gives.
    """
    if not data:
        raise DecodeError("empty_file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise DecodeError("too_large", f"{w}x{h} exceeds {max_pixels} pixels")
            full_scale = 1.0 if max(w, h) <= max_side else 0.0  # 0: a full decode is this one, reduced to max_side
            if not full_scale and img.format == "JPEG":
                # Let libjpeg decode at 1/2, 1/4 or 1/8 scale: a huge photo then costs a fraction.
                img.draft("RGB", (max_side, max_side))
            elif full_scale and img.format == "JPEG" and (keep := _kept_share((w, h), reduce, min_side)) < 1:
                img.draft("RGB", (math.ceil(w * keep), math.ceil(h * keep)))  # libjpeg keeps at least this size
            img.load()
            loaded_size, img_format = img.size, img.format
            ImageOps.exif_transpose(img, in_place=True)  # not in place, an upright image is copied whole
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError("too_large", str(e)) from None
    except Image.DecompressionBombWarning as e:
        raise DecodeError("too_large", str(e)) from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        msg = str(e) or type(e).__name__
        tag = "truncated" if "truncated" in msg else "corrupt"
        raise DecodeError(tag, msg) from None
    # The source frame is the EXIF-oriented one: a 90-degree orientation swaps the axes.
    swapped = img.size != loaded_size
    src_w, src_h = (h, w) if swapped else (w, h)
    img = _to_8bit(img)  # one reference: the source image is released here
    if max(size := _size(img)) > max_side:
        if isinstance(img, np.ndarray):
            img = Image.fromarray(img)
        f = max_side / max(size)
        img = img.resize((max(1, round(size[0] * f)), max(1, round(size[1] * f))), Image.LANCZOS)
        size = img.size
    if min(size) < 8:
        raise DecodeError("too_small", f"decoded shape {(size[1], size[0], 3)}")
    scale = size[0] / src_w
    rgb = img if isinstance(img, np.ndarray) else _rgb_array(img)
    return Decoded(rgb=rgb, scale=scale, source_size=(src_w, src_h), full_scale=full_scale or scale,
                   format=img_format)


def _kept_share(size: tuple[int, int], reduce: float, min_side: int) -> float:
    """The share of each side a reduced JPEG decode keeps at least: `reduce`, or more for a long side of `min_side`."""
    return max(reduce, min_side / max(size))


def reduction_factor(size: tuple[int, int], reduce: float, min_side: int = 0) -> int:
    """The DCT scaling denominator (1, 2, 4 or 8) `decode_image(..., reduce, min_side)` decodes a JPEG of `size`
    (width, height; not over `max_side`) at: the largest that keeps at least `reduce` of each side and a long side
    of at least `min_side` px (Pillow's `draft` rule)."""
    w, h = size
    keep = _kept_share(size, reduce, min_side)
    if keep >= 1:
        return 1
    fits = min(w // math.ceil(w * keep), h // math.ceil(h * keep))
    return next(f for f in (8, 4, 2, 1) if f <= fits)


def decodes_reduced(full: Decoded, reduce: float, min_side: int = 0) -> bool:
    """Whether `decode_image(data, ..., reduce, min_side)` decodes the photo whose full decode is `full` at a DCT
    scaling: a JPEG that a full decode does not reduce to `max_side`. If not, that decode is `full`, pixel for
    pixel, and need not be made again."""
    return (full.format == "JPEG" and full.scale == 1.0
            and reduction_factor(full.source_size, reduce, min_side) > 1)
