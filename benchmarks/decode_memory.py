"""Peak memory of one `decode_image` of a large synthetic 16-bit PNG, in bytes per source pixel.

    python benchmarks/decode_memory.py [--mpx 62] [--kinds gray16,rgb16] [--repeat 2]

Each decode runs in a fresh subprocess: `rss` is the process's peak resident memory (VmHWM) minus its
resident memory just before the decode (everything: Pillow's image buffers and numpy's); `traced` is
tracemalloc's peak over the decode (Python and numpy allocations only; Pillow's buffers are not traced). The
PNG is a smooth gradient with noise (seeded), written by OpenCV, and read into memory before the measurement.
The decode reduces it to `decode.max_side` (2048) as a build does.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
CHILD = """
import json, sys, tracemalloc
from proui_data.decode import decode_image

def status(field):
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
before = status("VmRSS")
tracemalloc.start()
d = decode_image(data)
traced = tracemalloc.get_traced_memory()[1]
print(json.dumps({"rss": status("VmHWM") - before, "traced": traced, "shape": list(d.rgb.shape)}))
"""


def synthetic_png(path: Path, mpx: float, kind: str, seed: int = 0) -> tuple[int, int]:
    """A 16-bit PNG of about `mpx` megapixels (3:2), gray or RGB; returns (width, height)."""
    h = int(round((mpx * 1e6 / 1.5) ** 0.5))
    w = int(round(mpx * 1e6 / h))
    rng = np.random.default_rng(seed)
    ramp = (np.linspace(0, 60000, w, dtype=np.float32)[None, :] + np.linspace(0, 5000, h, dtype=np.float32)[:, None])
    gray = (ramp + rng.integers(0, 256, (h, w), dtype=np.uint16)).astype(np.uint16)
    del ramp
    img = gray if kind == "gray16" else np.stack([gray, gray[:, ::-1], 65535 - gray], axis=2)
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, 1]):
        raise SystemExit(f"cannot write {path}")
    return w, h


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mpx", type=float, default=62.0)
    ap.add_argument("--kinds", default="gray16,rgb16")
    ap.add_argument("--repeat", type=int, default=2, help="subprocesses per kind; the largest peak is reported")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            path = Path(tmp) / f"{kind}.png"
            w, h = synthetic_png(path, args.mpx, kind)
            runs = [measure(path) for _ in range(args.repeat)]
            rss, traced = max(r["rss"] for r in runs), max(r["traced"] for r in runs)
            px = w * h
            print(f"{kind}: {w}x{h} ({px / 1e6:.1f} Mpx, file {path.stat().st_size / 1e6:.0f} MB) -> "
                  f"{tuple(runs[0]['shape'])}: peak rss +{rss / 1e6:.0f} MB = {rss / px:.2f} B/px, "
                  f"traced {traced / 1e6:.0f} MB = {traced / px:.2f} B/px")


if __name__ == "__main__":
    main()
