"""Moving batches to the device and into the model's layouts, and the one conversion between stored pixels
(uint8, 0..255) and the model's range ([-1, 1]) that training, evaluation and inference share.

The dataset yields host tensors as stored: images (B, H, W, C) uint8, `landmarks` float32, masks and
`parsing` (B, H, W) uint8, `heatmaps` (B, 68, h, w) uint8, plus `index` int64 (the row in the split).
`DeviceBatcher` moves batches to the device and converts there: images to (B, C, H, W) float in [-1, 1], masks
to (B, 1, H, W) float in [0, 1], heatmaps to float in [0, 1], `parsing` to int64 class labels.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from .plan import Batch, ResumableLayer, SampleCounter

if TYPE_CHECKING:
    from .dataset import StoreDataset

# How DeviceBatcher converts each array on the device; arrays not named here are moved unchanged.
CONVERSIONS = {
    "hr": "image", "lr": "image", "lr_occluded": "image",
    "occlusion_mask": "mask", "heatmaps": "unit", "parsing": "labels",
}


def from_uint8(x: torch.Tensor) -> torch.Tensor:
    """0..255 (any dtype) -> float32 in [-1, 1], in a new tensor (strides kept)."""
    return x.to(torch.float32, copy=True).div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> 0..255 float, clamped and rounded like a saved PNG."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round()


def to_model_layout(batch: Batch, conversions: dict[str, str] = CONVERSIONS) -> Batch:
    """Convert a device batch: images (B,H,W,C) uint8 -> (B,C,H,W) float in [-1,1]; masks (B,H,W) uint8 ->
    (B,1,H,W) float in [0,1]; `unit` arrays uint8 -> float in [0,1]; `labels` -> int64. Others unchanged."""
    out = dict(batch)
    for name, kind in conversions.items():
        if name not in batch:
            continue
        value = batch[name]
        if kind == "image":
            out[name] = from_uint8(value.permute(0, 3, 1, 2)).contiguous()
        elif kind == "mask":
            out[name] = value.unsqueeze(1).float().div_(255.0)
        elif kind == "unit":
            out[name] = value.float().div_(255.0)
        elif kind == "labels":
            out[name] = value.long()
        else:
            raise ValueError(f"unknown conversion {kind!r} for {name!r}")
    return out


class DeviceBatcher(ResumableLayer):
    """Iterate a loader, copy each batch to `device` one batch ahead, convert it there, run augment hooks.

    On CUDA the copy and conversion of the next batch run on a side stream while the current one is used.
    `augment` is a list of callables `batch -> batch` run on the device after conversion (e.g. a flip).
    Keeps its own resume state: `state_dict()` counts only the batches it handed out, not the one prefetched.
    Its batches never share memory with the loader's, so it can sit on a loader made with `reuse_batches`.
    """

    def __init__(
        self,
        loader: Iterable[Batch],
        device: str | torch.device = "cpu",
        augment: Sequence[Callable[[Batch], Batch]] = (),
        conversions: dict[str, str] = CONVERSIONS,
    ) -> None:
        self.loader, self.device = loader, torch.device(device)
        self.augment, self.conversions = list(augment), conversions
        self._count = SampleCounter()

    @property
    def dataset(self) -> StoreDataset:
        return self.loader.dataset if isinstance(self.loader, DataLoader) else self.loader

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers if isinstance(self.loader, DataLoader) else 1

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        return self._count.wrap(self.dataset, self._batches())

    def _batches(self) -> Iterator[Batch]:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        it = iter(self.loader)
        upcoming = self._next_on_device(it, stream)
        while upcoming is not None:
            batch = upcoming
            if stream is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(stream)
                for v in batch.values():
                    if isinstance(v, torch.Tensor):
                        v.record_stream(current)  # the side stream's allocator must not reuse it early
            upcoming = self._next_on_device(it, stream)
            for hook in self.augment:
                batch = hook(batch)
            yield batch

    def _next_on_device(self, it: Iterator[Batch], stream: torch.cuda.Stream | None) -> Batch | None:
        """The loader's next batch moved and converted (on `stream` when given), or None at the end."""
        batch = next(it, None)
        if batch is None:
            return None
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            moved = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
            out = to_model_layout(moved, self.conversions)
        # a loader with reuse_batches refills the host batch's memory once the next batch is asked for: on the
        # CPU, where .to() does not copy, whatever no conversion replaced must be copied now
        for k, v in out.items():
            host = batch.get(k)
            if isinstance(v, torch.Tensor) and isinstance(host, torch.Tensor) and v.numel() \
                    and v.untyped_storage().data_ptr() == host.untyped_storage().data_ptr():
                out[k] = v.clone()
        return out
