"""The epoch plan and the resume state: pure index arithmetic, done identically and independently in every
process from (seed, epoch).

1. The valid rows of each shard (`valid` is read once, when the dataset is made): `SplitRows`.
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

Resume. A state holds (seed, epoch, samples_seen by this rank) plus the layout that gives T its meaning (world
size, rank, worker count, batch size, shuffle settings); loading one checks the layout. A resumed worker w
plays role (w + T // B) % W, so the DataLoader's fresh round robin, which restarts at worker 0, continues the
original order: a resumed run yields exactly the samples it had not seen, in the order the uninterrupted run
would have, and a state saved during a resumed run means the same as one saved without the interruption. The
constraint relied on: the same (world size, worker count, batch size) and a DataLoader that batches inside the
dataset (`make_loader` does this: the dataset yields whole batches and the DataLoader gets `batch_size=None`).
With `batch_size=None` and a DataLoader that batches samples itself, resume is exact only with 0 or 1 workers.

Epoch and resume point reach DataLoader workers, persistent ones included, through `EpochControl`, a small
shared-memory tensor, so `set_epoch` after the workers started still takes effect.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from .dataset import StoreDataset

Batch = dict[str, Any]

# extra words of the random seeds, so the shard order and the shuffle buffers draw independent streams
_SHARD_ORDER_KEY, _SHUFFLE_KEY = 0x5A4D, 0xB0F


@dataclass(frozen=True)
class Segment:
    """Rows of one shard that one role owns; `start:stop` is the row range read for them."""

    shard: int
    rows: np.ndarray  # ascending rows in the split
    start: int
    stop: int


@dataclass(frozen=True)
class SplitRows:
    """Where the valid rows of a split lie: its size, its shard size and the valid rows of each shard."""

    n_samples: int
    shard_size: int
    valid_per_shard: tuple[np.ndarray, ...]

    @classmethod
    def from_valid(cls, valid: np.ndarray, n_samples: int, shard_size: int) -> SplitRows:
        n_shards = -(-n_samples // shard_size)
        per_shard = tuple(np.flatnonzero(valid[k * shard_size:(k + 1) * shard_size]) + k * shard_size
                          for k in range(n_shards))
        return cls(n_samples, shard_size, per_shard)

    @property
    def n_shards(self) -> int:
        return len(self.valid_per_shard)

    def shard_range(self, shard: int) -> tuple[int, int]:
        """The rows [start, stop) of one shard (the last may be short)."""
        return shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_samples)


def split_counts(total: int, parts: int, block: int, drop_last: bool) -> list[int]:
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


def positions(seen: int, counts: list[int], block: int) -> tuple[list[int], int]:
    """Per-role samples already yielded after `seen` samples of round-robin batches, and the next batch number."""
    parts = len(counts)
    batches, partial = divmod(seen, block)
    out = []
    for role in range(parts):
        done = (batches - role + parts - 1) // parts if batches > role else 0
        pos = done * block + (partial if batches % parts == role else 0)
        out.append(min(pos, counts[role]))
    return out, batches


def shard_order(n_shards: int, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shard order: the stream is the valid rows of the shards in this order."""
    if not shuffle:
        return np.arange(n_shards)
    return np.random.default_rng([seed, epoch, _SHARD_ORDER_KEY]).permutation(n_shards)


def role_segments(split: SplitRows, order: np.ndarray, lo: int, counts: Sequence[int]) -> list[list[Segment]]:
    """Each role's segments, in stream order: role i owns the next `counts[i]` stream positions from `lo`."""
    ends = np.cumsum([len(split.valid_per_shard[k]) for k in order])
    roles = []
    for count in counts:
        roles.append(stream_segments(split, order, ends, lo, lo + count))
        lo += count
    return roles


def stream_segments(split: SplitRows, order: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> list[Segment]:
    """Stream positions [lo, hi) as per-shard segments (`ends`: cumulative valid rows of the ordered shards)."""
    segments = []
    i = int(np.searchsorted(ends, lo, side="right"))
    while lo < hi:
        shard = int(order[i])
        valid_rows = split.valid_per_shard[shard]
        first = int(ends[i] - len(valid_rows))
        rows = valid_rows[lo - first:min(hi, int(ends[i])) - first]
        if len(rows) == len(valid_rows):  # the whole shard: read its full row range
            start, stop = split.shard_range(shard)
        else:
            start, stop = int(rows[0]), int(rows[-1]) + 1
        if len(rows):  # shards with no valid row are never read
            segments.append(Segment(shard, rows, start, stop))
        lo = min(hi, int(ends[i]))
        i += 1
    return segments


def role_order(segments: list[Segment], shuffle_shards: int,
               shuffle_seed: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """A role's sample order as (segment number, row) arrays: in stream order when `shuffle_seed` is None, else
    drawn uniformly from a buffer of `shuffle_shards` segments (a segment leaves it with its last row)."""
    if shuffle_seed is None:
        seg = np.concatenate([np.full(len(s.rows), i) for i, s in enumerate(segments)] or [np.zeros(0, int)])
        rows = np.concatenate([s.rows for s in segments] or [np.zeros(0, int)])
        return seg.astype(np.int64), rows.astype(np.int64)
    total = sum(len(s.rows) for s in segments)
    draws = np.random.default_rng([*shuffle_seed, _SHUFFLE_KEY]).random(total)
    out_seg = np.empty(total, np.int64)
    out_row = np.empty(total, np.int64)
    buf_seg: list[int] = []
    buf_row: list[int] = []
    left = [len(s.rows) for s in segments]
    next_seg, active = 0, 0

    def refill() -> None:
        nonlocal next_seg, active
        while next_seg < len(segments) and active < shuffle_shards:
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


# ----- resume state -----


class EpochControl:
    """The epoch and the resume point, in shared memory that DataLoader workers inherit with the dataset."""

    _EPOCH, _RESUME_EPOCH, _RESUME_SEEN, _RESUME_WORKERS = range(4)

    def __init__(self) -> None:
        self.tensor = torch.tensor([0, -1, 0, 0], dtype=torch.int64).share_memory_()

    @property
    def epoch(self) -> int:
        return int(self.tensor[self._EPOCH])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a resume point of another epoch is dropped."""
        self.tensor[self._EPOCH] = epoch
        if int(self.tensor[self._RESUME_EPOCH]) != epoch:
            self.tensor[self._RESUME_EPOCH] = -1

    def resume_at(self, epoch: int, seen: int, num_workers: int) -> None:
        self.tensor[:] = torch.tensor([epoch, epoch, seen, num_workers])

    def resume_point(self) -> tuple[int, int, int | None]:
        """(epoch, samples already seen in it, worker count they were seen with: None when starting afresh)."""
        epoch, resume_epoch, seen, workers = self.tensor.tolist()
        return (epoch, seen, workers) if resume_epoch == epoch else (epoch, 0, None)

    def finish_epoch(self) -> None:
        """A layer in the main process saw the whole epoch: the resume point is used up."""
        self.tensor[self._RESUME_EPOCH] = -1


def check_resume_state(state: dict, seed: int, expected: dict) -> None:
    """Raise ValueError naming every (saved, now) difference between a resume state and this loader."""
    got = {k: state.get(k) for k in expected}
    diff = {k: (got[k], expected[k]) for k in expected if got[k] != expected[k]}
    if state.get("seed") != seed:
        diff["seed"] = (state.get("seed"), seed)
    if diff:
        raise ValueError(f"resume state does not match this loader (saved, now): {diff}")


class SampleCounter:
    """Samples handed out by one layer (dataset, loader, device batcher) in the current epoch."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.seen = 0

    def wrap(self, dataset: StoreDataset, items: Iterable[Batch]) -> Iterator[Batch]:
        epoch, base, _ = dataset._control.resume_point()
        self.epoch, self.seen = epoch, base
        for item in items:
            index = item["index"]
            self.seen += 1 if index.ndim == 0 else len(index)
            yield item
        dataset._control.finish_epoch()

    def state(self, dataset: StoreDataset, num_workers: int) -> dict:
        epoch, seen, _ = dataset._control.resume_point()
        if self.epoch == epoch:
            seen = self.seen
        return {"seed": dataset.seed, "epoch": epoch, "samples_seen": seen, **dataset.layout(num_workers)}


class ResumableLayer:
    """`set_epoch`, `state_dict` and `load_state_dict` of a layer over a StoreDataset (a loader, a device
    batcher): its state counts what this layer handed out. Users provide `dataset`, `num_workers`, `_count`."""

    dataset: Any
    num_workers: int
    _count: SampleCounter

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        return self._count.state(self.dataset, self.num_workers)

    def load_state_dict(self, state: dict) -> None:
        self.dataset.load_state_dict(state, num_workers=self.num_workers)
