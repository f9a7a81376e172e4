"""Which fill is closest to the truth where an aligned crop reaches past its source image.

    python benchmarks/border.py [--shared ../shared/data] [--n 300]

Helen train photos (human 68 points) whose template crop lies wholly inside the photo are cut on one side
(top, left or right, 10-35 % of the crop's extent, seeded per photo), then aligned again with each
`align.BORDERS` fill. PSNR-Y over the filled pixels against the uncut photo's crop says which fill
guesses the missing content best; the mean absolute vertical/horizontal gradient there says how much each
invents structure (replicate draws streaks: low gradient across, none along). Training faces are never
cut like this except where a photo ends, so this measures only the fill itself.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from proui_data import align
from proui_data.sources.helen import read_pts


def y_channel(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64) @ np.array([65.481, 128.553, 24.966]) / 255.0 + 16.0


def cut(image: np.ndarray, m: np.ndarray, side: str, t: float) -> tuple[np.ndarray, np.ndarray]:
    """The photo cut on `side` by a share t of the crop's source extent, and the matching map."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    corners = align.apply_transform(inv, np.array([[0, 0], [127, 0], [0, 127], [127, 127]], dtype=np.float64))
    (x0, y0), (x1, y1) = corners.min(0), corners.max(0)
    if side == "top":
        c = int(round(y0 + t * (y1 - y0)))
        return image[c:], align.compose(m, np.array([[1, 0, 0], [0, 1, c]], dtype=np.float64))
    if side == "left":
        c = int(round(x0 + t * (x1 - x0)))
        return image[:, c:], align.compose(m, np.array([[1, 0, c], [0, 1, 0]], dtype=np.float64))
    c = int(round(x1 - t * (x1 - x0)))
    return image[:, :c], m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="../shared/data")
    ap.add_argument("--n", type=int, default=300)
    a = ap.parse_args()
    photos = sorted((Path(a.shared) / "300w/helen/trainset").glob("*.jpg"))
    sq_err = {b: [] for b in align.BORDERS}
    grad = {b: [] for b in [*align.BORDERS, "truth"]}
    used = 0
    for i, p in enumerate(photos):
        if used >= a.n:
            break
        image = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        m = align.similarity_transform(align.landmarks68_to_5(read_pts(p.with_suffix(".pts"))), align.TEMPLATE_5)
        if align.padded_fraction(m, image.shape[:2]) > 0:
            continue  # the truth must be all there
        rng = np.random.default_rng([0, i])
        side, t = ["top", "left", "right"][rng.integers(3)], rng.uniform(0.10, 0.35)
        cut_image, m_cut = cut(image, m, side, t)
        truth = y_channel(align.warp_to_template(image, m))
        ys, xs = np.mgrid[0:128, 0:128]
        inv = np.linalg.inv(np.vstack([m_cut, [0, 0, 1]]))[:2]
        src = align.apply_transform(inv, np.stack([xs.ravel(), ys.ravel()], -1).astype(np.float64))
        h, w = cut_image.shape[:2]
        outside = ~((src[:, 0] >= 0) & (src[:, 0] <= w - 1) & (src[:, 1] >= 0) & (src[:, 1] <= h - 1))
        outside = outside.reshape(128, 128)
        if outside.sum() < 200:
            continue
        used += 1
        gy = lambda y: np.abs(np.diff(y, axis=0))[outside[1:]].mean() + np.abs(np.diff(y, axis=1))[outside[:, 1:]].mean()
        grad["truth"].append(gy(truth))
        for b in align.BORDERS:
            filled = y_channel(align.warp_to_template(cut_image, m_cut, border=b))
            sq_err[b].append(((filled - truth)[outside] ** 2).mean())
            grad[b].append(gy(filled))
    print(f"{used} Helen train photos, cut by 10-35 % on one side; filled pixels only")
    print(f"{'fill':<10} {'PSNR-Y (mean MSE)':>18} {'median per-photo PSNR-Y':>24} {'gradient':>9}")
    for b in align.BORDERS:
        e = np.array(sq_err[b])
        print(f"{b:<10} {10 * np.log10(255**2 / e.mean()):>18.2f} {np.median(10 * np.log10(255**2 / e)):>24.2f}"
              f" {np.mean(grad[b]):>9.2f}")
    print(f"{'truth':<10} {'':>18} {'':>24} {np.mean(grad['truth']):>9.2f}")


if __name__ == "__main__":
    main()
