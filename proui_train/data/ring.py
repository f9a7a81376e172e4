"""Handing batches from DataLoader workers to the main process: the shared-memory `BatchRing`, the
`StoreLoader` that unpacks it, and `make_loader`.

torch would give every batch a worker yields fresh shared memory (allocated, page-faulted, sent as file
descriptors and mapped again per batch), which for 23 MB batches costs more CPU than reading them.
`make_loader` instead allocates a `BatchRing` once: a few batch-sized slots of shared memory per worker. A
worker writes its batch into a free slot and yields only the slot number; the main process copies the batch
out (into pinned memory on CUDA) and frees the slot, or with `reuse_batches=True` hands out views of the slot
that stay valid until the next batch is asked for.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .plan import Batch, ResumableLayer, SampleCounter
from .shards import Location, Specs, gather_rows, is_string

if TYPE_CHECKING:
    from .dataset import StoreDataset

_POLL_S = 0.0005  # a worker's wait between looks for a free slot
_PARENT_CHECK_S = 1.0  # waiting this long for a slot, a worker checks that the main process still exists


class BatchRing:
    """Shared-memory batch slots that DataLoader workers write batches into; only slot numbers cross processes.

    The ring is allocated once, by the main process before the workers start (they inherit it when the
    dataset is sent to them): `depth` slots per worker, each holding one batch of every numeric array plus
    `index`. A worker writes a batch into a free slot of its own and yields only (worker, slot, generation,
    rows); the main process views the slot and frees it once the batch is copied out (see `StoreLoader`).

    A slot's stamp is the iteration generation that filled it (0: free). Each new iteration bumps the
    generation, so slots filled for batches the DataLoader discarded (an epoch left early) count as free.
    """

    def __init__(self, specs: Specs, batch_size: int, num_workers: int, depth: int) -> None:
        self.batch_size, self.num_workers, self.depth = batch_size, num_workers, depth
        self.layout: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        offset = 0
        for name, (shape, dtype) in [*specs.items(), ("index", ((), np.dtype(np.int64)))]:
            if is_string(dtype):
                continue  # strings travel with the slot number
            self.layout[name] = (offset, shape, np.dtype(dtype))
            nbytes = batch_size * int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            offset += -(-nbytes // 64) * 64  # cache-line aligned arrays
        self.slot_bytes = offset
        self.memory = torch.empty(num_workers * depth * offset, dtype=torch.uint8).share_memory_()
        self.stamps = torch.zeros((num_workers, depth), dtype=torch.int64).share_memory_()
        self.generation = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._views: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_views"] = {}  # numpy views are rebuilt in each process
        return state

    def views(self, worker: int, slot: int) -> dict[str, np.ndarray]:
        """Numpy views (batch_size, ...) of one slot's arrays, made once per process."""
        views = self._views.get((worker, slot))
        if views is None:
            base = (worker * self.depth + slot) * self.slot_bytes
            flat = self.memory.numpy()
            views = {name: np.ndarray((self.batch_size,) + shape, dtype, buffer=flat, offset=base + offset)
                     for name, (offset, shape, dtype) in self.layout.items()}
            self._views[(worker, slot)] = views
        return views

    # ----- main process -----

    def next_generation(self) -> None:
        self.generation += 1

    def current_generation(self) -> int:
        return int(self.generation[0])

    def release(self, worker: int, slot: int, generation: int) -> None:
        # a slot of an earlier generation is already free, and may have been refilled since
        if generation == self.current_generation():
            self.stamps[worker, slot] = 0

    def batch(self, message: Batch) -> Batch:
        """The batch a worker's message points at, as tensors viewing the slot."""
        worker, slot, _ = message["_ring"]
        n = message["_rows"]
        out: Batch = {name: torch.from_numpy(view[:n]) for name, view in self.views(worker, slot).items()}
        out.update({k: v for k, v in message.items() if not k.startswith("_")})  # string arrays
        return out

    # ----- worker -----

    def write(self, worker: int, generation: int, specs: Specs, locations: list[Location],
              rows: np.ndarray) -> Batch:
        """Copy one batch into a free slot of `worker` (waiting for one) and return the message naming it."""
        slot = self._acquire(worker, generation)
        views = self.views(worker, slot)
        message: Batch = {"_ring": (worker, slot, generation), "_rows": len(rows)}
        message.update(gather_rows(specs, locations, {name: views[name] for name in specs if name in views}))
        views["index"][:len(rows)] = rows
        return message

    def _acquire(self, worker: int, generation: int) -> int:
        parent, waited = os.getppid(), 0.0
        while True:
            stamps = self.stamps[worker].tolist()
            for slot, stamp in enumerate(stamps):
                if stamp < generation:  # 0 (released) or left over from an earlier iteration
                    self.stamps[worker, slot] = generation
                    return slot
            time.sleep(_POLL_S)
            waited += _POLL_S
            if waited > _PARENT_CHECK_S:  # the main process holds every slot: make sure it still exists
                if os.getppid() != parent:
                    raise RuntimeError("the main process of this DataLoader worker is gone")
                waited = 0.0


class StoreLoader(ResumableLayer, DataLoader):
    """A DataLoader over a batching StoreDataset that keeps the resume state of what it handed out.

    With workers, batches come through the dataset's `BatchRing`: each is copied out of its slot (into
    pinned memory when `pin_memory`), so batches can be kept like any DataLoader's. With
    `reuse_batches=True` the batch tensors view the slot instead (no copy) and stay valid only until the
    next batch is requested: for consumers that move each batch on at once (to the GPU, into a model).
    """

    def __init__(self, dataset: StoreDataset, reuse_batches: bool = False, **kwargs: Any) -> None:
        self.pin_batches = (bool(kwargs.get("pin_memory")) and dataset._ring is not None
                            and torch.cuda.is_available())
        if dataset._ring is not None:
            kwargs["pin_memory"] = False  # the messages hold no tensors; pinning happens when unpacking
        super().__init__(dataset, batch_size=None, **kwargs)
        self.reuse_batches = reuse_batches
        self._count = SampleCounter()

    def __iter__(self) -> Iterator[Batch]:
        ring = self.dataset._ring
        if ring is None or self.num_workers == 0:
            return self._count.wrap(self.dataset, super().__iter__())
        ring.next_generation()  # before the workers (re)start: what they filled before is now free
        return self._count.wrap(self.dataset, self._unpack(ring, super().__iter__()))

    def _unpack(self, ring: BatchRing, messages: Iterator[Batch]) -> Iterator[Batch]:
        held = None
        try:
            for message in messages:
                if held is not None:
                    ring.release(*held)
                    held = None
                batch = ring.batch(message)
                if self.reuse_batches and not self.pin_batches:
                    held = message["_ring"]
                else:
                    copy = (lambda t: t.pin_memory()) if self.pin_batches else (lambda t: t.clone())
                    batch = {k: copy(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                    ring.release(*message["_ring"])
                yield batch
        finally:
            if held is not None:
                ring.release(*held)


def make_loader(
    dataset: StoreDataset,
    batch_size: int,
    num_workers: int = 2,
    drop_last: bool = False,
    multiprocessing_context: str = "spawn",
    prefetch_factor: int = 2,
    pin_memory: bool | None = None,
    persistent_workers: bool = True,
    reuse_batches: bool = False,
) -> StoreLoader:
    """A DataLoader yielding batches of `batch_size` from `dataset` (which is set to batch inside its workers).

    Workers start with `spawn` (or `forkserver`; `fork` deadlocks with zarr's I/O thread) and persist across
    epochs; memory is pinned when CUDA is available. Workers hand batches over through a `BatchRing`
    (shared memory allocated once) rather than torch's per-batch shared memory; `reuse_batches` skips the
    copy out of the ring (see `StoreLoader`). `num_workers=0` streams in-process: shard reads and batch
    assembly run in background threads (zstd and numpy copies release the GIL).
    """
    if multiprocessing_context not in ("spawn", "forkserver"):
        raise ValueError(f"multiprocessing_context must be 'spawn' or 'forkserver', not "
                         f"{multiprocessing_context!r} (fork deadlocks with zarr's event-loop thread)")
    if dataset.batch_size not in (None, batch_size) or (dataset.batch_size and dataset.drop_last != drop_last):
        raise ValueError(f"dataset batches by {dataset.batch_size} (drop_last={dataset.drop_last}); "
                         f"the loader asks for {batch_size} (drop_last={drop_last})")
    dataset.batch_size, dataset.drop_last = batch_size, drop_last
    kwargs: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory,
    }
    dataset._ring = None
    if num_workers > 0:
        kwargs.update(multiprocessing_context=multiprocessing_context, prefetch_factor=prefetch_factor,
                      persistent_workers=persistent_workers)
        # a worker has at most prefetch_factor batches in flight, and the consumer holds one
        dataset._ring = BatchRing(dataset._specs, batch_size, num_workers, depth=prefetch_factor + 2)
    return StoreLoader(dataset, reuse_batches=reuse_batches, **kwargs)
