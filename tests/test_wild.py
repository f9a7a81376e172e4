"""Photos from the wild: every entry under a folder accounted for, small faces rejected, reduced-copy search."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from PIL import Image

from proui_data.cli import main as cli
from proui_data.sources import get_source
from proui_data.sources.base import scan_folder

from fixtures import demo_photo, write_jpeg


def _save(path, rgb: np.ndarray, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt)
    path.write_bytes(buf.getvalue())


def make_zoo(d) -> dict[str, str | None]:
    """A folder of good and bad entries; returns name -> expected skip reason (None: an image sample)."""
    face = demo_photo("astronaut.jpg")
    small = np.asarray(Image.fromarray(face).resize((96, 96)))
    expect: dict[str, str | None] = {}
    write_jpeg(d / "a_face.jpg", face)
    expect["a_face.jpg"] = None
    for name, fmt in (("b.GIF", "GIF"), ("c.bmp", "BMP"), ("d.TIFF", "TIFF"), ("e.webp", "WEBP"),
                      ("f.Png", "PNG"), ("g.JPEG", "JPEG"), ("no_extension", "PNG"), ("h.gif.bak", "GIF")):
        _save(d / name, small, fmt)
        expect[name] = None
    (d / "notes.txt").write_text("not a photo")
    (d / "face.pts").write_text("version: 1\n")
    (d / "no_ext_text").write_bytes(b"\x00\x01 binary junk")
    expect.update({"notes.txt": "not_an_image", "face.pts": "not_an_image", "no_ext_text": "not_an_image"})
    (d / "broken.gif").write_bytes(b"GIF89a garbage")  # a sample, rejected on decode
    expect["broken.gif"] = None
    os.symlink(d / "a_face.jpg", d / "link.jpg")
    os.symlink(d / "missing.jpg", d / "dangling.jpg")
    expect.update({"link.jpg": None, "dangling.jpg": "dangling_link"})
    (d / "x.jpg").mkdir()
    _save(d / "x.jpg" / "inner.png", small, "PNG")
    expect.update({"x.jpg": "directory", "x.jpg/inner.png": None})
    (d / "plain_dir").mkdir()
    os.symlink(d / "x.jpg", d / "dir_link")
    expect["dir_link"] = "directory_link"
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "pipe.jpg")
        expect["pipe.jpg"] = "special_file"
    return expect


def test_scan_accounts_for_every_entry(tmp_path):
    d = tmp_path / "zoo"
    d.mkdir()
    expect = make_zoo(d)
    scan = scan_folder(d)
    got = {k: None for k in scan.images} | {k: r for r, ks in scan.skipped.items() for k in ks}
    assert got == expect
    assert scan.entries == len(expect) == len(scan.images) + sum(scan.counts().values())
    assert scan.images == sorted(scan.images, key=lambda k: k.split("/"))


def test_no_images_names_what_was_skipped(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    from proui_data.sources import SourceError

    with pytest.raises(SourceError, match="not_an_image: 1"):
        get_source("folder", str(tmp_path)).items("train")


def test_zoo_build_never_stops_and_reports_skips(tmp_path):
    d = tmp_path / "zoo"
    d.mkdir()
    expect = make_zoo(d)
    out = tmp_path / "zoo.zarr"
    r = CliRunner().invoke(cli, ["build", "--source", "folder", "--root", str(d), "--out", str(out),
                                 "--workers", "0", "--no-progress"])
    assert r.exit_code == 0, r.output
    images = sorted((k for k, v in expect.items() if v is None), key=lambda k: k.split("/"))
    skipped = {k: v for k, v in expect.items() if v is not None}
    assert f"{len(expect)} entries under the root: {len(images)} images, {len(skipped)} skipped" in r.output
    g = zarr.open_group(str(out), mode="r")["train"]
    assert list(g["key"][:]) == images
    reasons = dict(zip(g["key"][:], g["reject_reason"][:]))
    assert reasons["broken.gif"].startswith("decode:") and reasons["a_face.jpg"] == ""
    # every other file decodes (GIF as its first frame, extension-less PNG, any case of extension)
    assert not any(v.startswith("decode:") for k, v in reasons.items() if k != "broken.gif")
    info = CliRunner().invoke(cli, ["info", str(out)]).output
    for reason in set(skipped.values()):
        n = sum(v == reason for v in skipped.values())
        assert f"skipped {reason}: {n} (" in info
    assert "dangling.jpg" in info
