"""Reading a split's shards: opening and checking the store, whole-shard reads and their direct decode.

Every array of a split is sharded along the sample axis with one shard size S, so shard k is rows
[k*S, (k+1)*S) everywhere and reading it is one request per array. The loader never reads single samples: a
worker reads each needed shard of each requested array whole (the arrays concurrently in a small thread pool,
one shard ahead of use: `SegmentWindow`) into reused buffers and gathers batches from the shards held in memory
(`gather_rows`). Shards laid out the way the pipeline writes them (inner chunks bytes + zstd, crc32c index at
the end) are fetched as one object and decoded straight into the buffer (`shard_decoder`: 3-4x less CPU than
zarr's general read path); any other layout, and the partial shards at the ends of a worker's share, are read
with `arr.get_basic_selection(start:stop)`. A shard object the store must hold but does not, or whose bytes
are not those recorded at build time (`proui_data.store.expected_objects`: its CRC-32C), is an error naming
it, never the fill values or the wrong values zarr would serve in its place.

The zarr store is opened lazily in each process and never pickled: zarr's I/O thread does not survive `fork`.
"""
from __future__ import annotations

import concurrent.futures
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.buffer import default_buffer_prototype
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec, ShardingCodecIndexLocation, ZstdCodec
from zarr.storage import LocalStore, StorePath

from proui_data.store import Expected, crc32c, expected_objects, open_root, run_store_io, shard_object

from .plan import Batch, Segment

# per array: (shape of one sample, dtype)
Specs = dict[str, tuple[tuple[int, ...], np.dtype]]
# where one sample of a batch lies: (arrays of a shard held in memory, row offset in them)
Location = tuple[dict[str, np.ndarray], int]

_MISSING = 2**64 - 1  # a shard index entry of an absent chunk


def is_string(dtype: Any) -> bool:
    return np.dtype(dtype).kind in "UOT"


class MissingShard(FileNotFoundError):
    """A shard object the build wrote is gone from the store."""


class DamagedShard(ValueError):
    """A shard object whose bytes are not those recorded at build time, or that fails to decode."""


# ----- opening and checking a split -----


class StoreError(KeyError):
    """A store, split or array that is not there, with one line saying what is (a KeyError for callers that
    catch a missing key; printed without KeyError's quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def open_store(store: Any, storage_options: dict | None = None) -> zarr.Group:
    """The root group of a proui store, read-only; anything else (no such path, a plain folder, a damaged
    zarr.json) raises StoreError naming the store."""
    try:
        return open_root(store, mode="r", storage_options=storage_options)
    except FileNotFoundError as e:  # zarr's GroupNotFoundError too: a folder without zarr.json
        what = "no such store" if type(e) is FileNotFoundError else "not a proui store (no zarr group there)"
        raise StoreError(f"{store}: {what}; build one with `proui-data build`") from None
    except ValueError as e:  # a damaged zarr.json, or an array where the group should be
        raise StoreError(f"{store}: not a readable proui store ({type(e).__name__}: {e})") from None


DEFAULT_TEMPLATE = "celeba"  # the frame of a store that records none (proui_data's default template)


def store_template(store: Any) -> str:
    """The frame (`proui_data.align` template) a store's faces are aligned in: its root `template` attribute,
    DEFAULT_TEMPLATE for a store that records none. `store`: a root group, or what `open_store` takes."""
    root = store if isinstance(store, zarr.Group) else open_store(store)
    return (root.attrs.get("template") or {}).get("name", DEFAULT_TEMPLATE)


def open_split(store: Any, split: str, storage_options: dict | None = None) -> zarr.Group:
    """The group of one split, read-only; a missing store or split raises StoreError naming the splits the
    store has. Every reader of a split (loader, validation, eval, report) opens it here."""
    root = store if isinstance(store, zarr.Group) else open_store(store, storage_options)
    try:
        return root[split]
    except KeyError:
        try:
            have = sorted(root.group_keys())
        except Exception:  # stores that cannot list (plain HTTP) still open groups by name
            have = "unknown (store cannot be listed)"
        raise StoreError(f"split {split!r} not in store {_name(store)!r}; splits: {have}") from None


def _name(store: Any) -> Any:
    return store.store_path if isinstance(store, zarr.Group) else store


def inspect_split(group: zarr.Group, split: str, arrays: tuple[str, ...], where: str) -> tuple[int, int, Specs]:
    """(samples, shard size, specs of `arrays`) of the split `group` of store `where`, checking that the
    arrays are row-aligned and share one shard size."""
    try:
        valid = group["valid"]
    except KeyError:
        raise StoreError(f"split {split!r} of {where!r} has no 'valid' array: not a proui store") from None
    n = int(group.attrs.get("n_samples", valid.shape[0]))
    shard_size = int(group.attrs.get("shard_size", (valid.shards or valid.chunks)[0]))
    specs: Specs = {}
    for name in arrays:
        try:
            arr = group[name]
        except KeyError:
            have = sorted(group.array_keys())
            raise StoreError(f"array {name!r} not in split {split!r}; arrays: {have}") from None
        if arr.shape[0] != n:
            raise ValueError(f"{split}/{name} has {arr.shape[0]} rows, the split has {n}")
        if (arr.shards or arr.chunks)[0] != shard_size:
            raise ValueError(f"{split}/{name} is sharded by {(arr.shards or arr.chunks)[0]} rows, "
                             f"the split by {shard_size}: whole-shard reads need one shard size")
        specs[name] = (tuple(arr.shape[1:]), arr.dtype)
    return n, shard_size, specs


# ----- gathering batches from shards in memory -----


def gather_rows(specs: Specs, locations: list[Location], blocks: dict[str, np.ndarray]) -> Batch:
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


# ----- reading -----


@dataclass
class ShardRead:
    """One segment being read into a reusable slot: one future per array."""

    slot: dict[str, np.ndarray]
    rows: int
    futures: list[concurrent.futures.Future]

    def data(self) -> dict[str, np.ndarray]:
        for future in self.futures:
            future.result()
        return {name: values[:self.rows] for name, values in self.slot.items()}


class ShardReader:
    """Reads segments into reused buffers: one request per array per segment, the arrays concurrently.

    Reusing the shard-sized buffers keeps each read from page-faulting tens of MB of fresh memory, which
    otherwise costs as much as the decompression.
    """

    def __init__(self, arrays: dict[str, zarr.Array], shard_size: int,
                 expected: dict[str, Expected] | None = None) -> None:
        """`expected`: per array, which shard objects must exist and their CRC-32C (`expected_objects`); None:
        nothing checked."""
        self.arrays, self.shard_size, self.expected = arrays, shard_size, expected or {}
        self.decoders = {name: shard_decoder(arr) for name, arr in arrays.items()}
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(len(arrays), 8))
        self.free: list[dict[str, np.ndarray]] = []
        self.local = threading.local()  # each reading thread's reusable buffer for a shard's raw bytes

    def submit(self, segment: Segment) -> ShardRead:
        slot = self.free.pop() if self.free else {
            name: np.empty((self.shard_size,) + arr.shape[1:], arr.dtype)
            for name, arr in self.arrays.items() if not is_string(arr.dtype)}
        futures = [self.pool.submit(self._read_one, name, segment, slot) for name in self.arrays]
        return ShardRead(slot, segment.stop - segment.start, futures)

    def release(self, read: ShardRead) -> None:
        read.data()
        self.free.append(read.slot)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _read_one(self, name: str, segment: Segment, slot: dict[str, np.ndarray]) -> None:
        shard = segment.start // self.shard_size
        try:
            self._read_into(name, segment, shard, slot)
        except (ValueError, RuntimeError) as e:  # a changed or cut object: its CRC, zstd, the index's crc32c
            arr = self.arrays[name]
            raise DamagedShard(f"{self._where(arr, shard)} is damaged ({type(e).__name__}: {e}); run "
                               "`proui-data verify` on the store, and the build command with --repair to rewrite it"
                               ) from e

    def _read_into(self, name: str, segment: Segment, shard: int, slot: dict[str, np.ndarray]) -> None:
        arr, selection = self.arrays[name], slice(segment.start, segment.stop)
        expected = self.expected.get(name)
        required = expected is not None and bool(expected.required[shard])
        crc = expected.crc32c.get(shard) if expected is not None else None
        decoder = self.decoders[name]
        if decoder is not None and not is_string(arr.dtype) and segment.stop - segment.start == self.shard_size:
            data = self._shard_bytes(arr, shard)
            self._check(arr, shard, data, required, crc)
            decoder(data, slot[name])
            return
        # zarr's read (strings, short reads, other layouts) fills an absent object silently: checked first, at the
        # cost of a second request for the object
        if crc is not None:
            data = run_store_io(shard_object(arr, shard).get(prototype=default_buffer_prototype()))
            self._check(arr, shard, None if data is None else data.to_bytes(), required, crc)
        elif required and not run_store_io(shard_object(arr, shard).exists()):
            self._missing(arr, shard)
        if is_string(arr.dtype):
            slot[name] = np.asarray(arr[selection])
            return
        out = default_buffer_prototype().nd_buffer.from_numpy_array(slot[name][:segment.stop - segment.start])
        arr.get_basic_selection(selection, out=out)

    def _where(self, arr: zarr.Array, shard: int) -> str:
        start = shard * self.shard_size
        return (f"{arr.path} shard {shard} (rows {start}:{min(start + self.shard_size, arr.shape[0])}): object "
                f"{shard_object(arr, shard).path} of {arr.store_path.store}")

    def _check(self, arr: zarr.Array, shard: int, data: bytes | memoryview | None, required: bool,
               crc: int | None) -> None:
        """Refuse an object that must exist and does not, or whose bytes are not the recorded ones."""
        if data is None:
            if required:
                self._missing(arr, shard)
        elif crc is not None and crc32c(data) != crc:
            raise ValueError(f"CRC-32C of its {len(data)} bytes differs from the one recorded at build time")

    def _missing(self, arr: zarr.Array, shard: int) -> None:
        raise MissingShard(f"{self._where(arr, shard)} is missing (zarr would read fill values); run `proui-data "
                           "verify` on the store, and the build command again to rewrite it")

    def _shard_bytes(self, arr: zarr.Array, shard: int) -> memoryview | None:
        """The stored object of one shard (None: never written), in one request."""
        path = shard_object(arr, shard)
        file = _local_file(path)
        if file is not None:
            return self._read_file(file)
        data = run_store_io(path.get(prototype=default_buffer_prototype()))
        return None if data is None else memoryview(data.as_numpy_array())

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


class SegmentWindow:
    """The segments a role's remaining sample order needs, each read one segment ahead of its first use and
    its buffers released after its last."""

    def __init__(self, reader: ShardReader, segments: list[Segment], seg: np.ndarray) -> None:
        self.reader, self.segments = reader, segments
        first_use: dict[int, int] = {}
        self.last_use: dict[int, int] = {}
        for t, s in enumerate(seg.tolist()):
            first_use.setdefault(s, t)
            self.last_use[s] = t
        self.upcoming = iter(sorted(first_use, key=first_use.get))
        self.pending: deque[tuple[int, ShardRead]] = deque()
        self.loaded: dict[int, ShardRead] = {}
        self._read_ahead()

    def locations(self, seg: np.ndarray, rows: np.ndarray) -> list[Location]:
        """Where the samples (segment numbers `seg`, rows `rows`) lie, reading what they need first."""
        needed = set(seg.tolist())
        while not needed <= self.loaded.keys():
            s, read = self.pending.popleft()
            self.loaded[s] = read
            self._read_ahead()
        data = {s: self.loaded[s].data() for s in needed}
        return [(data[s], r - self.segments[s].start) for s, r in zip(seg.tolist(), rows.tolist())]

    def release_used(self, seg: np.ndarray, stop: int) -> None:
        """Free the buffers of the segments in `seg` that no position from `stop` on needs."""
        for s in set(seg.tolist()):
            if self.last_use[s] < stop:
                self.reader.release(self.loaded.pop(s))

    def _read_ahead(self) -> None:
        s = next(self.upcoming, None)
        if s is not None:
            self.pending.append((s, self.reader.submit(self.segments[s])))


def _local_file(path: StorePath) -> str | None:
    """The file behind a StorePath when its store is a local directory, else None."""
    if not isinstance(path.store, LocalStore):
        return None
    return os.path.join(str(path.store.root), *path.path.split("/"))


def shard_decoder(arr: zarr.Array) -> Callable[[bytes | memoryview | None, np.ndarray], None] | None:
    """A decoder of whole shards of `arr` into a (shard_size, ...) buffer, or None when `arr` is not laid out
    the way the pipeline writes it (sharded along axis 0 only; inner chunks: bytes + optional zstd; index:
    bytes + crc32c at the end). zarr's own read path costs 3-4x the CPU of this direct decode (its
    intermediate buffers and copies); any other layout goes through zarr.
    """
    if not _pipeline_layout(arr):
        return None
    import google_crc32c
    from numcodecs import Zstd

    sharding = arr.metadata.codecs[0]
    n_chunks, rows = arr.shards[0] // sharding.chunk_shape[0], sharding.chunk_shape[0]
    index_bytes = 16 * n_chunks + 4
    zstd = Zstd() if isinstance(sharding.codecs[-1], ZstdCodec) else None
    fill = np.asarray(arr.metadata.fill_value, dtype=np.dtype(arr.dtype))

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


def _pipeline_layout(arr: zarr.Array) -> bool:
    """Whether `arr` is laid out as the pipeline writes it, the only layout `shard_decoder` decodes."""
    codecs = getattr(arr.metadata, "codecs", ())
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or arr.shards is None:
        return False
    sharding = codecs[0]
    inner = [type(c) for c in sharding.codecs]
    if (sharding.index_location != ShardingCodecIndexLocation.end
            or [type(c) for c in sharding.index_codecs] != [BytesCodec, Crc32cCodec]
            or inner not in ([BytesCodec], [BytesCodec, ZstdCodec])):
        return False
    dtype, endian = np.dtype(arr.dtype), sharding.codecs[0].endian
    if dtype.kind not in "biuf" or (dtype.itemsize > 1 and (sys.byteorder != "little" or endian is None
                                                            or endian.value != "little")):
        return False  # the decode copies bytes as they are: multi-byte values must be stored little-endian
    chunk, shard = sharding.chunk_shape, arr.shards
    return tuple(chunk[1:]) == tuple(shard[1:]) == tuple(arr.shape[1:]) and not shard[0] % chunk[0]
