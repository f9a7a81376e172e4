"""Summaries for `proui-data info`."""
from __future__ import annotations

from typing import Any

import numpy as np
import zarr

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
