"""CelebA in its official layout.

Images: `img_align_celeba/` (aligned 178x218) or `img_celeba/` (in the wild), directly under the root or
under `Img/`. Annotations, each optional, under `Anno/` and `Eval/` or directly under the root:
`identity_CelebA.txt`, `list_attr_celeba.txt`, `list_landmarks_align_celeba.txt` (aligned images),
`list_landmarks_celeba.txt` and `list_bbox_celeba.txt` (in-the-wild images), `list_eval_partition.txt`.
Missing rows are allowed (a truncated attribute file leaves later images with unknown attributes); the
attribute file may carry a suffix (`list_attr_celeba_first20000.txt`, as the public truncated copies do) when no
`list_attr_celeba.txt` is there. Images with no partition row are left out of every split, and the count is
reported. `holdout_labelled="attr"` moves every image with an attribute row into a split of that name, out of
its official one: the truncated file labels only training images, and an attribute task evaluated on a
generator's outputs needs faces the generator never trained on.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..align import CELEBA_ALIGNED_BOX
from ..schema import SPLITS
from .base import Item, Source, SourceError

log = logging.getLogger(__name__)
PARTITION = {"0": "train", "1": "val", "2": "test"}


def _find(root: Path, name: str, subdirs: tuple[str, ...]) -> Path | None:
    for d in subdirs:
        p = root / d / name if d else root / name
        if p.exists():
            return p
    return None


def read_table(path: Path, header: bool) -> tuple[list[str], dict[str, list[str]]]:
    """Parse a CelebA list file into (column names, {file name: values}).

    With `header`, the file starts with a count line and a line of column names (the bbox file names its
    key column too). Malformed rows raise SourceError with file and line number; a count line that
    disagrees with the rows (a truncated file) is only logged.
    """
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    names: list[str] = []
    start = 0
    declared = None
    if header:
        if len(lines) < 2:
            raise SourceError(f"{path}: expected a count line and a header line")
        try:
            declared = int(lines[0].strip())
        except ValueError:
            raise SourceError(f"{path}:1: expected the number of rows, got {lines[0][:60]!r}") from None
        names = lines[1].split()
        if names and names[0] in ("image_id", "image_name", "filename"):
            names = names[1:]
        start = 2
    rows: dict[str, list[str]] = {}
    for i, line in enumerate(lines[start:], start=start + 1):
        parts = line.split()
        if not parts:
            continue
        if names and len(parts) != len(names) + 1:
            raise SourceError(f"{path}:{i}: expected {len(names) + 1} fields, got {len(parts)}")
        if not names and len(parts) < 2:
            raise SourceError(f"{path}:{i}: expected '<file> <value>', got {line[:60]!r}")
        rows[parts[0]] = parts[1:]
    if declared is not None and declared != len(rows):
        log.warning("%s declares %d rows but has %d; the rest are treated as unknown", path, declared, len(rows))
    return names, rows


def _find_prefixed(root: Path, stem: str, subdirs: tuple[str, ...]) -> Path | None:
    """The first `<stem>*.txt` (sorted) in the first of `subdirs` that has one."""
    for d in subdirs:
        found = sorted((root / d).glob(f"{stem}*.txt")) if (root / d).is_dir() else []
        if found:
            return found[0]
    return None


class CelebASource(Source):
    name = "celeba"

    def __init__(self, root: str, holdout_labelled: str | None = None):
        self.root = root
        if holdout_labelled in SPLITS:
            raise SourceError(f"holdout split {holdout_labelled!r} would mix with the official {holdout_labelled} split")
        self.holdout_labelled = holdout_labelled
        r = Path(root)
        self.image_dir = None
        for d in ("img_align_celeba", "Img/img_align_celeba", "img_celeba", "Img/img_celeba"):
            if (r / d).is_dir():
                self.image_dir = str(r / d)
                break
        if self.image_dir is None:
            raise SourceError(
                f"{root}: not a CelebA root: expected img_align_celeba/ or img_celeba/ (optionally under Img/)"
            )
        self.aligned = "align" in Path(self.image_dir).name
        sub = ("Anno", "", "Eval")
        self._paths = {
            "identity": _find(r, "identity_CelebA.txt", sub),
            "attributes": _find(r, "list_attr_celeba.txt", sub) or _find_prefixed(r, "list_attr_celeba", sub),
            "landmarks": _find(r, "list_landmarks_align_celeba.txt" if self.aligned else "list_landmarks_celeba.txt", sub),
            "bbox": None if self.aligned else _find(r, "list_bbox_celeba.txt", sub),
            "partition": _find(r, "list_eval_partition.txt", ("Eval", "", "Anno")),
        }
        if self._paths["attributes"] is not None:
            self.attribute_names = tuple(read_table(self._paths["attributes"], header=True)[0])
        # The aligned images put the face in a fixed place: a fallback box for the shape predictor.
        if self.aligned:
            self.prior_box = CELEBA_ALIGNED_BOX
        self._cache: dict | None = None

    def __getstate__(self) -> dict:
        # The tables (200k rows, ~9 MB pickled, seconds to pickle and unpickle) are rebuilt on demand: a
        # source shipped to Dask workers, which only call `read`, travels in under 1 KB.
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def _tables(self) -> dict:
        if self._cache is None:
            t: dict = {}
            for k, header in (("identity", False), ("attributes", True), ("landmarks", True), ("bbox", True),
                              ("partition", False)):
                p = self._paths[k]
                t[k] = read_table(p, header)[1] if p is not None else None
            files = sorted(p.name for p in Path(self.image_dir).iterdir() if p.suffix.lower() in (".jpg", ".png"))
            if not files:
                raise SourceError(f"{self.image_dir}: no images")
            t["files"] = files
            self._cache = t
        return self._cache

    def splits(self) -> list[str]:
        part = self._tables()["partition"]
        held = [self.holdout_labelled] if self.holdout_labelled and self._tables()["attributes"] else []
        if part is None:
            return ["train"] + held
        present = {PARTITION.get(v[0]) for f, v in part.items()}
        return [s for s in SPLITS if s in present] + held

    def _split_of(self, name: str) -> str | None:
        t = self._tables()
        if self.holdout_labelled and t["attributes"] is not None and name in t["attributes"]:
            return self.holdout_labelled
        if t["partition"] is None:
            return "train"
        return PARTITION.get(t["partition"][name][0]) if name in t["partition"] else None

    def unassigned(self) -> int:
        t = self._tables()
        return 0 if t["partition"] is None else sum(f not in t["partition"] for f in t["files"])

    def items(self, split: str) -> list[Item]:
        t = self._tables()
        out = []
        for f in t["files"]:
            if self._split_of(f) != split:
                continue
            lm = box = attrs = None
            if t["landmarks"] is not None and f in t["landmarks"]:
                lm = np.asarray(t["landmarks"][f], dtype=np.float64).reshape(-1, 2)
            if t["bbox"] is not None and f in t["bbox"]:
                x, y, w, h = (float(v) for v in t["bbox"][f])
                box = (x, y, x + w, y + h)
            if t["attributes"] is not None and f in t["attributes"]:
                attrs = np.asarray(t["attributes"][f], dtype=np.int8)
            identity = int(t["identity"][f][0]) if t["identity"] is not None and f in t["identity"] else -1
            out.append(Item(key=f, path=str(Path(self.image_dir) / f), landmarks=lm, box=box, identity=identity,
                            attributes=attrs))
        return out

    def describe(self) -> dict:
        return {
            "name": self.name,
            "root": str(Path(self.root).resolve()),
            "images": Path(self.image_dir).name,
            "annotations": {k: (str(p.name) if p else None) for k, p in self._paths.items()},
            "unassigned_images": self.unassigned(),
            **({"holdout_labelled": self.holdout_labelled} if self.holdout_labelled else {}),
        }
