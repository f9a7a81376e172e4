"""The one private zarr call the store and the loader make (`proui_data.store.run_store_io`, which wraps
`zarr.core.sync.sync`): zarr 3.1 has no public way to run a store coroutine from a plain thread. This fails
first, naming the call, when a zarr release moves or changes it."""
from __future__ import annotations

import inspect

import pytest
import zarr
from zarr.buffer import cpu, default_buffer_prototype

from proui_data.store import run_store_io


def test_zarr_sync_still_runs_store_coroutines_from_a_thread():
    try:
        from zarr.core.sync import sync
    except ImportError as error:
        pytest.fail(f"zarr {zarr.__version__} no longer has zarr.core.sync.sync, which "
                    f"proui_data/store.py:run_store_io calls: find its replacement ({error})")
    assert "coro" in inspect.signature(sync).parameters, (
        f"zarr {zarr.__version__} changed zarr.core.sync.sync{inspect.signature(sync)}: check run_store_io")

    store = zarr.storage.MemoryStore({"shard": cpu.Buffer.from_bytes(b"shard bytes")})
    path = zarr.storage.StorePath(store, "shard")
    got = run_store_io(path.get(prototype=default_buffer_prototype()))
    assert got is not None and got.to_bytes() == b"shard bytes"
    assert run_store_io((zarr.storage.StorePath(store) / "absent").get(prototype=default_buffer_prototype())) is None
