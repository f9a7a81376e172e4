"""Streaming loader over a proui zarr store: whole-shard reads, a multi-shard shuffle buffer, exact DDP and
worker splits, and mid-epoch resume.

Reading. Every array of a split is sharded along the sample axis with one shard size S, so shard k is rows
[k*S, (k+1)*S) everywhere and reading it is one request per array. The loader never reads single samples: a
worker reads each needed shard of each requested array whole (the arrays concurrently in a small thread pool,
one shard ahead of use) into reused buffers and gathers batches from the shards held in memory. Shards laid out
the way the pipeline writes them (inner chunks bytes + zstd, crc32c index at the end) are fetched as one object
and decoded straight into the buffer (`shard_decoder`: 3-4x less CPU than zarr's general read path); any other
layout, and the partial shards at the ends of a worker's share, are read with `arr.get_basic_selection(start:stop)`.

Epoch plan. Pure index arithmetic, done identically and independently in every process from (seed, epoch):
1. The valid rows of each shard (`valid` is read once, when the dataset is made).
2. Shard order: a permutation from (seed, epoch). The epoch's *stream* is the valid rows of the shards in that
   order (rows ascending within a shard).
3. Ranks: with M valid rows and world size R, each rank gets n = M // R rows: rank r takes the contiguous piece
   [r*n, (r+1)*n) of the stream; the M - R*n < R rows left out are the stream's tail, a different few each
   epoch. Being contiguous in shard order, a rank reads whole shards except at most the two at its ends, which
   it shares with a neighbour and reads as the covering row range. Equal shares mean no rank ever waits on a
   collective that another rank will not reach.
4. Workers: the rank's n rows form nb = ceil(n / B) batches of B (the last may be short; `drop_last` drops it);
   batch j belongs to worker *role* j % W. The rank's piece is cut again, contiguously, into W parts of the sizes
   those batches add up to (role 0 first), so workers again read whole shards except at their ends, and the W
   parts cover the rank's share exactly once.
5. Each role shuffles its part with a buffer of `shuffle_shards` shards: samples are drawn uniformly from all
   rows of the shards in the buffer; when a shard's last row is drawn it is dropped and the next shard read.
   The role yields its samples in batches of B (with `batch_size=None`, one sample at a time: B = 1).
6. Order: torch's DataLoader (with `in_order=True`, its default) asks workers for batches round robin
   0, 1, ..., W-1, 0, ... and yields them in that order. So the rank's output is batch j of role j % W, in j
   order, and a rank's *samples seen* T pins down exactly what was seen: batches j < T // B in full and the
   first T % B samples of batch T // B.

Resume. `state_dict()` holds (seed, epoch, samples_seen by this rank) plus the layout that gives T its meaning
(world size, rank, worker count, batch size, shuffle settings); `load_state_dict()` checks the layout. A resumed
worker w plays role (w + T // B) % W, so the DataLoader's fresh round robin, which restarts at worker 0,
continues the original order: a resumed run yields exactly the samples it had not seen, in the order the
uninterrupted run would have, and a state saved during a resumed run means the same as one saved without the
interruption. The constraint relied on: the same (world size, worker count, batch size) and a DataLoader that
batches inside the dataset (`make_loader` does this: the dataset yields whole batches and the DataLoader gets
`batch_size=None`). With `batch_size=None` and a DataLoader that batches samples itself, resume is exact only
with 0 or 1 workers.

Hand-over. torch would give every batch a worker yields fresh shared memory (allocated, page-faulted, sent
as file descriptors and mapped again per batch), which for 23 MB batches costs more CPU than reading them.
`make_loader` instead allocates a `BatchRing` once: a few batch-sized slots of shared memory per worker. A
worker writes its batch into a free slot and yields only the slot number; the main process copies the batch
out (into pinned memory on CUDA) and frees the slot, or with `reuse_batches=True` hands out views of the
slot that stay valid until the next batch is asked for.

Epoch and resume state reach DataLoader workers, persistent ones included, through a small shared-memory
tensor, so `set_epoch` after the workers started still takes effect. The zarr store is opened lazily in each
process and never pickled: zarr's I/O thread does not survive `fork`, so `make_loader` starts workers with
`spawn` (or `forkserver`).

Layouts. The dataset yields host tensors as stored: images (B, H, W, C) uint8, `landmarks` float32, masks and
`parsing` (B, H, W) uint8, `heatmaps` (B, 68, h, w) uint8, plus `index` int64 (the row in the split).
`DeviceBatcher` moves batches to the device and converts there: images to (B, C, H, W) float in [-1, 1], masks
to (B, 1, H, W) float in [0, 1], heatmaps to float in [0, 1], `parsing` to int64 class labels.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

Batch = dict[str, Any]

DEFAULT_ARRAYS = ("hr", "lr_occluded", "landmarks")

# How DeviceBatcher converts each array on the device; arrays not named here are moved unchanged.
CONVERSIONS = {
    "hr": "image", "lr": "image", "lr_occluded": "image",
    "occlusion_mask": "mask", "heatmaps": "unit", "parsing": "labels",
}

# control tensor slots, shared with DataLoader workers
_EPOCH, _RESUME_EPOCH, _RESUME_SEEN, _RESUME_WORKERS = range(4)


@dataclass(frozen=True)
class Segment:
    """Rows of one shard that one role owns; `start:stop` is the row range read for them."""

    shard: int
    rows: np.ndarray  # ascending rows in the split
    start: int
    stop: int


def _open_group(store: Any, storage_options: dict | None):
    import zarr

    kwargs = {"storage_options": storage_options} if storage_options else {}
    return zarr.open_group(store, mode="r", zarr_format=3, **kwargs)


def _distributed_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _split_counts(total: int, parts: int, block: int, drop_last: bool) -> list[int]:
    """Samples of each of `parts` roles when `total` samples form batches of `block`, batch j to role j % parts."""
    n_batches = total // block if drop_last else -(-total // block)
    used = n_batches * block if drop_last else total
    counts = []
    for role in range(parts):
        mine = len(range(role, n_batches, parts))
        count = mine * block
        if mine and not drop_last and (n_batches - 1) % parts == role:
            count -= n_batches * block - used  # this role holds the short last batch
        counts.append(count)
    return counts


def _positions(seen: int, counts: list[int], block: int) -> tuple[list[int], int]:
    """Per-role samples already yielded after `seen` samples of round-robin batches, and the next batch number."""
    parts = len(counts)
    batches, partial = divmod(seen, block)
    positions = []
    for role in range(parts):
        done = (batches - role + parts - 1) // parts if batches > role else 0
        pos = done * block + (partial if batches % parts == role else 0)
        positions.append(min(pos, counts[role]))
    return positions, batches


class StoreDataset(IterableDataset):
    """Stream one split of a proui store as dicts of tensors (see the module docstring for the plan).

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

        group = self._group()
        self.n_samples, self.shard_size, self._specs = self._inspect(group)
        self.valid = np.asarray(group["valid"][:], dtype=bool)
        self._group_handle = self._handles = None  # keep no zarr handle in what gets pickled
        self.n_shards = -(-self.n_samples // self.shard_size)
        self.valid_per_shard = [np.flatnonzero(self.valid[k * self.shard_size:(k + 1) * self.shard_size])
                                + k * self.shard_size for k in range(self.n_shards)]
        self.samples_per_rank = int(self.valid.sum()) // world_size

        self._control = torch.tensor([0, -1, 0, 0], dtype=torch.int64).share_memory_()
        self._ring: BatchRing | None = None  # set by make_loader for DataLoader workers
        self._count = _Counter()

    # ----- store access (lazy, per process) -----

    def _group(self):
        handle = getattr(self, "_group_handle", None)
        if handle is None:
            root = _open_group(self.store, self.storage_options)
            try:
                handle = root[self.split]
            except KeyError:
                try:
                    have = sorted(root.group_keys())
                except Exception:  # stores that cannot list (plain HTTP) still open groups by name
                    have = "unknown (store cannot be listed)"
                raise KeyError(f"split {self.split!r} not in store {self.store!r}; splits: {have}") from None
            self._group_handle = handle
        return handle

    def _inspect(self, group) -> tuple[int, int, dict[str, tuple[tuple[int, ...], np.dtype]]]:
        try:
            valid = group["valid"]
        except KeyError:
            raise KeyError(f"split {self.split!r} of {self.store!r} has no 'valid' array: not a proui store")
        n = int(group.attrs.get("n_samples", valid.shape[0]))
        shard_size = int(group.attrs.get("shard_size", (valid.shards or valid.chunks)[0]))
        specs = {}
        for name in self.arrays:
            try:
                arr = group[name]
            except KeyError:
                have = sorted(group.array_keys())
                raise KeyError(f"array {name!r} not in split {self.split!r}; arrays: {have}") from None
            if arr.shape[0] != n:
                raise ValueError(f"{self.split}/{name} has {arr.shape[0]} rows, the split has {n}")
            if (arr.shards or arr.chunks)[0] != shard_size:
                raise ValueError(f"{self.split}/{name} is sharded by {(arr.shards or arr.chunks)[0]} rows, "
                                 f"the split by {shard_size}: whole-shard reads need one shard size")
            specs[name] = (tuple(arr.shape[1:]), arr.dtype)
        return n, shard_size, specs

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_group_handle"] = state["_handles"] = None  # reopened lazily in the worker
        return state

    def _array_handles(self) -> dict[str, Any]:
        handles = getattr(self, "_handles", None)
        if handles is None:
            group = self._group()
            handles = self._handles = {name: group[name] for name in self.arrays}
        return handles

    # ----- epoch and resume state -----

    @property
    def epoch(self) -> int:
        return int(self._control[_EPOCH])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (shuffle order); takes effect in running workers too. Clears a resume point of
        another epoch."""
        self._control[_EPOCH] = epoch
        if int(self._control[_RESUME_EPOCH]) != epoch:
            self._control[_RESUME_EPOCH] = -1

    def _resume_point(self) -> tuple[int, int, int | None]:
        epoch, resume_epoch, seen, workers = self._control.tolist()
        return (epoch, seen, workers) if resume_epoch == epoch else (epoch, 0, None)

    def _finish_epoch(self) -> None:
        """A layer in the main process saw the whole epoch: the resume point is used up."""
        self._control[_RESUME_EPOCH] = -1

    def layout(self, num_workers: int) -> dict:
        return {"world_size": self.world_size, "rank": self.rank, "num_workers": max(num_workers, 1),
                "batch_size": self.batch_size, "drop_last": self.drop_last, "shuffle": self.shuffle,
                "shuffle_shards": self.shuffle_shards, "split": self.split}

    def state_dict(self) -> dict:
        """Resume state when this dataset is iterated directly (no DataLoader workers)."""
        return self._count.state(self, num_workers=1)

    def load_state_dict(self, state: dict, num_workers: int | None = None) -> None:
        """Resume mid-epoch: the next iteration of `state["epoch"]` yields exactly the samples not yet seen."""
        expected = self.layout(state["num_workers"] if num_workers is None else num_workers)
        got = {k: state.get(k) for k in expected}
        if state.get("seed") != self.seed or got != expected:
            diff = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
            if state.get("seed") != self.seed:
                diff["seed"] = (state.get("seed"), self.seed)
            raise ValueError(f"resume state does not match this loader (saved, now): {diff}")
        seen = int(state["samples_seen"])
        if not 0 <= seen <= self.samples_in_epoch():
            raise ValueError(f"samples_seen {seen} outside [0, {self.samples_in_epoch()}]")
        self._control[:] = torch.tensor([state["epoch"], state["epoch"], seen, expected["num_workers"]])

    # ----- the plan -----

    def samples_in_epoch(self) -> int:
        """Samples this rank yields per epoch."""
        block = self.batch_size or 1
        return sum(_split_counts(self.samples_per_rank, 1, block, self.drop_last))

    def __len__(self) -> int:
        """Items (batches, or samples when batch_size is None) this rank yields per epoch."""
        n = self.samples_in_epoch()
        return -(-n // self.batch_size) if self.batch_size else n

    def _role_segments(self, epoch: int, num_workers: int) -> list[list[Segment]]:
        """Each worker role's segments of this rank's share, in stream order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, 0x5A4D]).permutation(self.n_shards)
        else:
            order = np.arange(self.n_shards)
        sizes = np.array([len(self.valid_per_shard[k]) for k in order])
        ends = np.cumsum(sizes)
        counts = _split_counts(self.samples_per_rank, num_workers, self.batch_size or 1, self.drop_last)
        lo = self.rank * self.samples_per_rank
        roles = []
        for count in counts:
            roles.append(self._segments(order, ends, lo, lo + count))
            lo += count
        return roles

    def _segments(self, order: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> list[Segment]:
        """Stream positions [lo, hi) as per-shard segments."""
        segments = []
        i = int(np.searchsorted(ends, lo, side="right"))
        while lo < hi:
            shard = int(order[i])
            first = int(ends[i] - len(self.valid_per_shard[shard]))
            valid_rows = self.valid_per_shard[shard]
            rows = valid_rows[lo - first:min(hi, int(ends[i])) - first]
            if len(rows) == len(valid_rows):  # the whole shard: read its full row range
                start, stop = shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_samples)
            else:
                start, stop = int(rows[0]), int(rows[-1]) + 1
            if len(rows):  # shards with no valid row are never read
                segments.append(Segment(shard, rows, start, stop))
            lo = min(hi, int(ends[i]))
            i += 1
        return segments

    def _role_order(self, epoch: int, role: int, segments: list[Segment]) -> tuple[np.ndarray, np.ndarray]:
        """The role's sample order as (segment number, row) arrays: a buffer of `shuffle_shards` segments,
        samples drawn uniformly from it."""
        total = sum(len(s.rows) for s in segments)
        if not self.shuffle:
            seg = np.concatenate([np.full(len(s.rows), i) for i, s in enumerate(segments)] or [np.zeros(0, int)])
            rows = np.concatenate([s.rows for s in segments] or [np.zeros(0, int)])
            return seg.astype(np.int64), rows.astype(np.int64)
        draws = np.random.default_rng([self.seed, epoch, self.rank, role, 0xB0F]).random(total)
        out_seg = np.empty(total, np.int64)
        out_row = np.empty(total, np.int64)
        buf_seg: list[int] = []
        buf_row: list[int] = []
        left = [len(s.rows) for s in segments]
        next_seg, active = 0, 0

        def refill() -> None:
            nonlocal next_seg, active
            while next_seg < len(segments) and active < self.shuffle_shards:
                buf_seg.extend([next_seg] * left[next_seg])
                buf_row.extend(segments[next_seg].rows.tolist())
                active += 1
                next_seg += 1

        refill()
        for t in range(total):
            i = int(draws[t] * len(buf_seg))
            s, r = buf_seg[i], buf_row[i]
            buf_seg[i], buf_row[i] = buf_seg[-1], buf_row[-1]  # swap-remove keeps draws O(1)
            buf_seg.pop()
            buf_row.pop()
            out_seg[t], out_row[t] = s, r
            left[s] -= 1
            if left[s] == 0:
                active -= 1
                refill()
        return out_seg, out_row

    # ----- iteration -----

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is None:
            return self._count.wrap(self, self.iter_worker(0, 1))
        return self.iter_worker(info.id, info.num_workers)

    def iter_worker(self, worker: int, num_workers: int) -> Iterator[Batch]:
        """What DataLoader worker `worker` of `num_workers` yields this epoch (tests call it directly)."""
        epoch, seen, saved_workers = self._resume_point()
        if saved_workers is not None and saved_workers != num_workers:
            raise RuntimeError(f"resume state was saved with {saved_workers} DataLoader workers; this loader "
                               f"has {num_workers}: the samples seen cannot be mapped back")
        block = self.batch_size or 1
        counts = _split_counts(self.samples_per_rank, num_workers, block, self.drop_last)
        positions, batches_done = _positions(seen, counts, block)
        role = (worker + batches_done) % num_workers  # continue the round robin where it stopped
        segments = self._role_segments(epoch, num_workers)[role]
        seg, rows = self._role_order(epoch, role, segments)
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
        first_use: dict[int, int] = {}
        last_use: dict[int, int] = {}
        for t, s in enumerate(seg.tolist()):
            first_use.setdefault(s, t)
            last_use[s] = t
        upcoming = iter(sorted(first_use, key=first_use.get))
        pending: deque[tuple[int, _Read]] = deque()
        loaded: dict[int, _Read] = {}
        reader = _ShardReader(self._array_handles(), self.shard_size)
        try:
            def read_ahead() -> None:
                s = next(upcoming, None)
                if s is not None:
                    pending.append((s, reader.submit(segments[s])))

            read_ahead()
            t = 0
            # items stay on the role's own grid of `block` samples (a resumed role may start mid-batch)
            first_stop = -(-start // block) * block - start or block
            while t < len(seg):
                stop = min(t + (first_stop if t == 0 else block), len(seg))
                needed = set(seg[t:stop].tolist())
                while not needed <= loaded.keys():
                    s, read = pending.popleft()
                    loaded[s] = read
                    read_ahead()
                locations = [(loaded[s].data(), r - segments[s].start) for s, r in
                             zip(seg[t:stop].tolist(), rows[t:stop].tolist())]
                if self.batch_size is None:
                    data, offset = locations[0]
                    item = {name: _to_torch(data[name][offset]) for name in self.arrays}
                    item["index"] = torch.tensor(int(rows[t]), dtype=torch.int64)
                elif ring is not None:
                    item = ring.write(worker, generation, self._specs, locations, rows[t:stop])
                else:
                    item = self._batch(locations, rows[t:stop])
                for s in needed:
                    if last_use[s] < stop:
                        reader.release(loaded.pop(s))
                t = stop
                yield item
        finally:
            reader.close()

    def _batch(self, locations: list[tuple[dict[str, np.ndarray], int]], rows: np.ndarray) -> Batch:
        blocks = {name: np.empty((len(rows),) + shape, dtype) for name, (shape, dtype) in self._specs.items()
                  if not _is_string(dtype)}
        strings = gather_rows(self._specs, locations, blocks)
        out: Batch = {name: torch.from_numpy(blocks[name]) if name in blocks else strings[name]
                      for name in self._specs}
        out["index"] = torch.from_numpy(rows.astype(np.int64))
        return out


def gather_rows(specs: dict[str, tuple[tuple[int, ...], np.dtype]],
                locations: list[tuple[dict[str, np.ndarray], int]], blocks: dict[str, np.ndarray]) -> Batch:
    """Copy row i of a batch, `data[name][offset]` of `locations[i]`, into `blocks[name][i]` for every array
    in `blocks`; string arrays come back as lists."""
    strings: Batch = {}
    for name in specs:
        if name not in blocks:
            strings[name] = [str(data[name][offset]) for data, offset in locations]
            continue
        block = blocks[name]
        for i, (data, offset) in enumerate(locations):  # one copy per row, straight from the shard
            block[i] = data[name][offset]
    return strings


@dataclass
class _Read:
    """One segment being read into a reusable slot: one future per array."""

    slot: dict[str, np.ndarray]
    rows: int
    futures: list[concurrent.futures.Future]

    def data(self) -> dict[str, np.ndarray]:
        for future in self.futures:
            future.result()
        return {name: values[:self.rows] for name, values in self.slot.items()}


class _ShardReader:
    """Reads segments into reused buffers: one request per array per segment, the arrays concurrently.

    Reusing the shard-sized buffers keeps each read from page-faulting tens of MB of fresh memory, which
    otherwise costs as much as the decompression.
    """

    def __init__(self, arrays: dict[str, Any], shard_size: int) -> None:
        self.arrays, self.shard_size = arrays, shard_size
        self.decoders = {name: shard_decoder(arr) for name, arr in arrays.items()}
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(len(arrays), 8))
        self.free: list[dict[str, np.ndarray]] = []
        self.local = threading.local()  # each reading thread's reusable buffer for a shard's raw bytes

    def submit(self, segment: Segment) -> _Read:
        slot = self.free.pop() if self.free else {
            name: np.empty((self.shard_size,) + arr.shape[1:], arr.dtype)
            for name, arr in self.arrays.items() if not _is_string(arr.dtype)}
        futures = [self.pool.submit(self._read_one, name, segment, slot) for name in self.arrays]
        return _Read(slot, segment.stop - segment.start, futures)

    def _read_one(self, name: str, segment: Segment, slot: dict[str, np.ndarray]) -> None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        arr, selection = self.arrays[name], slice(segment.start, segment.stop)
        if _is_string(arr.dtype):
            slot[name] = np.asarray(arr[selection])
            return
        prototype = default_buffer_prototype()
        decoder = self.decoders[name]
        if decoder is not None and segment.stop - segment.start == self.shard_size:
            key = arr.metadata.encode_chunk_key((segment.start // self.shard_size,) + (0,) * (arr.ndim - 1))
            path = arr.store_path / key
            file = _local_file(path)
            if file is not None:
                decoder(self._read_file(file), slot[name])
                return
            data = sync(path.get(prototype=prototype))
            decoder(None if data is None else memoryview(data.as_numpy_array()), slot[name])
            return
        out = prototype.nd_buffer.from_numpy_array(slot[name][:segment.stop - segment.start])
        arr.get_basic_selection(selection, out=out)

    def _read_file(self, file: str) -> memoryview | None:
        """A local shard file read into this thread's reused buffer (a fresh bytes object per shard would
        page-fault megabytes and be copied again: together more CPU than the decompression)."""
        try:
            f = open(file, "rb", buffering=0)
        except FileNotFoundError:
            return None
        with f:
            size = os.fstat(f.fileno()).st_size
            raw = getattr(self.local, "raw", None)
            if raw is None or len(raw) < size:
                raw = self.local.raw = bytearray(max(size, int(size * 1.25)))
            view = memoryview(raw)
            n = 0
            while n < size:
                got = f.readinto(view[n:size])
                if not got:
                    raise OSError(f"{file}: file shrank while it was read ({n} of {size} bytes)")
                n += got
            return view[:size]

    def release(self, read: _Read) -> None:
        read.data()
        self.free.append(read.slot)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _local_file(path: Any) -> str | None:
    """The file behind a zarr StorePath when its store is a local directory, else None."""
    from zarr.storage import LocalStore

    store = path.store
    if not isinstance(store, LocalStore):
        return None
    return os.path.join(str(store.root), *path.path.split("/"))


_MISSING = 2**64 - 1  # a shard index entry of an absent chunk


def shard_decoder(arr: Any) -> Callable[[bytes | None, np.ndarray], None] | None:
    """A decoder of whole shards of `arr` into a (shard_size, ...) buffer, or None when `arr` is not laid out
    the way the pipeline writes it (sharded along axis 0 only; inner chunks: bytes + optional zstd; index:
    bytes + crc32c at the end). zarr's own read path costs 3-4x the CPU of this direct decode (its
    intermediate buffers and copies); any other layout goes through zarr.
    """
    from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ZstdCodec
    from zarr.codecs.sharding import ShardingCodecIndexLocation

    codecs = getattr(arr.metadata, "codecs", ())
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or arr.shards is None:
        return None
    sharding = codecs[0]
    inner = [type(c) for c in sharding.codecs]
    dtype = np.dtype(arr.dtype)
    chunk, shard = sharding.chunk_shape, arr.shards
    if (sharding.index_location != ShardingCodecIndexLocation.end
            or [type(c) for c in sharding.index_codecs] != [BytesCodec, Crc32cCodec]
            or inner not in ([BytesCodec], [BytesCodec, ZstdCodec])
            or dtype.kind not in "biuf"
            or (dtype.itemsize > 1 and (sys.byteorder != "little" or sharding.codecs[0].endian is None
                                        or sharding.codecs[0].endian.value != "little"))
            or tuple(chunk[1:]) != tuple(shard[1:]) or tuple(shard[1:]) != tuple(arr.shape[1:])
            or shard[0] % chunk[0]):
        return None
    import google_crc32c
    from numcodecs import Zstd

    n_chunks, rows = shard[0] // chunk[0], chunk[0]
    index_bytes = 16 * n_chunks + 4
    zstd = Zstd() if ZstdCodec in inner else None
    fill = np.asarray(arr.metadata.fill_value, dtype=dtype)

    def decode(data: bytes | memoryview | None, out: np.ndarray) -> None:
        if data is None:  # shard never written: all fill value
            out[...] = fill
            return
        view = memoryview(data).cast("B")
        if len(view) < index_bytes:
            raise ValueError(f"{arr.path}: shard of {len(view)} bytes is shorter than its index")
        index_raw = bytes(view[len(view) - index_bytes:len(view) - 4])
        if google_crc32c.value(index_raw) != int.from_bytes(view[-4:], "little"):
            raise ValueError(f"{arr.path}: shard index checksum mismatch")
        index = np.frombuffer(index_raw, "<u8").reshape(n_chunks, 2)
        flat = out.reshape(n_chunks, -1).view(np.uint8)
        for c, (offset, nbytes) in enumerate(index.tolist()):
            if offset == _MISSING:
                out[c * rows:(c + 1) * rows] = fill
            elif offset + nbytes > len(view) - index_bytes:
                raise ValueError(f"{arr.path}: shard chunk {c} lies outside the shard's {len(view)} bytes")
            elif zstd is not None:
                zstd.decode(view[offset:offset + nbytes], out=flat[c])
            else:
                flat[c] = np.frombuffer(view[offset:offset + nbytes], np.uint8)

    return decode


class _Failure:
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


def _is_string(dtype) -> bool:
    return np.dtype(dtype).kind in "UOT"


def _to_torch(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value.copy())
    if isinstance(value, np.generic):
        return value.item() if _is_string(value.dtype) else torch.tensor(value)
    return str(value)


class _Counter:
    """Samples handed out by one layer (dataset, loader, device batcher) in the current epoch."""

    def __init__(self) -> None:
        self.epoch, self.seen = None, 0

    def wrap(self, dataset: StoreDataset, items: Iterable[Batch]) -> Iterator[Batch]:
        epoch, base, _ = dataset._resume_point()
        self.epoch, self.seen = epoch, base
        for item in items:
            index = item["index"]
            self.seen += 1 if index.ndim == 0 else len(index)
            yield item
        dataset._finish_epoch()

    def state(self, dataset: StoreDataset, num_workers: int) -> dict:
        epoch, seen, _ = dataset._resume_point()
        if self.epoch == epoch:
            seen = self.seen
        return {"seed": dataset.seed, "epoch": epoch, "samples_seen": seen, **dataset.layout(num_workers)}


class BatchRing:
    """Shared-memory batch slots that DataLoader workers write batches into; only slot numbers cross processes.

    torch hands each batch a worker yields to the main process in fresh shared memory: the worker allocates
    and page-faults it, copies the batch in, sends a file descriptor per tensor, and the main process maps
    it again. For 23 MB batches (all six arrays at batch 64) that costs more CPU than reading them. The ring
    is allocated once, by the main process before the workers start (they inherit it when the dataset is
    sent to them): `depth` slots per worker, each holding one batch of every numeric array plus `index`.
    A worker writes a batch into a free slot of its own and yields only (worker, slot, generation, rows);
    the main process views the slot and frees it once the batch is copied out (see `StoreLoader`).

    A slot's stamp is the iteration generation that filled it (0: free). Each new iteration bumps the
    generation, so slots filled for batches the DataLoader discarded (an epoch left early) count as free.
    """

    def __init__(self, specs: dict[str, tuple[tuple[int, ...], np.dtype]], batch_size: int, num_workers: int,
                 depth: int) -> None:
        self.batch_size, self.num_workers, self.depth = batch_size, num_workers, depth
        self.layout: dict[str, tuple[int, tuple[int, ...], np.dtype]] = {}
        offset = 0
        for name, (shape, dtype) in [*specs.items(), ("index", ((), np.dtype(np.int64)))]:
            if _is_string(dtype):
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

    def _acquire(self, worker: int, generation: int) -> int:
        parent, waited = os.getppid(), 0.0
        while True:
            stamps = self.stamps[worker].tolist()
            for slot, stamp in enumerate(stamps):
                if stamp < generation:  # 0 (released) or left over from an earlier iteration
                    self.stamps[worker, slot] = generation
                    return slot
            time.sleep(0.0005)
            waited += 0.0005
            if waited > 1.0:  # the main process holds every slot: make sure it still exists
                if os.getppid() != parent:
                    raise RuntimeError("the main process of this DataLoader worker is gone")
                waited = 0.0

    def write(self, worker: int, generation: int, specs: dict[str, tuple[tuple[int, ...], np.dtype]],
              locations: list[tuple[dict[str, np.ndarray], int]], rows: np.ndarray) -> Batch:
        """Copy one batch into a free slot of `worker` (waiting for one) and return the message naming it."""
        slot = self._acquire(worker, generation)
        views = self.views(worker, slot)
        message: Batch = {"_ring": (worker, slot, generation), "_rows": len(rows)}
        message.update(gather_rows(specs, locations, {name: views[name] for name in specs if name in views}))
        views["index"][:len(rows)] = rows
        return message


class StoreLoader(DataLoader):
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
        self._count = _Counter()

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

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self._count.state(self.dataset, self.num_workers)

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state, num_workers=self.num_workers)


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


def to_model_layout(batch: Batch, conversions: dict[str, str] = CONVERSIONS) -> Batch:
    """Convert a device batch: images (B,H,W,C) uint8 -> (B,C,H,W) float in [-1,1]; masks (B,H,W) uint8 ->
    (B,1,H,W) float in [0,1]; `unit` arrays uint8 -> float in [0,1]; `labels` -> int64. Others unchanged."""
    out = dict(batch)
    for name, kind in conversions.items():
        if name not in batch:
            continue
        value = batch[name]
        if kind == "image":
            out[name] = value.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0).contiguous()
        elif kind == "mask":
            out[name] = value.unsqueeze(1).float().div_(255.0)
        elif kind == "unit":
            out[name] = value.float().div_(255.0)
        elif kind == "labels":
            out[name] = value.long()
        else:
            raise ValueError(f"unknown conversion {kind!r} for {name!r}")
    return out


class DeviceBatcher:
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
        self._count = _Counter()

    @property
    def dataset(self) -> StoreDataset:
        return self.loader.dataset if isinstance(self.loader, DataLoader) else self.loader

    @property
    def num_workers(self) -> int:
        return self.loader.num_workers if isinstance(self.loader, DataLoader) else 1

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self._count.state(self.dataset, self.num_workers)

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state, num_workers=self.num_workers)

    def _to_device(self, batch: Batch, stream) -> Batch:
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

    def __iter__(self) -> Iterator[Batch]:
        return self._count.wrap(self.dataset, self._batches())

    def _batches(self) -> Iterator[Batch]:
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        it = iter(self.loader)
        upcoming = next(it, None)
        upcoming = None if upcoming is None else self._to_device(upcoming, stream)
        while upcoming is not None:
            batch = upcoming
            if stream is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_stream(stream)
                for v in batch.values():
                    if isinstance(v, torch.Tensor):
                        v.record_stream(current)  # the side stream's allocator must not reuse it early
            upcoming = next(it, None)
            upcoming = None if upcoming is None else self._to_device(upcoming, stream)
            for hook in self.augment:
                batch = hook(batch)
            yield batch
