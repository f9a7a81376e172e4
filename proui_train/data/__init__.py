"""Streaming loader over a proui zarr store: whole-shard reads, a multi-shard shuffle buffer, exact DDP and
worker splits, and mid-epoch resume.

- `plan.py`: the epoch plan (shard order, rank and worker shares, shuffle buffers) and the resume state.
- `shards.py`: opening a store and a split (`open_store`, `open_split`: the one way every reader opens them,
  with one-line `StoreError`s), whole-shard reads and their direct decode.
- `dataset.py`: `StoreDataset`, which iterates the plan over the shards.
- `ring.py`: the shared-memory `BatchRing` that hands batches from DataLoader workers over, and `make_loader`.
- `device.py`: `DeviceBatcher` (to the device, into the model's layouts) and the uint8 <-> [-1, 1] conversion.

Typical use: `DeviceBatcher(make_loader(StoreDataset(store, arrays=...), batch_size=64), "cuda")`. Workers
start with `spawn` (or `forkserver`): zarr's I/O thread does not survive `fork`.
"""
from .dataset import DEFAULT_ARRAYS, StoreDataset
from .device import CONVERSIONS, DeviceBatcher, from_uint8, to_model_layout, to_uint8
from .plan import Batch, Segment
from .ring import BatchRing, StoreLoader, make_loader
from .shards import StoreError, gather_rows, open_split, open_store, shard_decoder, store_template

__all__ = [
    "CONVERSIONS", "DEFAULT_ARRAYS", "Batch", "BatchRing", "DeviceBatcher", "Segment", "StoreDataset",
    "StoreError", "StoreLoader", "from_uint8", "gather_rows", "make_loader", "open_split", "open_store", "shard_decoder",
    "store_template", "to_model_layout", "to_uint8",
]
