"""`proui-train infer` on folders: every entry accounted for (links, directories, FIFOs, broken files), keys with
their sub-folders, the output layout, an empty input, and a real multi-face photo."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from fixtures import write_jpeg
from proui_train.cli import main as cli
from test_restore import RELEASE, tiny_face_photo


def infer(args: list[str]):
    return CliRunner().invoke(cli, ["infer", "--checkpoint", str(RELEASE), "--device", "cpu", *args])


def rows_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_every_entry_is_accounted_for_and_keys_keep_sub_folders(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    write_jpeg(src / "a" / "face.jpg", tiny_face_photo())
    write_jpeg(src / "b" / "face.jpg", tiny_face_photo(0.2))
    cv2.imwrite(str(src / "b" / "face.png"), cv2.cvtColor(tiny_face_photo(0.22), cv2.COLOR_RGB2BGR))
    (src / "dangling.jpg").symlink_to(src / "nowhere.jpg")
    (src / "x.jpg").mkdir()
    os.mkfifo(src / "pipe.jpg")  # opened, it would block the run forever
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    write_jpeg(src / "blank.jpg", np.full((200, 200, 3), 90, np.uint8))
    r = infer(["--input", str(src), "--out", str(out)])
    assert r.exit_code == 0, r.output
    rows = rows_of(out)
    why = {x["input"]: x.get("reason") for x in rows if x["status"] == "skipped"}
    assert why == {"dangling.jpg": "dangling_link", "x.jpg": "directory", "pipe.jpg": "special_file",
                   "broken.jpg": "decode:corrupt", "blank.jpg": "no_face"}
    restored = {x["input"]: x for x in rows if x["status"] == "restored"}
    assert set(restored) == {"a/face.jpg", "b/face.jpg", "b/face.png"}
    assert {Path(x["restored"]).relative_to(out).as_posix() for x in restored.values()} == {
        "restored/a/face.png", "restored/b/face.jpg.png", "restored/b/face.png.png"}
    for x in restored.values():
        assert x["mode"] == "tiny" and 15 < x["eye_distance"] <= 27.5 and x["face"] == 0
        assert cv2.imread(x["restored"]).shape == (240, 320, 3) and cv2.imread(x["strip"]).shape == (128, 384, 3)
    assert "3 face(s) restored" in r.output


def test_an_empty_input_exits_1_with_a_message(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("no photos here")
    r = infer(["--input", str(tmp_path / "in"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and "no image files found" in r.output and "notes.txt: not_an_image" in r.output
    os.mkfifo(tmp_path / "pipe.jpg")
    r = infer(["--input", str(tmp_path / "pipe.jpg"), "--out", str(tmp_path / "out")])
    assert r.exit_code == 1 and "pipe.jpg: special_file" in r.output


def test_every_face_of_a_group_photo_with_its_own_key(shared_data, tmp_path):
    """A wild photo with two people: both faces found, largest first, each with its own strip and row; with
    --upscale 2 the restored photo is twice the size."""
    photo = shared_data / "wild" / "celeba_in_the_wild" / "037407.jpg"
    r = infer(["--input", str(photo), "--out", str(tmp_path), "--upscale", "2"])
    assert r.exit_code == 0, r.output
    rows = rows_of(tmp_path)
    assert [x["face"] for x in rows] == [0, 1]
    areas = [(x["box"][2] - x["box"][0]) * (x["box"][3] - x["box"][1]) for x in rows]
    assert areas[0] > areas[1]
    small = [x for x in rows if x["mode"] == "tiny"]
    assert small and all(x["status"] == "restored" for x in small)
    assert all(x["status"] == "left_as_is" for x in rows if x["mode"] == "large")
    h, w = cv2.imread(str(photo)).shape[:2]
    assert cv2.imread(str(tmp_path / "restored" / "037407.png")).shape == (2 * h, 2 * w, 3)
    assert (tmp_path / "faces" / f"037407_{small[0]['face']}.png").is_file()
