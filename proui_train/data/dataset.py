"""`StoreDataset`: one split of a proui store as an IterableDataset that follows the epoch plan (`plan.py`),
reads whole shards (`shards.py`) and, inside DataLoader workers, hands batches over through a `BatchRing`
(`ring.py`)."""
from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from . import plan
from .plan import Batch, EpochControl, SampleCounter, Segment, SplitRows
from .shards import (Location, SegmentWindow, ShardReader, expected_objects, gather_rows, inspect_split, is_string,
                     open_split)

if TYPE_CHECKING:
    from .ring import BatchRing

DEFAULT_ARRAYS = ("hr", "lr_occluded", "landmarks")


def _distributed_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StoreDataset(IterableDataset):
    """Stream one split of a proui store as dicts of tensors (see `plan.py` for the epoch plan).

    store: local path, fsspec URL (`memory://`, `s3://`, `http://...`) or a zarr Store.
    arrays: names of the arrays to read (only these are read); `index` (the row in the split) is always added.
    batch_size: yield whole batches (dicts of (B, ...) tensors; string arrays as lists); None yields samples.
    shuffle_shards: shards in the shuffle buffer (the buffer holds about shuffle_shards * shard_size samples).
    rank, world_size: default to torch.distributed's when it is initialised (make the dataset after
    init_process_group), else 0 and 1.
    """

    def __init__(
        self,
        store: Any,
        split: str = "train",
        arrays: Sequence[str] = DEFAULT_ARRAYS,
        seed: int = 0,
        shuffle: bool = True,
        shuffle_shards: int = 8,
        batch_size: int | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict | None = None,
    ) -> None:
        super().__init__()
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if rank is None:
            rank, world_size = _distributed_rank_world()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if shuffle_shards < 1:
            raise ValueError(f"shuffle_shards must be >= 1, got {shuffle_shards}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
        if isinstance(store, os.PathLike):
            store = os.fspath(store)
        self.store, self.split, self.arrays = store, split, tuple(arrays)
        self.seed, self.shuffle, self.shuffle_shards = seed, shuffle, shuffle_shards
        self.batch_size, self.drop_last = batch_size, drop_last
        self.rank, self.world_size = rank, world_size
        self.storage_options = storage_options
        if "index" in self.arrays:
            raise ValueError("'index' is added to every item; do not request it as an array")

        self._group_handle = self._handles = None
        group = self._group()
        self.n_samples, self.shard_size, self._specs = inspect_split(group, split, self.arrays, store)
        self.valid = np.asarray(group["valid"][:], dtype=bool)
        self._expected = expected_objects(group, list(self.arrays), self.valid, self.shard_size)  # checked as read
        self._group_handle = None  # keep no zarr handle in what gets pickled
        self._rows = SplitRows.from_valid(self.valid, self.n_samples, self.shard_size)
        self.samples_per_rank = int(self.valid.sum()) // world_size

        self._control = EpochControl()
        self._ring: BatchRing | None = None  # set by make_loader for DataLoader workers
        self._count = SampleCounter()

    @property
    def n_shards(self) -> int:
        return self._rows.n_shards

    @property
    def valid_per_shard(self) -> tuple[np.ndarray, ...]:
        """The valid rows of each shard, ascending."""
        return self._rows.valid_per_shard

    # ----- store access (lazy, per process) -----

    def _group(self):
        if self._group_handle is None:
            self._group_handle = open_split(self.store, self.split, self.storage_options)
        return self._group_handle

    def _array_handles(self) -> dict[str, Any]:
        if self._handles is None:
            group = self._group()
            self._handles = {name: group[name] for name in self.arrays}
        return self._handles

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_group_handle"] = state["_handles"] = None  # reopened lazily in the worker
        return state

    # ----- epoch and resume state -----

    @property
    def epoch(self) -> int:
        return self._control.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (shuffle order); takes effect in running workers too. Clears a resume point of
        another epoch."""
        self._control.set_epoch(epoch)

    def layout(self, num_workers: int) -> dict:
        """What gives a resume state's `samples_seen` its meaning; a state loads only into the same layout."""
        return {"world_size": self.world_size, "rank": self.rank, "num_workers": max(num_workers, 1),
                "batch_size": self.batch_size, "drop_last": self.drop_last, "shuffle": self.shuffle,
                "shuffle_shards": self.shuffle_shards, "split": self.split}

    def state_dict(self) -> dict:
        """Resume state when this dataset is iterated directly (no DataLoader workers)."""
        return self._count.state(self, num_workers=1)

    def load_state_dict(self, state: dict, num_workers: int | None = None) -> None:
        """Resume mid-epoch: the next iteration of `state["epoch"]` yields exactly the samples not yet seen."""
        expected = self.layout(state["num_workers"] if num_workers is None else num_workers)
        plan.check_resume_state(state, self.seed, expected)
        seen = int(state["samples_seen"])
        if not 0 <= seen <= self.samples_in_epoch():
            raise ValueError(f"samples_seen {seen} outside [0, {self.samples_in_epoch()}]")
        self._control.resume_at(state["epoch"], seen, expected["num_workers"])

    # ----- the plan -----

    def samples_in_epoch(self) -> int:
        """Samples this rank yields per epoch."""
        return sum(plan.split_counts(self.samples_per_rank, 1, self.batch_size or 1, self.drop_last))

    def __len__(self) -> int:
        """Items (batches, or samples when batch_size is None) this rank yields per epoch."""
        n = self.samples_in_epoch()
        return -(-n // self.batch_size) if self.batch_size else n

    def _role_segments(self, epoch: int, counts: list[int]) -> list[list[Segment]]:
        """Each worker role's segments of this rank's share, in stream order."""
        order = plan.shard_order(self.n_shards, self.shuffle, self.seed, epoch)
        return plan.role_segments(self._rows, order, self.rank * self.samples_per_rank, counts)

    # ----- iteration -----

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is None:
            return self._count.wrap(self, self.iter_worker(0, 1))
        return self.iter_worker(info.id, info.num_workers)

    def iter_worker(self, worker: int, num_workers: int) -> Iterator[Batch]:
        """What DataLoader worker `worker` of `num_workers` yields this epoch (tests call it directly)."""
        epoch, seen, saved_workers = self._control.resume_point()
        if saved_workers is not None and saved_workers != num_workers:
            raise RuntimeError(f"resume state was saved with {saved_workers} DataLoader workers; this loader "
                               f"has {num_workers}: the samples seen cannot be mapped back")
        block = self.batch_size or 1
        counts = plan.split_counts(self.samples_per_rank, num_workers, block, self.drop_last)
        positions, batches_done = plan.positions(seen, counts, block)
        role = (worker + batches_done) % num_workers  # continue the round robin where it stopped
        segments = self._role_segments(epoch, counts)[role]
        shuffle_seed = (self.seed, epoch, self.rank, role) if self.shuffle else None
        seg, rows = plan.role_order(segments, self.shuffle_shards, shuffle_seed)
        items = self._emit(segments, seg, rows, positions[role], block, worker)
        # in a DataLoader worker the DataLoader overlaps loading with the consumer; in-process a thread does
        return items if get_worker_info() is not None else _in_background(items, depth=2)

    def _emit(self, segments: list[Segment], seg: np.ndarray, rows: np.ndarray, start: int,
              block: int, worker: int = 0) -> Iterator[Batch]:
        """Read the segments the order still needs (one ahead) and yield items from position `start` on."""
        if start >= len(rows):
            return
        ring = self._ring if get_worker_info() is not None else None
        generation = ring.current_generation() if ring is not None else 0
        seg, rows = seg[start:], rows[start:]
        reader = ShardReader(self._array_handles(), self.shard_size, self._expected)
        try:
            window = SegmentWindow(reader, segments, seg)
            # items stay on the role's own grid of `block` samples (a resumed role may start mid-batch)
            t, size = 0, -(-start // block) * block - start or block
            while t < len(seg):
                stop = min(t + size, len(seg))
                locations = window.locations(seg[t:stop], rows[t:stop])
                if self.batch_size is None:
                    item = self._sample(locations[0], int(rows[t]))
                elif ring is not None:
                    item = ring.write(worker, generation, self._specs, locations, rows[t:stop])
                else:
                    item = self._batch(locations, rows[t:stop])
                window.release_used(seg[t:stop], stop)
                t, size = stop, block
                yield item
        finally:
            reader.close()

    def _sample(self, location: Location, row: int) -> Batch:
        data, offset = location
        item: Batch = {name: _to_torch(data[name][offset]) for name in self.arrays}
        item["index"] = torch.tensor(row, dtype=torch.int64)
        return item

    def _batch(self, locations: list[Location], rows: np.ndarray) -> Batch:
        blocks = {name: np.empty((len(rows),) + shape, dtype) for name, (shape, dtype) in self._specs.items()
                  if not is_string(dtype)}
        strings = gather_rows(self._specs, locations, blocks)
        out: Batch = {name: torch.from_numpy(blocks[name]) if name in blocks else strings[name]
                      for name in self._specs}
        out["index"] = torch.from_numpy(rows.astype(np.int64))
        return out


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item() if is_string(value.dtype) else torch.tensor(value)
    return str(value)


class _Failure:
    """An exception raised in the producer thread, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _in_background(items: Iterator[Batch], depth: int) -> Iterator[Batch]:
    """Run the generator `items` in a thread, up to `depth` items ahead of the consumer."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                pass
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    break
            else:
                put(end)
        except BaseException as error:  # handed to the consumer, raised there
            put(_Failure(error))
        finally:
            items.close()

    thread = threading.Thread(target=produce, name="proui-loader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()
