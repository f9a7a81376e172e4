"""Recompute the alignment templates of `proui_data.align` from the images they describe.

    python benchmarks/template.py [--shared ../shared/data] [--n 400]

`celeba` (the default frame): dlib's 5 points (eye centres, nose tip, mouth corners) averaged over CelebA
*train-partition* aligned images (178x218), mapped into the central 178x178 square scaled to 128 px.
`fsrnet` (the FSRNet test sets' frame): the same 5 points averaged over the FSRNet CelebA-1000 HR crops
(128x128) as they are. This reads the benchmark's *geometry* only (where faces sit), never its pixels as
training data; the model trained in that frame never sees a benchmark image. Both are then made symmetric
about x = 63.5. Prints the points and, for `fsrnet`, the similarity that maps it onto `celeba`.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from proui_data import align
from proui_data.detect import NoFace, locate_face
from proui_data.schema import HR_SIZE


def mean_points(paths: list[Path], frame_to_hr, upsample: int) -> tuple[np.ndarray, int]:
    pts = []
    for p in paths:
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        try:
            found = locate_face(rgb, upsample=upsample, fallback=False)
        except NoFace:
            continue
        pts.append(frame_to_hr(align.landmarks68_to_5(found.landmarks)))
    return np.mean(pts, 0), len(pts)


def symmetric(p: np.ndarray) -> np.ndarray:
    """Mirror about the vertical centre line and average with the mirror (left/right points swapped)."""
    c = (HR_SIZE - 1) / 2
    mirrored = p[[1, 0, 2, 4, 3]].copy()
    mirrored[:, 0] = 2 * c - mirrored[:, 0]
    return (p + mirrored) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--n", type=int, default=400)
    a = ap.parse_args()
    root = Path(a.shared)
    train = [ln.split()[0] for ln in (root / "celeba/Eval/list_eval_partition.txt").read_text().splitlines()
             if ln.split()[1:] == ["0"]]
    celeba = [root / "celeba/img_align_celeba" / n for n in train if (root / "celeba/img_align_celeba" / n).exists()]
    s = HR_SIZE / 178.0
    ours, n1 = mean_points(celeba[: a.n], lambda q: np.c_[q[:, 0] * s, (q[:, 1] - 20.0) * s], 0)
    fsr_paths = sorted((root / "benchmark/fsrnet/celeba_val_1000_HR").glob("*.jpg"))[: a.n]
    fsr, n2 = mean_points(fsr_paths, lambda q: q, 1)
    for name, p, n in (("celeba", ours, n1), ("fsrnet", fsr, n2)):
        print(f"{name}: {n} faces; mean {np.round(p, 2).tolist()}; symmetric {np.round(symmetric(p), 2).tolist()}")
        print(f"  shipped: {align.TEMPLATES[name].tolist()}" if name in getattr(align, "TEMPLATES", {}) else "")
    m = align.similarity_transform(symmetric(fsr), align.TEMPLATE_5)
    print(f"fsrnet -> celeba: scale {np.sqrt(abs(np.linalg.det(m[:, :2]))):.3f}, shift {np.round(m[:, 2], 1).tolist()}")


if __name__ == "__main__":
    main()
