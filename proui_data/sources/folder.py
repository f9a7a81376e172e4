"""Any folder of images, recursively; faces are found by the detector. Everything goes to `train`.

Every entry under the root is accounted for: an image file is a sample (a broken one is a rejected row), any
other file, link or image-named directory is skipped with a reason (`skipped`, recorded in the store). A file
name that is not UTF-8 keeps its photo: its key escapes the bytes that are not (`name_key`).
"""
from __future__ import annotations

from pathlib import Path

from .base import FolderScan, Item, Source, SourceError, name_key, scan_folder


class FolderSource(Source):
    name = "folder"

    def __init__(self, root: str):
        self.root = root
        self._scan: FolderScan | None = None

    def __getstate__(self) -> dict:
        # workers only `read`: the scan stays on the driver
        state = self.__dict__.copy()
        state["_scan"] = None
        return state

    def scan(self) -> FolderScan:
        if self._scan is None:
            self._scan = scan_folder(Path(self.root))
        return self._scan

    def splits(self) -> list[str]:
        return ["train"]

    def items(self, split: str) -> list[Item]:
        if split != "train":
            return []
        root, scan = Path(self.root), self.scan()
        if not scan.images:
            skipped = ", ".join(f"{r}: {n}" for r, n in scan.counts().items()) or "nothing"
            raise SourceError(f"{name_key(str(root))}: no image files found, recursively (skipped {skipped})")
        return [Item(key=name_key(n), path=str(root / n)) for n in scan.images]

    def skipped(self) -> dict[str, list[str]]:
        return self.scan().skipped

    def describe(self) -> dict:
        return {"name": self.name, "root": name_key(str(Path(self.root).resolve()))}
