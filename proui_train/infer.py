"""`proui-train infer`: the file layer over `restore.FaceRestorer`, laid out like GFPGAN's and CodeFormer's outputs.

For every image under `--input` (a file or a folder, recursively, every entry accounted for as the folder build
does, `proui_data.sources.base.scan_folder`):

    OUT/restored/<key>.png       the whole photo, restored faces pasted back (`--upscale` times its size)
    OUT/faces/<key>_<k>.png      per restored face: 16x16 input (nearest) | output | the photo aligned to 128x128
    OUT/results.jsonl            one row per face, and one per input without a restored face, with why

`<key>` is the path under the input folder without its suffix (sub-folders kept: `a/face.jpg` and `b/face.jpg`
both survive; two files differing only in suffix keep their whole name). An image of at most 32 px a side is a
thumbnail: resized to 16x16 and hallucinated as is.
"""
from __future__ import annotations

import json
import os
from collections import Counter
import stat
import time
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from proui_data.decode import DecodeError, decode_image
from proui_data.search import photo_faces
from proui_data.sources.base import scan_folder

from .restore import DEFAULT_MIN_EYE_DISTANCE, LR_SIZE, FaceRecord, FaceRestorer

THUMBNAIL_MAX_SIDE = 32


class InferError(ValueError):
    """Nothing to infer: the message says what was found instead."""


def entries(input_path: str | Path) -> tuple[Path, list[str], list[tuple[str, str]]]:
    """(root, image keys, (key, skip reason) of every other entry) of a file or a folder, without opening any
    (a FIFO would block)."""
    src = Path(input_path)
    if src.is_dir():
        scan = scan_folder(src)
        return src, scan.images, [(k, r) for r, keys in scan.skipped.items() for k in keys]
    try:
        st = os.stat(src)
    except FileNotFoundError:
        return src.parent, [], [(src.name, "dangling_link" if src.is_symlink() else "not_found")]
    if not stat.S_ISREG(st.st_mode):
        return src.parent, [], [(src.name, "special_file")]
    return src.parent, [src.name], []


def output_stems(keys: list[str]) -> dict[str, str]:
    """key -> the path its outputs are named by: the key without its suffix, or the whole key when another key
    has the same stem (`x.jpg` and `x.png`)."""
    stems = {k: os.path.splitext(k)[0] for k in keys}
    taken = Counter(stems.values())
    return {k: s if taken[s] == 1 else k for k, s in stems.items()}


def _write(path: Path, rgb: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return str(path)


def strip(record: FaceRecord) -> np.ndarray:
    """16x16 input scaled up (nearest) | 128x128 output | the photo aligned to 128x128 (when there is one)."""
    lr = cv2.resize(record.lr, record.sr.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    return np.concatenate([lr, record.sr] + ([record.aligned] if record.aligned is not None else []), axis=1)


def infer_photo(restorer: FaceRestorer, root: Path, key: str, stem: str, out: Path) -> Iterator[dict[str, Any]]:
    """The results rows of one image, its files written."""
    t0 = time.perf_counter()
    base = {"input": key}
    try:
        data = (root / key).read_bytes()
        decoded = decode_image(data, restorer.recipe.decode.max_pixels, restorer.recipe.decode.max_side)
        if max(decoded.rgb.shape[:2]) <= THUMBNAIL_MAX_SIDE:
            lr = cv2.resize(decoded.rgb, (LR_SIZE, LR_SIZE), interpolation=cv2.INTER_AREA)
            rec = FaceRecord(0, (0.0, 0.0, float(decoded.rgb.shape[1]), float(decoded.rgb.shape[0])), float("nan"),
                             "thumbnail", "restored", lr=lr)
            rec.sr = restorer.hallucinate(lr[None])[0]
            rec.seconds = time.perf_counter() - t0
            yield {**base, **rec.to_dict(), "eye_distance": None,
                   "restored": _write(out / "restored" / f"{stem}.png", rec.sr),
                   "strip": _write(out / "faces" / f"{stem}_0.png", strip(rec)),
                   "photo_seconds": round(rec.seconds, 4)}
            return
        decoded, faces = photo_faces(data, restorer.recipe, decoded)
    except DecodeError as e:
        yield {**base, "status": "skipped", "reason": f"decode:{e.reason}"}
        return
    except OSError as e:
        yield {**base, "status": "skipped", "reason": f"read_error:{type(e).__name__}: {e.strerror or e}"}
        return
    if not faces:
        yield {**base, "status": "skipped", "reason": "no_face",
               "photo_seconds": round(time.perf_counter() - t0, 4)}
        return
    restored, records = restorer.restore(decoded.rgb, faces)
    path = _write(out / "restored" / f"{stem}.png", restored) if any(r.status == "restored" for r in records) else None
    seconds = round(time.perf_counter() - t0, 4)
    for r in records:
        row = {**base, **r.to_dict(), "photo_seconds": seconds}
        if r.status == "restored":
            row.update(restored=path, strip=_write(out / "faces" / f"{stem}_{r.face}.png", strip(r)))
        yield row


def infer_paths(checkpoint: str, input_path: str, out_dir: str, device: str = "auto", template: str | None = None,
                downscale: bool = False, upscale: int = 1,
                min_eye_distance: float = DEFAULT_MIN_EYE_DISTANCE) -> list[dict[str, Any]]:
    """Restore every face of every image under `input_path` into `out_dir` (see the module docstring); returns
    the results rows (also in `out_dir/results.jsonl`). Raises InferError when there is no image to read."""
    root, keys, skipped = entries(input_path)
    if not keys:
        seen = ", ".join(f"{k}: {r}" for k, r in skipped[:5]) or "nothing"
        raise InferError(f"{input_path}: no image files found, recursively (seen {seen})")
    restorer = FaceRestorer(checkpoint, template, device=device, downscale=downscale, upscale=upscale,
                            min_eye_distance=min_eye_distance)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"input": k, "status": "skipped", "reason": r} for k, r in skipped]
    stems = output_stems(keys)
    with open(out / "results.jsonl", "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        for k in keys:
            for row in infer_photo(restorer, root, k, stems[k], out):
                rows.append(row)
                f.write(json.dumps(row) + "\n")
                f.flush()
    return rows
