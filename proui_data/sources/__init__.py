"""Sources: enumerate a dataset's samples (cheap, on the driver) and read their bytes (in the workers).

A source is a small picklable object: Dask ships it to every task. `items(split)` is sorted and
deterministic, so row order, and with it every seed, is independent of the scheduler.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class SourceError(ValueError):
    """The dataset layout is wrong or unreadable; the message says what was expected where."""


@dataclass(frozen=True)
class Item:
    key: str  # source-relative file name: the sample's identity and the root of its seeds
    path: str | None = None  # local file, or None when the source reads by `index`
    index: int | None = None  # row in the source's own split `split`, for sources read by index
    split: str | None = None
    landmarks: np.ndarray | None = field(default=None, compare=False)  # (5|68, 2) source pixels
    box: tuple[float, float, float, float] | None = None  # annotated face box, source pixels
    identity: int = -1
    attributes: np.ndarray | None = field(default=None, compare=False)  # int8 (A,)
    labels: str | None = None  # Helen SmithCVPR2013 label folder for this image
    variant: int = 0  # occlusion variant: with recipe occlusion.variants = K each face has K consecutive rows


class Source:
    name = "source"
    attribute_names: tuple[str, ...] = ()
    prior_box: tuple[float, float, float, float] | None = None  # expected face box in an aligned frame

    def splits(self) -> list[str]:
        raise NotImplementedError

    def items(self, split: str) -> list[Item]:
        raise NotImplementedError

    def read(self, item: Item) -> bytes:
        assert item.path is not None
        return Path(item.path).read_bytes()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted by relative path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def get_source(name: str, root: str | None = None, hf_name: str | None = None) -> Source:
    """Instantiate a source by its CLI name."""
    if name == "demo":
        from .demo import DemoSource

        return DemoSource()
    if name == "hf":
        if not hf_name:
            raise SourceError("--source hf needs --name (a hub id or a save_to_disk folder)")
        from .hf import HFSource

        return HFSource(hf_name)
    if name in ("celeba", "helen", "folder"):
        if not root:
            raise SourceError(f"--source {name} needs --root DIR")
        r = Path(root)
        if not r.is_dir():
            raise SourceError(f"--root {root}: not a directory")
        if name == "celeba":
            from .celeba import CelebASource

            return CelebASource(str(r))
        if name == "helen":
            from .helen import HelenSource

            return HelenSource(str(r))
        from .folder import FolderSource

        return FolderSource(str(r))
    raise SourceError(f"unknown source {name!r}; choose from celeba, helen, folder, hf, demo")
