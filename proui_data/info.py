"""Summaries for `proui-data info`."""
from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from .store import DETECTIONS

BINS = np.linspace(0.0, 1.0, 11)


def occlusion_histogram(group: zarr.Group) -> str:
    """Text histogram of achieved occlusion ratios per kind (valid samples), in 10 % bins."""
    valid = group["valid"][:].astype(bool)
    kinds = np.asarray(group["occlusion_kind"][:], dtype=object)[valid]
    ratios = group["occlusion_ratio"][:][valid]
    lines = ["    occlusion ratio per kind (bins of 10 %: 0-10 … 90-100):"]
    for kind in sorted(set(kinds)):
        r = ratios[kinds == kind]
        counts, _ = np.histogram(np.clip(r, 0, 1), BINS)
        lines.append(f"      {kind:8s} n={len(r):5d} mean={r.mean():.3f}  " + " ".join(f"{c:4d}" for c in counts))
    return "\n".join(lines)


def skipped_lines(attrs: dict[str, Any]) -> list[str]:
    """What the source skipped under its root, with reasons and a few names (empty for sources that do not
    enumerate files)."""
    sk = attrs.get("skipped")
    if sk is None:
        return []
    counts, images = sk.get("counts", {}), sk.get("images", 0)
    lines = [f"files: {images + sum(counts.values())} entries under the root: {images} images, "
             f"{sum(counts.values())} skipped"]
    for reason, n in counts.items():
        names = sk.get("examples", {}).get(reason, [])
        more = f", ... ({n - len(names)} more)" if n > len(names) else ""
        lines.append(f"    skipped {reason}: {n} ({', '.join(names)}{more})")
    return lines


def faces_summary(attrs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per split of a `detect.faces = "all"` store (empty for others): photos searched, faces found, faces per
    photo, and how many photos hold 0, 1, 2, 3+ faces (a photo that did not decode counts as 0)."""
    out = {}
    for split, photos in (attrs.get(DETECTIONS) or {}).items():
        n = [len(e["boxes"]) if e else 0 for e in photos.values()]
        hist = np.bincount(np.minimum(n, 3), minlength=4) if n else np.zeros(4, int)
        out[split] = {"photos": len(n), "faces": int(sum(n)), "faces_per_photo": sum(n) / len(n) if n else 0.0,
                      "photos_with": {"0": int(hist[0]), "1": int(hist[1]), "2": int(hist[2]), "3+": int(hist[3])}}
    return out


def faces_line(c: dict[str, Any]) -> str:
    """One split's `faces_summary` as text."""
    w = ", ".join(f"{k}: {v}" for k, v in c["photos_with"].items())
    return (f"{c['photos']} photos, {c['faces']} faces, {c['faces_per_photo']:.2f} faces per photo "
            f"(photos with {w} faces)")
