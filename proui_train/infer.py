"""`proui-train infer`: hallucinate 128x128 faces from photos or 16x16 thumbnails, written side by side
(input scaled up with nearest neighbour | output | the aligned original when there is one)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from proui_data import align
from proui_data.decode import DecodeError, decode_image
from proui_data.degrade import downsample
from proui_data.detect import NoFace, locate_face
from proui_data.recipe import AlignRecipe
from proui_data.sources import IMAGE_SUFFIXES

from .evaluate import _model_predict
from .runtime import load_generator, pick_device


def prepare(path: Path, template: str = "celeba") -> tuple[np.ndarray, np.ndarray | None]:
    """(lr 16x16x3, aligned hr or None) for one file, aligned to the model's `template`; raises DecodeError /
    NoFace."""
    rgb = decode_image(path.read_bytes()).rgb
    if rgb.shape[:2] == (16, 16):
        return rgb, None
    if max(rgb.shape[:2]) <= 32:
        return cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_AREA), None
    found = locate_face(rgb, upsample=1)
    m = align.similarity_transform(align.landmarks68_to_5(found.landmarks), align.template_points(template))
    hr = align.warp_to_template(rgb, m, border=AlignRecipe().border)  # as a build fills it
    return downsample(hr, 8), hr


def infer_paths(checkpoint: str, input_path: str, out_dir: str, device: str = "auto",
                template: str = "celeba") -> list[dict[str, Any]]:
    dev = pick_device(device)
    predict = _model_predict(load_generator(checkpoint, dev), dev)
    src = Path(input_path)
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for f in files:
        try:
            lr, hr = prepare(f, template)
        except DecodeError as e:
            rows.append({"input": str(f), "status": f"skipped: decode:{e.reason}"})
            continue
        except NoFace:
            rows.append({"input": str(f), "status": "skipped: no face found"})
            continue
        sr, _ = predict(torch.from_numpy(np.array(lr[None])).permute(0, 3, 1, 2).float())  # a writable copy
        sr_img = sr[0].permute(1, 2, 0).byte().numpy()
        tiles = [cv2.resize(lr, (128, 128), interpolation=cv2.INTER_NEAREST), sr_img] + ([hr] if hr is not None else [])
        target = out / (f.stem + "_proui.png")
        cv2.imwrite(str(target), cv2.cvtColor(np.concatenate(tiles, axis=1), cv2.COLOR_RGB2BGR))
        rows.append({"input": str(f), "status": "ok", "output": str(target)})
    return rows
