"""Hugging Face datasets: a `save_to_disk` folder, a local data folder, or a hub id.

The image column is the first `datasets.Image` feature (or one named `image`). Optional columns used
when present: `key` (the sample name), `landmarks` (68x2 in source pixels), `identity`. Split names map
`validation` -> `val`. Offline, a hub id fails with a message that says so instead of a network trace.

An image cell is its bytes or a `path`; a path is read only when it leads (links resolved) into the dataset: the
local folder given, or a hub dataset's downloads. Any other (`/etc/passwd`, `../x`, a link out) is the row's
reject `read_error:PathOutsideDataset`.
"""
from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import numpy as np

from ..schema import SPLITS
from .base import Item, Source, SourceError

SPLIT_NAMES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
log = logging.getLogger(__name__)


class PathOutsideDataset(PermissionError):
    """An image cell's path leads out of the dataset's folders."""


@functools.lru_cache(maxsize=4)
def _open(name: str):
    import datasets

    p = Path(name)
    try:
        if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
            ds = datasets.load_from_disk(str(p))
        else:
            ds = datasets.load_dataset(name)
    except (ConnectionError, OSError) as e:
        if not p.exists():
            raise SourceError(
                f"cannot load Hugging Face dataset {name!r}: not a local folder and the Hub is unreachable "
                f"({type(e).__name__}). Download it where there is network and pass the folder "
                "(datasets' save_to_disk or the repository files), or set HF_DATASETS_OFFLINE=1 with a cached copy."
            ) from None
        raise SourceError(f"cannot load Hugging Face dataset {name!r}: {e}") from None
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    return ds


def dataset_folders(name: str) -> tuple[str, ...]:
    """The folders (links resolved) an image cell's path may lead into, the first one the base of a relative path:
    the local dataset folder, or for a hub id its hub cache folder and the datasets download folder (archives
    extracted there)."""
    if Path(name).exists():
        return (os.path.realpath(name if Path(name).is_dir() else Path(name).parent),)
    from datasets import config
    from huggingface_hub import constants

    return (os.path.realpath(Path(constants.HF_HUB_CACHE) / ("datasets--" + name.replace("/", "--"))),
            os.path.realpath(Path(config.HF_DATASETS_CACHE) / "downloads"))


def read_inside(path: str, folders: tuple[str, ...], key: str) -> bytes:
    """The file at `path` (relative: to `folders[0]`), or PathOutsideDataset when it resolves outside `folders`."""
    full = os.path.realpath(os.path.join(folders[0], path))
    if not any(os.path.commonpath([full, f]) == f for f in folders):
        log.warning("sample %r: image path %r leads outside the dataset (%s): not read", key, path, full)
        raise PathOutsideDataset(f"sample {key!r}: image path {path!r} leads outside the dataset to {full}")
    return Path(full).read_bytes()


def _image_column(features) -> str:
    import datasets

    cols = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    for preferred in ("image", "hr"):  # "hr": a store published by `proui-data publish`
        if preferred in cols:
            return preferred
    if not cols:
        raise SourceError(f"no image column in the dataset (features: {list(features)})")
    return cols[0]


class HFSource(Source):
    name = "hf"

    def __init__(self, hf_name: str):
        self.hf_name = hf_name
        ds = _open(hf_name)
        self._splits = {SPLIT_NAMES.get(s, s): s for s in ds}
        self._folders = dataset_folders(hf_name)

    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self._splits] + sorted(s for s in self._splits if s not in SPLITS)

    def _split(self, split: str):
        import datasets

        ds = _open(self.hf_name)[self._splits[split]]
        col = _image_column(ds.features)
        return ds.cast_column(col, datasets.Image(decode=False)), col

    def items(self, split: str) -> list[Item]:
        if split not in self._splits:
            return []
        ds, col = self._split(split)
        cols = set(ds.column_names)
        keys = ds["key"] if "key" in cols else [f"{split}/{i:08d}" for i in range(len(ds))]
        lms = ds["landmarks"] if "landmarks" in cols else None
        ids = ds["identity"] if "identity" in cols else None
        out = []
        for i, k in enumerate(keys):
            lm = None
            if lms is not None and lms[i] is not None:
                arr = np.asarray(lms[i], dtype=np.float64).reshape(-1, 2)
                lm = arr if np.isfinite(arr).all() else None
            out.append(Item(key=str(k), index=i, split=split, landmarks=lm, identity=int(ids[i]) if ids is not None else -1))
        return out

    def read(self, item: Item) -> bytes:
        ds, col = self._split(item.split)
        cell = ds[item.index][col]
        if cell.get("bytes"):
            return cell["bytes"]
        if cell.get("path"):
            return read_inside(cell["path"], self._folders, item.key)
        raise SourceError(f"sample {item.key!r}: empty image cell")

    def describe(self) -> dict:
        return {"name": self.name, "dataset": self.hf_name}
