"""The streaming loader (proui_train/data/) over small synthetic stores in the store contract's layout.

Most tests drive the dataset's workers in-process (`iter_worker`) with the DataLoader's round robin; two tests
run real spawned DataLoader workers and check that they give exactly what the in-process model predicts.
"""
from __future__ import annotations

import functools
import http.server
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from proui_train.data import (BatchRing, DeviceBatcher, StoreDataset, make_loader, shard_decoder,
                               to_model_layout)
from storefactory import invalid_rows, write_store

N, SHARD = 300, 32
VALID_ROWS = np.flatnonzero(~invalid_rows(N, SHARD))  # 229 rows; shard 1 has none


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return write_store(tmp_path_factory.mktemp("loader") / "store.zarr", {"train": N, "val": 40}, shard_size=SHARD)


def round_robin(dataset: StoreDataset, num_workers: int) -> list:
    """What a DataLoader with `num_workers` workers yields: worker 0's next item, worker 1's, ..., skipping
    exhausted workers (torch's in-order behaviour, checked against real workers below)."""
    workers = [dataset.iter_worker(w, num_workers) for w in range(num_workers)]
    items, active = [], list(workers)
    while active:
        for worker in list(active):
            item = next(worker, None)
            if item is None:
                active.remove(worker)
            else:
                items.append(item)
    return items


def indices(items: list) -> list[int]:
    return [i for item in items for i in np.atleast_1d(item["index"].numpy()).tolist()]


def resume_state(dataset: StoreDataset, num_workers: int, seen: int, epoch: int = 0) -> dict:
    return {"seed": dataset.seed, "epoch": epoch, "samples_seen": seen, **dataset.layout(num_workers)}


def test_one_epoch_yields_every_valid_sample_once_with_its_own_data(store):
    dataset = StoreDataset(store, arrays=("hr", "landmarks", "key", "valid"), batch_size=16, seed=3)
    batches = list(dataset)
    got = indices(batches)
    assert sorted(got) == VALID_ROWS.tolist()
    assert got != sorted(got)  # shuffled
    assert len(batches) == len(dataset) == 15 and [len(b["key"]) for b in batches[-2:]] == [16, 229 - 14 * 16]
    for batch in batches:
        index = batch["index"]
        assert batch["hr"].dtype == torch.uint8 and batch["hr"].shape[1:] == (32, 32, 3)
        assert batch["landmarks"].dtype == torch.float32
        assert torch.equal(batch["landmarks"][:, 0, 0].long(), index)
        assert torch.equal(batch["hr"][:, 0, 0, 0].long(), index % 256)
        assert batch["key"] == [f"{i:06d}.jpg" for i in index.tolist()]
        assert bool(batch["valid"].all())

    samples = list(StoreDataset(store, arrays=("landmarks",), batch_size=None, seed=3))
    assert sorted(int(s["index"]) for s in samples) == VALID_ROWS.tolist()
    assert all(s["landmarks"].shape == (68, 2) and int(s["landmarks"][0, 0]) == int(s["index"]) for s in samples)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers,batch_size", [(1, 1), (2, 16), (3, 7), (4, 64)])
def test_ranks_and_workers_split_equal_disjoint_shares(store, world_size, num_workers, batch_size):
    per_rank = []
    for rank in range(world_size):
        dataset = StoreDataset(store, arrays=("landmarks",), batch_size=batch_size, seed=1, shuffle_shards=3,
                               rank=rank, world_size=world_size)
        items = round_robin(dataset, num_workers)
        got = indices(items)
        for item in items:
            assert torch.equal(item["landmarks"][:, 0, 0].long(), item["index"])
        assert len(items) == len(dataset)
        # one short batch per rank at most, and it comes last
        assert all(len(item["index"]) == batch_size for item in items[:-1])
        per_rank.append(got)
    sizes = {len(got) for got in per_rank}
    assert sizes == {len(VALID_ROWS) // world_size}
    seen = Counter(i for got in per_rank for i in got)
    assert max(seen.values()) == 1 and set(seen) <= set(VALID_ROWS.tolist())
    assert len(VALID_ROWS) - len(seen) == len(VALID_ROWS) % world_size < world_size


def test_drop_last_gives_full_batches_and_equal_batch_counts(store):
    counts = []
    for rank in range(2):
        dataset = StoreDataset(store, arrays=("landmarks",), batch_size=16, drop_last=True, seed=0,
                               rank=rank, world_size=2)
        items = round_robin(dataset, 3)
        assert {len(item["index"]) for item in items} == {16} and len(items) == len(dataset) == 114 // 16
        counts.append(len(items))
    assert counts[0] == counts[1]


def test_order_changes_with_epoch_and_repeats_with_seed(store):
    def order(seed: int, epoch: int) -> list[int]:
        dataset = StoreDataset(store, arrays=("landmarks",), batch_size=16, seed=seed)
        dataset.set_epoch(epoch)
        return indices(round_robin(dataset, 2))

    first = order(0, 0)
    assert order(0, 0) == first
    assert order(0, 1) != first and sorted(order(0, 1)) == sorted(first)
    assert order(1, 0) != first
    # the shuffle buffer mixes shards: the first 32 samples come from several shards
    assert len({i // SHARD for i in first[:32]}) >= 4


@pytest.mark.parametrize("num_workers,batch_size,seen", [(1, 1, 100), (2, 16, 48), (3, 16, 80), (3, 7, 59),
                                                         (2, 16, 229), (2, 16, 0)])
def test_resume_yields_exactly_the_unseen_samples_in_order(store, num_workers, batch_size, seen):
    dataset = StoreDataset(store, arrays=("landmarks",), batch_size=batch_size, seed=5, shuffle_shards=2)
    dataset.set_epoch(2)
    full = indices(round_robin(dataset, num_workers))

    dataset.load_state_dict(resume_state(dataset, num_workers, seen, epoch=2))
    rest = indices(round_robin(dataset, num_workers))
    assert rest == full[seen:]

    # a state saved during the resumed run means the same as one saved without interruption
    later = min(seen + 2 * batch_size + 3, len(full))
    dataset.load_state_dict(resume_state(dataset, num_workers, later, epoch=2))
    assert indices(round_robin(dataset, num_workers)) == full[later:]


def test_state_dict_counts_what_was_handed_out(store):
    dataset = StoreDataset(store, arrays=("landmarks",), batch_size=10, seed=0)
    full = indices(list(dataset))
    dataset.set_epoch(0)
    it = iter(dataset)
    for _ in range(4):
        next(it)
    state = dataset.state_dict()
    assert state["samples_seen"] == 40 and state["epoch"] == 0
    del it
    fresh = StoreDataset(store, arrays=("landmarks",), batch_size=10, seed=0)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["samples_seen"] == 40
    assert indices(list(fresh)) == full[40:]
    assert fresh.state_dict()["samples_seen"] == len(full)
    assert len(indices(list(fresh))) == len(full)  # the resume point was used up by the finished epoch

    with pytest.raises(ValueError, match="batch_size"):
        StoreDataset(store, arrays=("landmarks",), batch_size=8, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        StoreDataset(store, arrays=("landmarks",), batch_size=10, seed=1).load_state_dict(state)
    resumed_elsewhere = StoreDataset(store, arrays=("landmarks",), batch_size=10, seed=0)
    resumed_elsewhere.load_state_dict({**state, "num_workers": 2})
    with pytest.raises(RuntimeError, match="2 DataLoader workers"):
        list(resumed_elsewhere)


class CountingStore(zarr.storage.WrapperStore):
    """Counts data reads per array (metadata reads aside)."""

    def __init__(self, store, reads: Counter) -> None:
        super().__init__(store)
        self.reads = reads

    def _with_store(self, store):
        return type(self)(store, self.reads)

    async def get(self, key, prototype, byte_range=None):
        if not key.endswith("zarr.json"):
            self.reads[key.split("/")[1]] += 1
        return await super().get(key, prototype, byte_range)


def test_reads_whole_shards_not_samples(store):
    reads: Counter = Counter()
    counting = CountingStore(zarr.storage.LocalStore(store, read_only=True), reads)
    dataset = StoreDataset(counting, arrays=("hr", "landmarks", "occlusion_mask"), batch_size=8, seed=0)
    reads.clear()  # `valid` was read at construction
    got = indices(list(dataset))
    assert len(got) == len(VALID_ROWS)
    # 10 shards, one of them all invalid: one request per shard per array, except that zarr reads the short
    # last shard (rows 288-299 of a 32-row shard) as its index plus the one inner chunk it needs
    shards_with_samples = 9
    assert dict(reads) == {"hr": shards_with_samples + 1, "landmarks": shards_with_samples + 1,
                           "occlusion_mask": shards_with_samples + 1}

    # two workers split the rank at one shard: that shard costs its index and a few chunk reads more
    reads.clear()
    indices(round_robin(dataset, 2))
    assert all(shards_with_samples + 1 <= r <= shards_with_samples + 4 for r in reads.values())


def _shard_bytes(arr: zarr.Array, k: int) -> bytes | None:
    from zarr.buffer import default_buffer_prototype
    from proui_train.data.shards import run_store_io as sync

    key = arr.metadata.encode_chunk_key((k,) + (0,) * (arr.ndim - 1))
    data = sync((arr.store_path / key).get(prototype=default_buffer_prototype()))
    return None if data is None else data.to_bytes()


def test_direct_shard_decode_matches_zarr(store, tmp_path):
    group = zarr.open_group(store, mode="r")["train"]
    for name in ("hr", "landmarks", "heatmaps", "valid", "identity", "parsing"):
        arr = group[name]
        decode = shard_decoder(arr)
        assert decode is not None, name
        for k in (0, 1, 2):
            out = np.empty((SHARD,) + arr.shape[1:], arr.dtype)
            decode(_shard_bytes(arr, k), out)
            assert np.array_equal(out, arr[k * SHARD:(k + 1) * SHARD], equal_nan=True), (name, k)
    assert shard_decoder(group["key"]) is None  # strings go through zarr

    # absent inner chunks and a never-written shard read as the fill value; no compressor works too
    root = zarr.open_group(tmp_path / "sparse.zarr", mode="w")
    arr = root.create_array("x", shape=(64, 3), dtype="float32", chunks=(8, 3), shards=(32, 3), fill_value=-1.0,
                            compressors=None)
    arr[0:8] = np.arange(24, dtype=np.float32).reshape(8, 3)
    arr[16:24] = 5.0
    for k in (0, 1):
        out = np.zeros((32, 3), np.float32)
        shard_decoder(arr)(_shard_bytes(arr, k), out)
        assert np.array_equal(out, arr[k * 32:(k + 1) * 32])
    assert _shard_bytes(arr, 1) is None

    corrupt = bytearray(_shard_bytes(arr, 0))
    corrupt[-10] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        shard_decoder(arr)(bytes(corrupt), np.zeros((32, 3), np.float32))

    with pytest.raises(ValueError, match="shorter than its index"):
        shard_decoder(arr)(b"\0" * 7, np.zeros((32, 3), np.float32))

    # layouts the direct decoder does not know are read through zarr
    other = root.create_array("y", shape=(64, 3), dtype="int16", chunks=(8, 3), shards=(32, 3),
                              compressors=zarr.codecs.BloscCodec())
    unsharded = root.create_array("z", shape=(64, 3), dtype="int16", chunks=(32, 3))
    assert shard_decoder(other) is None and shard_decoder(unsharded) is None


def test_other_layouts_read_through_zarr(tmp_path):
    root = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    train = root.create_group("train")
    valid = np.arange(50) % 5 != 0
    train.create_array("valid", shape=(50,), dtype=bool, chunks=(16,))[:] = valid
    values = np.arange(50 * 4, dtype=np.int16).reshape(50, 4)
    train.create_array("values", shape=(50, 4), dtype="int16", chunks=(16, 4),
                       compressors=zarr.codecs.BloscCodec())[:] = values
    dataset = StoreDataset(tmp_path / "plain.zarr", arrays=("values",), batch_size=8, seed=0)
    batches = list(dataset)
    assert sorted(indices(batches)) == np.flatnonzero(valid).tolist()
    for batch in batches:
        assert torch.equal(batch["values"], torch.from_numpy(values[batch["index"].numpy()]))


def test_memory_store_and_errors():
    url = write_store("memory://proui-loader-test/store.zarr", {"val": 70}, shard_size=16)
    dataset = StoreDataset(url, split="val", arrays=("hr", "lr_occluded"), batch_size=32)
    batches = list(dataset)
    assert sorted(indices(batches)) == np.flatnonzero(~invalid_rows(70, 16)).tolist()
    assert batches[0]["lr_occluded"].shape[1:] == (4, 4, 3)

    with pytest.raises(KeyError, match=r"split 'test' not in store .*splits: \['val'\]"):
        StoreDataset(url, split="test")
    with pytest.raises(KeyError, match=r"array 'heatmap' not in split 'val'; arrays: \[.*'heatmaps'"):
        StoreDataset(url, split="val", arrays=("hr", "heatmap"))
    with pytest.raises(ValueError, match="rank 2 is not in"):
        StoreDataset(url, split="val", rank=2, world_size=2)
    with pytest.raises(ValueError, match="fork deadlocks"):
        make_loader(dataset, batch_size=32, num_workers=2, multiprocessing_context="fork")
    with pytest.raises(ValueError, match="dataset batches by 32"):
        make_loader(dataset, batch_size=16, num_workers=0)


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with HTTP Range support (zarr reads shard indexes as byte-range suffixes), GET only."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        spec = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not spec or not path.is_file():
            return super().do_GET()
        data = path.read_bytes()
        first, last = spec.removeprefix("bytes=").split("-")
        start, stop = (len(data) - int(last), len(data)) if not first else (
            int(first), len(data) if not last else int(last) + 1)
        body = data[max(start, 0):stop]
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {max(start, 0)}-{max(start, 0) + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_http_store_read_only(store):
    pytest.importorskip("aiohttp", reason="fsspec's HTTP filesystem needs aiohttp")
    root = Path(store).parent
    handler = functools.partial(_RangeHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{Path(store).name}"
        dataset = StoreDataset(url, arrays=("hr", "landmarks"), batch_size=32, seed=0)
        batches = list(dataset)
        assert sorted(indices(batches)) == VALID_ROWS.tolist()
        assert all(torch.equal(b["landmarks"][:, 0, 0].long(), b["index"]) for b in batches)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_device_batcher_converts_layouts_and_runs_hooks(store):
    dataset = StoreDataset(store, arrays=("hr", "lr_occluded", "landmarks", "occlusion_mask", "parsing",
                                          "heatmaps"), batch_size=16, seed=0)
    host = next(iter(dataset))
    calls = []

    def mark(batch):
        calls.append(batch["hr"].shape[0])
        return {**batch, "hr": -batch["hr"]}

    batcher = DeviceBatcher(make_loader(dataset, batch_size=16, num_workers=0), "cpu", augment=[mark])
    it = iter(batcher)
    first = next(it)
    assert batcher.state_dict()["samples_seen"] == 16  # the prefetched second batch is not counted
    assert first["hr"].shape == (16, 3, 32, 32) and first["hr"].dtype == torch.float32
    expected = host["hr"].permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(-first["hr"], expected)  # the hook ran after the conversion
    assert float(first["hr"].min()) >= -1 and float(first["hr"].max()) <= 1
    assert first["lr_occluded"].shape == (16, 3, 4, 4)
    assert first["occlusion_mask"].shape == (16, 1, 32, 32)
    assert torch.allclose(first["occlusion_mask"][:, 0], host["occlusion_mask"].float() / 255)
    assert first["heatmaps"].shape == (16, 68, 16, 16) and float(first["heatmaps"].max()) <= 1
    assert first["parsing"].dtype == torch.int64 and int(first["parsing"].max()) <= 10
    assert torch.equal(first["landmarks"], host["landmarks"])
    rest = list(it)
    assert calls == [16] * 14 + [229 - 14 * 16] and len(rest) == 14
    assert batcher.state_dict()["samples_seen"] == len(VALID_ROWS)

    with pytest.raises(ValueError, match="unknown conversion"):
        to_model_layout({"hr": host["hr"]}, {"hr": "rotate"})


def test_spawned_workers_one_rank_epochs_and_resume(store):
    dataset = StoreDataset(store, arrays=("hr", "landmarks"), seed=7, shuffle_shards=4)
    loader = make_loader(dataset, batch_size=12, num_workers=2)
    expected = [indices(round_robin(dataset, 2))]
    dataset.set_epoch(1)
    expected.append(indices(round_robin(dataset, 2)))
    dataset.set_epoch(0)

    got, state = [], None
    for i, batch in enumerate(loader):
        assert torch.equal(batch["landmarks"][:, 0, 0].long(), batch["index"])
        got += batch["index"].tolist()
        if i == 6:
            state = loader.state_dict()
    assert got == expected[0]  # the DataLoader interleaves workers exactly as modelled
    assert sorted(got) == VALID_ROWS.tolist()
    assert state["samples_seen"] == 84 and state["num_workers"] == 2

    loader.set_epoch(1)  # reaches the persistent workers
    assert indices(list(loader)) == expected[1]

    loader.load_state_dict(state)
    loader.set_epoch(0)
    assert indices(list(loader)) == expected[0][84:]


def test_spawned_workers_two_ranks_get_disjoint_equal_shares(store):
    loaders = [make_loader(StoreDataset(store, arrays=("landmarks",), seed=2, rank=rank, world_size=2),
                           batch_size=16, num_workers=2, persistent_workers=False) for rank in range(2)]
    running = [iter(loader) for loader in loaders]  # both ranks' workers start together
    shares = [indices(list(it)) for it in running]
    assert len(shares[0]) == len(shares[1]) == len(VALID_ROWS) // 2
    assert not set(shares[0]) & set(shares[1])
    assert len(VALID_ROWS) - len(set(shares[0]) | set(shares[1])) == 1


def test_batch_ring_slots_generations_and_layout():
    specs = {"hr": ((4, 4, 3), np.dtype(np.uint8)), "landmarks": ((68, 2), np.dtype(np.float32)),
             "key": ((), np.dtype("<U10"))}
    ring = BatchRing(specs, batch_size=5, num_workers=2, depth=3)
    assert set(ring.layout) == {"hr", "landmarks", "index"}  # strings travel in the message
    assert all(offset % 64 == 0 for offset, _, _ in ring.layout.values())
    ring.next_generation()
    gen = ring.current_generation()
    data = {"hr": np.arange(10 * 48, dtype=np.uint8).reshape(10, 4, 4, 3),
            "landmarks": np.arange(10 * 136, dtype=np.float32).reshape(10, 68, 2),
            "key": np.array([f"k{i}" for i in range(10)])}
    rows = np.array([7, 2, 9])
    messages = [ring.write(1, gen, specs, [(data, int(r)) for r in rows], rows + 100) for _ in range(3)]
    assert [m["_ring"][1] for m in messages] == [0, 1, 2] and ring.stamps[0].tolist() == [0, 0, 0]
    batch = ring.batch(messages[0])
    assert batch["hr"].shape == (3, 4, 4, 3) and torch.equal(batch["hr"], torch.from_numpy(data["hr"][rows]))
    assert torch.equal(batch["landmarks"], torch.from_numpy(data["landmarks"][rows]))
    assert batch["index"].tolist() == [107, 102, 109] and batch["key"] == ["k7", "k2", "k9"]
    # released slots are refilled; a full ring frees up when a new iteration starts (abandoned batches)
    ring.release(*messages[1]["_ring"])
    assert ring.write(1, gen, specs, [(data, 0)], np.array([0]))["_ring"][1] == 1
    ring.next_generation()
    new = ring.write(1, gen + 1, specs, [(data, 0)], np.array([0]))["_ring"]
    ring.release(*messages[0]["_ring"])  # late release of an old batch must not free the new claim
    assert int(ring.stamps[new[0], new[1]]) == gen + 1


def test_spawned_workers_hand_batches_over_through_the_ring(store):
    dataset = StoreDataset(store, arrays=("hr", "landmarks", "key"), seed=3)
    loader = make_loader(dataset, batch_size=16, num_workers=2, prefetch_factor=2)
    ring = dataset._ring
    for i, _ in enumerate(loader):  # leave epoch 0 early: the workers' slots hold discarded batches
        if i == 2:
            break
    dataset.set_epoch(1)
    expected = indices(round_robin(dataset, 2))
    kept = list(loader)  # the same persistent workers: the abandoned slots must not block them
    assert indices(kept) == expected
    for batch in kept:  # copies survive later batches written into the same slots
        index = batch["index"]
        assert torch.equal(batch["landmarks"][:, 0, 0].long(), index)
        assert torch.equal(batch["hr"][:, 0, 0, 0].long(), index % 256)
        assert batch["key"] == [f"{i:06d}.jpg" for i in index.tolist()]
    lo, hi = ring.memory.data_ptr(), ring.memory.data_ptr() + ring.memory.numel()
    assert not lo <= kept[0]["hr"].data_ptr() < hi

    views = make_loader(StoreDataset(store, arrays=("hr", "landmarks"), seed=3), batch_size=16, num_workers=2,
                        reuse_batches=True)
    views.set_epoch(1)
    seen = []
    for batch in views:  # each batch is checked while it is current
        assert torch.equal(batch["landmarks"][:, 0, 0].long(), batch["index"])
        ring_memory = views.dataset._ring.memory
        assert ring_memory.data_ptr() <= batch["hr"].data_ptr() < ring_memory.data_ptr() + ring_memory.numel()
        seen += batch["index"].tolist()
    assert seen == expected

    kept = list(DeviceBatcher(views, "cpu"))  # the batcher copies out of the slots before moving on
    assert indices(kept) == expected
    for batch in kept:
        assert torch.equal(batch["landmarks"][:, 0, 0].long(), batch["index"])
        assert torch.equal(((batch["hr"][:, 0, 0, 0] + 1) * 127.5).round().long(), batch["index"] % 256)


def test_truncated_local_shard_is_a_clear_error(tmp_path):
    path = write_store(tmp_path / "store.zarr", {"train": 64}, shard_size=SHARD)
    shard = tmp_path / "store.zarr" / "train" / "hr" / "c" / "1" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a copy cut short
    dataset = StoreDataset(path, arrays=("hr",), batch_size=8, shuffle=False)
    with pytest.raises(ValueError, match="train/hr: shard"):
        list(dataset)
