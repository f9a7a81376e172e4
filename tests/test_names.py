"""File names that are not UTF-8: the photo is kept under an escaped key, everything the store writes is text."""
from __future__ import annotations

import json
import os
import random
import shutil

import pyarrow.parquet as pq
import pytest
import zarr
from click.testing import CliRunner

from proui_data.cli import main as cli
from proui_data.publish import publish
from proui_data.sources.base import Item, Source, key_name, name_key, scan_folder
from proui_data.store import DETECTIONS

from fixtures import demo_photo, write_jpeg

BAD = os.fsdecode(b"bad\xe9.jpg")  # Latin-1 e-acute: not UTF-8, os gives it as a surrogate


def test_name_key_escapes_only_what_is_not_utf8_and_round_trips():
    assert name_key(BAD) == "bad\\xe9.jpg" and name_key("café.jpg") == "café.jpg"
    assert name_key(os.fsdecode(b"a/\xff\xfe/x.png")) == "a/\\xff\\xfe/x.png"
    rng = random.Random(0)
    alphabet = b"a\\xe9/.\xc3\xa9\xff\x80\xf0\x9f\x98"  # backslashes, 'x', hex digits, partial UTF-8 sequences
    checked = 0
    for _ in range(5000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 10)))
        name = os.fsdecode(raw)
        key = name_key(name)
        key.encode("utf-8")  # text: storable in the key array and JSON attributes
        if "\\x" in name:  # a UTF-8 name literally holding `\xNN`: the one ambiguity (scan_folder skips clashes)
            continue
        assert os.fsencode(key_name(key)) == raw, raw
        checked += 1
    assert checked > 1000


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    write_jpeg(d / "good.jpg", demo_photo("astronaut.jpg"))
    shutil.copyfile(d / "good.jpg", os.fsencode(d) + b"/bad\xe9.jpg")
    (d / "sub\udcff").mkdir()  # a directory whose name is not UTF-8 either, holding a non-image
    (d / "sub\udcff" / "notes\udcfe.txt").write_text("not a photo")
    return d


def test_scan_skips_an_escaped_name_that_clashes_with_a_real_one(photos):
    (photos / "bad\\xe9.jpg").write_bytes((photos / "good.jpg").read_bytes())  # literally backslash-x-e-9
    scan = scan_folder(photos)
    assert scan.images == ["bad\\xe9.jpg", "good.jpg"]
    assert scan.skipped == {"name_clash": [BAD], "not_an_image": ["sub\udcff/notes\udcfe.txt"]}
    assert scan.entries == 4


def test_folder_build_keeps_the_photo_and_writes_only_text(photos, tmp_path):
    out = tmp_path / "s.zarr"
    args = ["build", "--source", "folder", "--root", str(photos), "--out", str(out), "--workers", "0",
            "--no-progress"]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "3 entries under the root: 2 images, 1 skipped" in r.output
    root = zarr.open_group(str(out), mode="r")
    g = root["train"]
    assert list(g["key"][:]) == ["bad\\xe9.jpg", "good.jpg"]
    assert g["valid"][:].all()
    assert (g["hr"][0] == g["hr"][1]).all()  # the same bytes: the same face, read through the escaped name
    assert (g["occlusion_mask"][0] != g["occlusion_mask"][1]).any()  # seeded by key: each its own occlusion
    # the detection pass record and the skip summary are JSON text naming the keys
    attrs = json.loads((out / "zarr.json").read_text(encoding="utf-8"))["attributes"]
    assert set(attrs[DETECTIONS]["train"]) == {"bad\\xe9.jpg", "good.jpg"}
    assert attrs["skipped"]["examples"] == {"not_an_image": ["sub\\xff/notes\\xfe.txt"]}
    info = CliRunner().invoke(cli, ["info", str(out)])
    assert info.exit_code == 0 and "skipped not_an_image: 1 (sub\\xff/notes\\xfe.txt)" in info.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 0 and "0 shards to write, 1 already finished" in again.output
    result = publish(str(out), "org/faces", dry_run=tmp_path / "repo", license_id="cc0-1.0")
    parquet = [p for p in result.files if p.endswith(".parquet")]
    keys = [k for p in parquet for k in pq.read_table(tmp_path / "repo" / p, columns=["key"])["key"].to_pylist()]
    assert keys == ["bad\\xe9.jpg", "good.jpg"]


class _Listed(Source):
    """A source with fixed items (as helen makes them: keys from file names)."""
    name = "listed"

    def __init__(self, items):
        self._items = items

    def splits(self):
        return ["train"]

    def items(self, split):
        return self._items


def test_any_source_key_that_is_not_utf8_is_escaped_at_plan(tmp_path):
    from proui_data.pipeline import plan_build
    from proui_data.recipe import load_recipe

    items = [Item(key="x/" + BAD, path="/nowhere"), Item(key="y.jpg", path="/nowhere")]
    plan = plan_build(_Listed(items), load_recipe(None, "demo"), str(tmp_path / "s.zarr"))
    assert [it.key for it in plan.splits["train"]] == ["x/bad\\xe9.jpg", "y.jpg"]
    assert plan.splits["train"][0].path == "/nowhere"
