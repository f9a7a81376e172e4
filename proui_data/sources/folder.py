"""Any folder of images, recursively; faces are found by the detector. Everything goes to `train`."""
from __future__ import annotations

from pathlib import Path

from . import Item, Source, SourceError, list_images


class FolderSource(Source):
    name = "folder"

    def __init__(self, root: str):
        self.root = root

    def splits(self) -> list[str]:
        return ["train"]

    def items(self, split: str) -> list[Item]:
        if split != "train":
            return []
        root = Path(self.root)
        files = list_images(root)
        if not files:
            raise SourceError(f"{root}: no image files found (looked for jpg/png/bmp/webp/tif recursively)")
        return [Item(key=p.relative_to(root).as_posix(), path=str(p)) for p in files]

    def describe(self) -> dict:
        return {"name": self.name, "root": str(Path(self.root).resolve())}
