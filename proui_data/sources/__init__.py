"""Sources: enumerate a dataset's samples (cheap, on the driver) and read their bytes (in the workers).

A source is a small picklable object: Dask ships it to every task. `items(split)` is sorted and
deterministic, so row order, and with it every seed, is independent of the scheduler.
"""
from __future__ import annotations

from pathlib import Path

from .base import IMAGE_SUFFIXES, Item, Source, SourceError, list_images
from .celeba import CelebASource
from .demo import DemoSource
from .folder import FolderSource
from .helen import HelenSource
from .hf import HFSource

__all__ = ["IMAGE_SUFFIXES", "SOURCES", "Item", "Source", "SourceError", "get_source", "list_images"]

# CLI name -> source class, in the order `--source` lists them. celeba, helen and folder read a folder
# (`--root`), hf a hub id or save_to_disk folder (`--name`); demo needs nothing.
SOURCES: dict[str, type[Source]] = {
    "celeba": CelebASource,
    "helen": HelenSource,
    "folder": FolderSource,
    "hf": HFSource,
    "demo": DemoSource,
}


def get_source(name: str, root: str | None = None, hf_name: str | None = None,
               holdout_labelled: str | None = None) -> Source:
    """Instantiate a source by its CLI name (`holdout_labelled`: celeba only, see `CelebASource`)."""
    if holdout_labelled and name != "celeba":
        raise SourceError(f"--holdout-labelled is for --source celeba, not {name}")
    if name not in SOURCES:
        raise SourceError(f"unknown source {name!r}; choose from {', '.join(SOURCES)}")
    if name == "demo":
        return DemoSource()
    if name == "hf":
        if not hf_name:
            raise SourceError("--source hf needs --name (a hub id or a save_to_disk folder)")
        return HFSource(hf_name)
    if not root:
        raise SourceError(f"--source {name} needs --root DIR")
    r = Path(root)
    if not r.is_dir():
        raise SourceError(f"--root {root}: not a directory")
    if name == "celeba":
        return CelebASource(str(r), holdout_labelled)
    return SOURCES[name](str(r))
