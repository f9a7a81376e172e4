"""The source interface: `Source`, the `Item` it enumerates, and `SourceError`; `scan_folder` for folders."""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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
    # With recipe detect.faces = "all": the face of the photo this row is, as the build's detection pass found it
    # (HOG-framed box in decoded-image pixels, and the chain stage that found it, "none" when it found no face);
    # None and "": not from a detection pass (process_item finds the largest face itself).
    face_box: tuple[float, float, float, float] | None = None
    face_stage: str = ""
    # With detect.faces = "all": the key of the photo this row is a face of (its rows are consecutive, and a source
    # reads them all as that photo); "": the row's own key.
    photo_key: str = ""

    @property
    def photo(self) -> str:
        """The key of the photo this row reads: `photo_key` for a face of a group photo, else the row's own key."""
        return self.photo_key or self.key


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

    def skipped(self) -> dict[str, list[str]] | None:
        """Entries the source saw but did not make samples of (reason -> source-relative names); None when the
        source does not enumerate files."""
        return None


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted by relative path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


# Pillow decodes these (a GIF as its first frame); other files are sniffed for an image header.
FOLDER_SUFFIXES = IMAGE_SUFFIXES + (".gif", ".jpe", ".jfif", ".pbm", ".pnm", ".tga", ".ico", ".dib", ".jp2")
# Reasons a folder entry is not a sample, as `proui-data info` lists them.
SKIP_REASONS = ("not_an_image", "unreadable", "dangling_link", "directory", "directory_link", "special_file",
                "name_clash")
# Paths kept per reason in the store's attributes (the counts are exact).
SKIP_EXAMPLES = 20


def name_key(name: str) -> str:
    r"""The text key of a file name as `os` gives it: the name itself when it is UTF-8; else each byte that is not
    UTF-8 (a surrogate of `os.fsdecode`) written as `\xNN`: the file `b"bad\xe9.jpg"` is the key `bad\xe9.jpg`.
    Only bytes 80-ff are escaped: `key_name` gives the name back, unless a UTF-8 name literally holds `\x80` to
    `\xff` (a clash `scan_folder` skips as `name_clash`)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_ESCAPED_BYTE = re.compile(rb"\\x([89a-f][0-9a-f])")


def key_name(key: str) -> str:
    """The file name (in `os.fsdecode`'s form) that `name_key` wrote as `key`."""
    return os.fsdecode(_ESCAPED_BYTE.sub(lambda m: bytes([int(m[1], 16)]), key.encode()))


@dataclass(frozen=True)
class FolderScan:
    images: list[str]  # relative POSIX paths as `os` gives them (a name that is not UTF-8 holds surrogates), sorted
    skipped: dict[str, list[str]]  # reason -> relative POSIX paths, sorted
    entries: int  # files, links and image-named directories seen: len(images) + skipped, always

    def counts(self) -> dict[str, int]:
        return {r: len(v) for r, v in sorted(self.skipped.items())}


def _is_image_file(path: str) -> bool:
    """Whether Pillow recognises the file's header (it reads only the first bytes)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except Image.DecompressionBombError:
        return True  # an image; decode rejects it as decode:too_large
    except OSError as e:
        if isinstance(e, UnidentifiedImageError):
            return False
        raise  # unreadable
    except Exception:  # noqa: BLE001 - a plugin choking on a stranger's header must not stop the scan
        return False


def _classify(path: str, name: str, st: os.stat_result | None) -> str | None:
    """None for an image, else the skip reason of one non-directory entry (`st`: None for a dangling link)."""
    if st is None:
        return "dangling_link"
    if not stat.S_ISREG(st.st_mode):
        return "special_file"  # a FIFO or device: opening it could block
    if os.path.splitext(name)[1].lower() in FOLDER_SUFFIXES:
        return None  # decode tells a broken one apart, as a rejected row
    try:
        return None if _is_image_file(path) else "not_an_image"
    except OSError:
        return "unreadable"


def scan_folder(folder: Path) -> FolderScan:
    """Every entry under `folder`, recursively: image files, and every other file with why it is skipped.

    Directory links are not followed (cycles); plain directories are walked and counted only when their name
    looks like an image file (`x.jpg/`), so that every image-like name is accounted for.
    """
    images: list[str] = []
    skipped: dict[str, list[str]] = {}
    root = str(folder)

    def unreadable_dir(e: OSError) -> None:
        skipped.setdefault("unreadable", []).append(_key(root, e.filename or root))

    for here, dirs, files in os.walk(root, onerror=unreadable_dir, followlinks=False):
        for d in dirs:
            path, key = os.path.join(here, d), _key(root, os.path.join(here, d))
            if os.path.islink(path):
                skipped.setdefault("directory_link", []).append(key)
            elif os.path.splitext(d)[1].lower() in FOLDER_SUFFIXES:
                skipped.setdefault("directory", []).append(key)
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(here, d)))
        for f in files:
            path, key = os.path.join(here, f), _key(root, os.path.join(here, f))
            try:
                st: os.stat_result | None = os.stat(path)
            except FileNotFoundError:
                st = None
            except OSError:
                skipped.setdefault("unreadable", []).append(key)
                continue
            reason = _classify(path, f, st)
            (images if reason is None else skipped.setdefault(reason, [])).append(key)
    images, clashes = _unique_keys(images)
    if clashes:
        skipped["name_clash"] = clashes
    skipped = {r: sorted(v, key=_parts) for r, v in sorted(skipped.items())}
    n = len(images) + sum(len(v) for v in skipped.values())
    return FolderScan(sorted(images, key=_parts), skipped, n)


def _unique_keys(names: list[str]) -> tuple[list[str], list[str]]:
    """(names whose `name_key` is theirs alone, the others): of names with one key, a UTF-8 name (the key itself)
    is kept, else the first in sorted order."""
    kept: dict[str, str] = {}
    clashes = []
    for n in sorted(names, key=lambda n: (name_key(n) != n, _parts(n))):
        if name_key(n) in kept:
            clashes.append(n)
        else:
            kept[name_key(n)] = n
    return list(kept.values()), clashes


def _key(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _parts(key: str) -> list[str]:
    # the order of sorted Paths, which folder stores have always used
    return key.split("/")


def skip_summary(skipped: dict[str, list[str]], images: int) -> dict[str, Any]:
    """What a store records of the source's entries: images found, exact skip counts, the first names per reason
    (as keys: `name_key`)."""
    return {"images": images, "counts": {r: len(v) for r, v in sorted(skipped.items())},
            "examples": {r: [name_key(n) for n in v[:SKIP_EXAMPLES]] for r, v in sorted(skipped.items())}}
