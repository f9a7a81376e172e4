"""The fault matrix: kinds of damage x arrays x commands (verify, a rerun of the build, the loader).

Every shard object of a finished demo store is damaged in turn (deleted, truncated, 8 bytes flipped; and an
object added where the build stored none) and each command must name it or refuse it; a rerun must end with
every file byte-identical to the undamaged build. docs/store.md#damage-and-repair summarises the matrix.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import fsspec
import google_crc32c
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from proui_data import store
from proui_data.cli import main as cli
from proui_data.pipeline import plan_build
from proui_data.recipe import load_recipe
from proui_data.runner import run_plan
from proui_data.sources import get_source
from proui_data.verify import verify_store
from proui_train.data import StoreDataset
from proui_train.data.shards import DamagedShard, MissingShard

# The demo store: train has a full shard 0 (rows 0:4) and a short shard 1 (rows 4:6), val one short shard 0.
SHARDS = [("train", 0), ("train", 1), ("val", 0)]
KINDS = ("deleted", "truncated", "flipped")
SAYS = {"deleted": "missing", "truncated": "truncated", "flipped": "changed", "added": "present where"}


def build(url: str, repair: bool = False, **kw):
    plan = plan_build(get_source("demo"), load_recipe(None, "demo"), url, repair=repair, **kw)
    run_plan(plan, workers=0, progress=False)
    return plan


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "clean.zarr"
    build(str(out))
    return out


def copy_of(clean: Path, tmp_path: Path) -> Path:
    out = tmp_path / "damaged.zarr"
    shutil.copytree(clean, out)
    return out


def files_of(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def records(path: Path) -> dict[tuple[str, int], dict]:
    root = zarr.open_group(str(path), mode="r")
    return {(s, k): json.loads(str(root[s][store.DIGESTS][k])) for s, k in SHARDS}


def object_file(path: Path, split: str, array: str, k: int) -> Path:
    arr = zarr.open_group(str(path), mode="r")[split][array]
    return path / store.shard_object(arr, k).path


def damage(file: Path, kind: str) -> None:
    data = bytearray(file.read_bytes())
    if kind == "deleted":
        file.unlink()
    elif kind == "truncated":
        file.write_bytes(bytes(data[:len(data) // 2]))
    elif kind == "flipped":  # 8 bytes in the middle of the object, same size
        mid = len(data) // 2
        data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
        file.write_bytes(bytes(data))
    else:
        raise ValueError(kind)


def stored_objects(path: Path) -> list[tuple[str, int, str]]:
    """(split, shard, array) of every object the build stored, spread so every shard is damaged somewhere."""
    out = []
    for (s, k), record in records(path).items():
        out += [(s, k, a) for a, digest in sorted(record.items()) if digest is not None]
    return out


def test_the_clean_store_verifies_and_records_every_object(clean):
    problems, counts = verify_store(str(clean))
    assert problems == [] and all(c["content_hashes"] for c in counts.values())
    for (s, k), record in records(clean).items():
        root = zarr.open_group(str(clean), mode="r")
        names = set(root[s].array_keys()) - set(store.BOOKKEEPING)
        assert set(record) == names
        for a, digest in record.items():
            # every object is stored, an all-fill one too (identity: -1 unknown in the demo), and recorded by the
            # file's own size, sha256 (what `sha256sum` prints) and CRC-32C
            data = object_file(clean, s, a, k).read_bytes()
            assert digest == [len(data), hashlib.sha256(data).hexdigest(), google_crc32c.value(data)]
    np.testing.assert_array_equal(root["train"]["identity"][:], -1)


@pytest.mark.parametrize("kind", KINDS)
def test_verify_names_every_damaged_object(clean, tmp_path, kind):
    out = copy_of(clean, tmp_path)
    damaged = stored_objects(out)
    assert len(damaged) == 19 * 3  # every array's object in each of the 3 shards
    for s, k, a in damaged:
        damage(object_file(out, s, a, k), kind)
    problems, _ = verify_store(str(out))
    # one line per damaged object, naming split, array, shard and rows, and nothing else
    assert len(problems) == len(damaged), "\n".join(problems)
    for s, k, a in damaged:
        rows = f"(rows {k * 4}:{min(k * 4 + 4, 6 if s == 'train' else 2)})"
        assert any(p.startswith(f"{s}/{a} shard {k} {rows}: ") and SAYS[kind] in p for p in problems), (s, a, k)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("array", ["hr", "lr_occluded", "heatmaps", "key"])
def test_one_damaged_object_among_clean_ones(clean, tmp_path, kind, array):
    """The issue's case: one damaged object of the input (or any kind of array) in a finished store."""
    out = copy_of(clean, tmp_path)
    damage(object_file(out, "train", array, 1), kind)
    r = CliRunner().invoke(cli, ["verify", str(out)])
    assert r.exit_code == 1
    damage_lines = [line for line in r.output.splitlines() if line.startswith("DAMAGE")]
    assert len(damage_lines) == 1 and f"train/{array} shard 1 (rows 4:6)" in damage_lines[0], r.output
    assert SAYS[kind] in damage_lines[0]


@pytest.mark.parametrize("kind", KINDS)
def test_rerun_rewrites_damaged_shards_byte_identical(clean, tmp_path, kind):
    out = copy_of(clean, tmp_path)
    for s, k, a in stored_objects(out):
        damage(object_file(out, s, a, k), kind)
    plain = plan_build(get_source("demo"), load_recipe(None, "demo"), str(out))
    if kind == "flipped":  # a plain rerun checks sizes only: same-size changes need --repair (reads everything)
        assert plain.todo == [] and plain.damaged == []
    else:
        assert sorted(plain.todo) == sorted(SHARDS) and plain.skipped == 0
    plan = build(str(out), repair=True)
    assert sorted(plan.todo) == sorted(SHARDS)
    assert files_of(out) == files_of(clean)
    assert verify_store(str(out))[0] == []


def test_rerun_repairs_each_array_alone(clean, tmp_path):
    """A damaged object of one array rewrites its shard only; the others stay untouched."""
    out = copy_of(clean, tmp_path)
    damage(object_file(out, "val", "lr_occluded", 0), "truncated")
    damage(object_file(out, "train", "parsing", 0), "deleted")
    plan = build(str(out))
    assert sorted(plan.todo) == [("train", 0), ("val", 0)] and plan.skipped == 1
    assert files_of(out) == files_of(clean)


def as_written_before_every_object_was_stored(path: Path, split: str, k: int) -> list[str]:
    """Make shard k of a store look as builds before write_empty_chunks left it: no object, recorded null, for
    each array whose rows there are all the fill value. Returns those arrays."""
    group = zarr.open_group(str(path), mode="r+")[split]
    size, n = group.attrs["shard_size"], group.attrs["n_samples"]
    record = json.loads(str(group[store.DIGESTS][k]))
    rows = slice(*store.shard_range(k, size, n))
    fill = [a for a in sorted(record) if np.array_equal(group[a][rows], np.full_like(group[a][rows],
                                                                                     group[a].fill_value))]
    for a in fill:
        object_file(path, split, a, k).unlink()
        record[a] = None
    group[store.DIGESTS][k] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return fill


def test_an_object_where_the_build_stored_none(clean, tmp_path):
    """A store from before every object was stored has no object for an all-fill shard: it verifies clean, an
    object added there is named, and a rerun rewrites the shard as today's build does."""
    out = copy_of(clean, tmp_path)
    absent = as_written_before_every_object_was_stored(out, "train", 0)
    assert absent == ["identity", "occlusion_variant", "reject_reason"]  # -1 unknown, 0, "": all fill in the demo
    assert verify_store(str(out))[0] == []
    other = object_file(out, "train", "valid", 0)
    for a in absent:
        file = object_file(out, "train", a, 0)
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(other.read_bytes())  # a well-formed object that zarr would read
    problems, _ = verify_store(str(out))
    assert len(problems) == len(absent) and all(SAYS["added"] in p for p in problems), problems
    build(str(out))
    assert files_of(out) == files_of(clean)


@pytest.mark.parametrize("bookkeeping", [store.DONE, store.DIGESTS])
@pytest.mark.parametrize("kind", ["deleted", "flipped"])
def test_damaged_bookkeeping_rewrites_the_shard(clean, tmp_path, bookkeeping, kind):
    out = copy_of(clean, tmp_path)
    file = out / "train" / bookkeeping / "c" / "1"
    if bookkeeping == store.DONE and kind == "flipped":
        file.write_bytes(b"\x00")  # the one byte of the mark: a flip to another non-zero value changes nothing
    else:
        damage(file, kind)
    problems, _ = verify_store(str(out))
    expect = "1 of 2 shards not finished" if bookkeeping == store.DONE else "_shard_digests shard 1 (rows 4:6)"
    assert len(problems) == 1 and expect in problems[0], problems
    plan = build(str(out))
    assert plan.todo == [("train", 1)]
    assert files_of(out) == files_of(clean)


def _first_batches(url: str, arrays: tuple[str, ...], storage_options: dict | None = None) -> list:
    dataset = StoreDataset(url, "train", arrays=arrays, batch_size=2, shuffle=False, rank=0, world_size=1,
                           storage_options=storage_options)
    return list(dataset)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shard", [0, 1])  # a full shard (the direct decode) and a short one (zarr's read)
@pytest.mark.parametrize("array", ["lr_occluded", "hr", "key"])
def test_the_loader_never_serves_a_damaged_object(clean, tmp_path, kind, shard, array):
    out = copy_of(clean, tmp_path)
    assert len(_first_batches(str(out), ("lr_occluded", "hr", "key"))) == 3
    damage(object_file(out, "train", array, shard), kind)
    # deleted: refused by the record; truncated: the shard index's crc32c or bounds; flipped: zstd's frame checksum
    with pytest.raises(MissingShard if kind == "deleted" else DamagedShard) as got:
        _first_batches(str(out), ("lr_occluded", "hr", "key"))
    rows = "(rows 0:4)" if shard == 0 else "(rows 4:6)"
    assert f"train/{array} shard {shard} {rows}: object train/{array}/c/{shard}" in str(got.value)
    assert "proui-data verify" in str(got.value)
    if kind != "deleted":  # found by the recorded CRC-32C of the object, before any decoding
        assert "CRC-32C" in str(got.value)


def test_a_store_without_records_verifies_by_values_with_a_note(clean, tmp_path):
    out = copy_of(clean, tmp_path)
    for s in ("train", "val"):
        shutil.rmtree(out / s / store.DIGESTS)  # as written before content records existed
    problems, counts = verify_store(str(out))
    assert problems == [] and not any(c["content_hashes"] for c in counts.values())
    r = CliRunner().invoke(cli, ["verify", str(out)])
    assert r.exit_code == 0 and "note: train has no content hashes" in r.output
    # missing objects of arrays never all-fill in a valid shard are still found, by verify and by the loader
    damage(object_file(out, "train", "lr_occluded", 1), "deleted")
    problems, _ = verify_store(str(out))
    assert problems == ["train/lr_occluded shard 1 (rows 4:6): object train/lr_occluded/c/1/0/0/0 missing"]
    with pytest.raises(MissingShard, match="train/lr_occluded shard 1"):
        _first_batches(str(out), ("lr_occluded",))
    # a rerun keeps such a store's layout: no records appear for some shards only
    plan = plan_build(get_source("demo"), load_recipe(None, "demo"), str(out))
    assert plan.todo == [] and not (out / "train" / store.DIGESTS).exists()


def test_cli_names_the_damage_and_the_rerun_rewrites_it(clean, tmp_path):
    out = copy_of(clean, tmp_path)
    damage(object_file(out, "train", "lr_occluded", 0), "deleted")
    damage(object_file(out, "val", "heatmaps", 0), "deleted")
    damage(object_file(out, "train", "hr", 1), "flipped")
    r = CliRunner().invoke(cli, ["verify", str(out)])
    assert r.exit_code == 1 and "verify failed: 3 problem(s)" in r.output
    for name in ("train/lr_occluded shard 0 (rows 0:4)", "val/heatmaps shard 0 (rows 0:2)",
                 "train/hr shard 1 (rows 4:6)"):
        assert name in r.output
    args = ["build", "--source", "demo", "--out", str(out), "--workers", "0", "--no-progress"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0 and "2 shards to write, 1 already finished" in r.output, r.output
    assert r.output.count("rewriting a damaged shard") == 2
    r = CliRunner().invoke(cli, args + ["--repair"])
    assert r.exit_code == 0 and "1 shards to write, 2 already finished" in r.output, r.output
    assert "rewriting a damaged shard: train/hr shard 1 (rows 4:6)" in r.output
    assert files_of(out) == files_of(clean)
    assert CliRunner().invoke(cli, ["verify", str(out)]).exit_code == 0


def test_remote_store_damage_is_found_and_repaired(clean):
    """Through the fsspec store API (memory:// here, S3 in test_cluster), not local file paths."""
    url = "memory://proui-faults/demo.zarr"
    fs = fsspec.filesystem("memory")
    if fs.exists(url):
        fs.rm(url, recursive=True)
    build(url)
    try:
        remote = {p[len("/proui-faults/demo.zarr/"):]: fs.cat(p) for p in fs.find(url)}
        assert remote == files_of(clean)  # the same bytes as the local build
        fs.rm(f"{url}/train/lr_occluded/c/1/0/0/0")
        fs.pipe(f"{url}/train/hr/c/0/0/0/0", remote["train/hr/c/0/0/0/0"][:1000])
        problems, _ = verify_store(url)
        assert len(problems) == 2, problems
        assert any(p.startswith("train/lr_occluded shard 1 (rows 4:6): object") and "missing" in p for p in problems)
        assert any(p.startswith("train/hr shard 0 (rows 0:4): object") and "truncated: 1000 of" in p for p in problems)
        with pytest.raises((MissingShard, DamagedShard), match="train/(lr_occluded|hr) shard"):
            _first_batches(url, ("lr_occluded", "hr"))
        plan = build(url)
        assert sorted(plan.todo) == [("train", 0), ("train", 1)]
        assert {p[len("/proui-faults/demo.zarr/"):]: fs.cat(p) for p in fs.find(url)} == remote
    finally:
        fs.rm(url, recursive=True)
