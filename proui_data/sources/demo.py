"""The embedded demo set: two public-domain portraits shipped in the package, in a few variants.

`astronaut.jpg`: NASA portrait of astronaut Eileen Collins (public domain; shipped by scikit-image).
`grace_hopper.jpg`: US Navy portrait of Rear Admiral Grace Hopper (public domain; shipped by matplotlib).
Each photo is used as is, mirrored, rotated and reduced, so a build exercises detection and alignment on
eight genuine faces with no download. Split: the two reduced variants form `val`.
"""
from __future__ import annotations

import importlib.resources

import cv2
import numpy as np

from .base import Item, Source

PHOTOS = ("astronaut.jpg", "grace_hopper.jpg")
VARIANTS = ("original", "mirror", "rotate12", "half")


def _variant(rgb: np.ndarray, variant: str) -> np.ndarray:
    if variant == "mirror":
        return rgb[:, ::-1].copy()
    if variant == "rotate12":
        h, w = rgb.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 12.0, 1.0)
        return cv2.warpAffine(rgb, m, (w, h), borderMode=cv2.BORDER_REPLICATE)
    if variant == "half":
        return cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    return rgb


class DemoSource(Source):
    name = "demo"

    def splits(self) -> list[str]:
        return ["train", "val"]

    def items(self, split: str) -> list[Item]:
        keys = [f"{p}#{v}" for p in PHOTOS for v in VARIANTS]
        return [Item(key=k) for k in keys if (k.endswith("#half") == (split == "val"))]

    def read(self, item: Item) -> bytes:
        photo, variant = item.photo.split("#")  # a face row (`<photo>#<k>`) reads its photo
        data = (importlib.resources.files("proui_data.demo") / photo).read_bytes()
        if variant == "original":
            return data
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        ok, buf = cv2.imencode(".png", _variant(bgr, variant))
        return buf.tobytes()
