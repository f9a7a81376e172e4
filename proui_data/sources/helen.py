"""Helen in the 300-W release layout, and the SmithCVPR2013 parsing layout when present.

300-W: `<root>/{trainset,testset}/<name>.jpg` next to `<name>.pts` (68 points, `version: 1`,
`n_points: 68`, `{ … }`; 1-based Matlab coordinates, so 1 is subtracted). Without those folders every image
under the root goes to `train`. SmithCVPR2013: `<root>/images/<name>.jpg` with
`<root>/labels/<name>/<name>_lbl00.png … _lbl10.png`; its split lists (`exemplars.txt` train, `tuning.txt`
val, `testing.txt` test, rows `index , name`) are used when the 300-W folders are absent.
A 300-W image `<name>.jpg` finds its labels as `labels/<name>/` (or `labels/<name without _N>/`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..schema import SPLITS
from .base import Item, Source, SourceError, list_images

FOLDERS = {"trainset": "train", "testset": "test"}
SMITH_LISTS = {"exemplars.txt": "train", "tuning.txt": "val", "testing.txt": "test"}


def read_pts(path: Path) -> np.ndarray:
    """Read a 300-W `.pts` file into (n,2) float64, 0-based pixel coordinates."""
    text = path.read_text(encoding="utf-8", errors="replace")
    header, sep, rest = text.partition("{")
    body, sep2, _ = rest.partition("}")
    if not sep or not sep2:
        raise SourceError(f"{path}: not a .pts file (missing '{{' … '}}')")
    n = None
    for line in header.splitlines():
        if line.strip().startswith("n_points"):
            try:
                n = int(line.split(":")[1])
            except (IndexError, ValueError):
                raise SourceError(f"{path}: bad n_points line {line!r}") from None
    try:
        values = np.array(body.split(), dtype=np.float64)
    except ValueError:
        raise SourceError(f"{path}: non-numeric coordinates") from None
    if values.size % 2 or (n is not None and values.size != 2 * n):
        raise SourceError(f"{path}: {values.size} numbers for n_points={n}")
    return values.reshape(-1, 2) - 1.0


def _label_dir(root: Path, stem: str) -> str | None:
    for name in (stem, stem.rsplit("_", 1)[0]):
        d = root / "labels" / name
        if (d / f"{name}_lbl00.png").is_file():
            return str(d)
    return None


class HelenSource(Source):
    name = "helen"

    def __init__(self, root: str):
        self.root = root
        r = Path(root)
        self.folders = {s: r / f for f, s in FOLDERS.items() if (r / f).is_dir()}
        self.smith = (r / "images").is_dir() and (r / "labels").is_dir()
        if not self.folders and not self.smith and not any(r.glob("*.pts")):
            raise SourceError(
                f"{root}: not a Helen root: expected trainset/ and testset/ with .jpg + .pts (300-W), "
                "or images/ + labels/ (SmithCVPR2013)"
            )

    def _smith_splits(self) -> dict[str, str]:
        out = {}
        for fname, split in SMITH_LISTS.items():
            p = Path(self.root) / fname
            if p.is_file():
                for line in p.read_text().splitlines():
                    parts = [x.strip() for x in line.split(",")]
                    if len(parts) == 2 and parts[1]:
                        out[parts[1]] = split
        return out

    def splits(self) -> list[str]:
        if self.folders:
            return [s for s in SPLITS if s in self.folders]
        if self.smith and self._smith_splits():
            return [s for s in SPLITS if s in set(self._smith_splits().values())]
        return ["train"]

    def items(self, split: str) -> list[Item]:
        r = Path(self.root)
        if self.folders:
            folder = self.folders.get(split)
            files = list_images(folder) if folder is not None else []
        elif self.smith:
            lists = self._smith_splits()
            files = [p for p in list_images(r / "images") if (lists.get(p.stem, "train") if lists else "train") == split]
        else:
            files = list_images(r) if split == "train" else []
        out = []
        for p in files:
            pts = p.with_suffix(".pts")
            lm = read_pts(pts) if pts.is_file() else None
            if lm is not None and lm.shape != (68, 2):
                raise SourceError(f"{pts}: expected 68 points, got {lm.shape[0]}")
            labels = _label_dir(r, p.stem) if (r / "labels").is_dir() else None
            out.append(Item(key=p.relative_to(r).as_posix(), path=str(p), landmarks=lm, labels=labels))
        return out

    def describe(self) -> dict:
        return {"name": self.name, "root": str(Path(self.root).resolve()),
                "layout": "300-W" if self.folders else ("SmithCVPR2013" if self.smith else "flat")}
