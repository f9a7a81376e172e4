"""The store schema: one `Field` declaration per per-sample array.

Adding an array to every store is one `Field(...)` line here plus filling `row[name]` in the pipeline.
Every array shares the sample axis first and the same shard size along it, so shard k is the same row
range in every array and one Dask task can own it whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMAT_VERSION = 1
HR_SIZE = 128  # side of the aligned HR face, pixels (the LR input is HR_SIZE // 8)
HEATMAP_SIZE = 64  # side of a stored landmark heatmap, pixels
SPLITS = ("train", "val", "test")  # the standard splits, in the order they are listed
ALL_SPLITS = "all"  # `--split all`: every split the source has


@dataclass(frozen=True)
class Field:
    name: str
    shape: tuple[int, ...]  # per sample
    dtype: str  # numpy dtype name, or "str" for variable-length UTF-8
    dims: tuple[str, ...]  # dimension names after "sample" (xarray reads them)
    fill: object = 0
    doc: str = ""

    def empty(self, n: int) -> np.ndarray:
        """A block of n rows filled with the field's fill value."""
        if self.dtype == "str":
            return np.full((n,) + self.shape, self.fill, dtype=object)
        return np.full((n,) + self.shape, self.fill, dtype=self.dtype)


def core_fields(n_attributes: int = 0, hr_size: int = HR_SIZE, scale: int = 8) -> list[Field]:
    """Arrays every store has: the aligned face, its LR input, landmarks and bookkeeping."""
    lr_size = hr_size // scale
    fields = [
        Field("hr", (hr_size, hr_size, 3), "uint8", ("y", "x", "rgb"), doc="aligned face, RGB"),
        Field("lr", (lr_size, lr_size, 3), "uint8", ("y_lr", "x_lr", "rgb"), doc="8x downsample of hr"),
        Field("landmarks", (68, 2), "float32", ("point", "xy"), np.nan, "iBUG 68 points in HR pixels"),
        Field("transform", (2, 3), "float32", ("row", "col"), np.nan, "affine source pixels -> HR pixels"),
        Field("key", (), "str", (), "", "source-relative file name"),
        Field("valid", (), "bool", (), False, "False: rejected, see reject_reason"),
        Field("reject_reason", (), "str", (), "", "empty when valid"),
        Field("identity", (), "int32", (), -1, "identity label, -1 unknown"),
        Field("landmark_source", (), "str", (), "", "annotation | dlib-hog | dlib-prior-box | ..."),
        Field("padded", (), "float32", (), np.nan, "share of hr outside the source photo (recipe align.border)"),
    ]
    if n_attributes:
        fields.append(Field("attributes", (n_attributes,), "int8", ("attribute",), 0, "+1 / -1, 0 unknown"))
    return fields


def prior_fields(heatmap_size: int = HEATMAP_SIZE, hr_size: int = HR_SIZE) -> list[Field]:
    """Facial-prior arrays (recipe `priors`): landmark heatmaps and the parsing map."""
    return [
        Field("heatmaps", (68, heatmap_size, heatmap_size), "uint8", ("point", "y_hm", "x_hm"), 0,
              "Gaussian landmark heatmaps, peak 255"),
        Field("parsing", (hr_size, hr_size), "uint8", ("y", "x"), 0, "11 Helen classes"),
        Field("parsing_source", (), "str", (), "", "helen-labels | celebamask | landmarks"),
    ]


def occlusion_fields(hr_size: int = HR_SIZE, scale: int = 8) -> list[Field]:
    """Occlusion arrays (recipe `occlusion`); hr, lr, landmarks and parsing stay clean."""
    lr_size = hr_size // scale
    return [
        Field("lr_occluded", (lr_size, lr_size, 3), "uint8", ("y_lr", "x_lr", "rgb"), doc="occluded LR input"),
        Field("occlusion_mask", (hr_size, hr_size), "uint8", ("y", "x"), 0, "alpha, 255 = occluded"),
        Field("occlusion_kind", (), "str", (), ""),
        Field("occlusion_anchor", (), "str", (), ""),
        Field("occlusion_ratio", (), "float32", (), np.nan, "achieved ratio of the face region"),
        Field("occlusion_variant", (), "int16", (), 0, "k of K occlusion variants of the same face"),
    ]
