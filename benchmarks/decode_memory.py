"""Peak memory of one `decode_image` of a large synthetic image, in bytes per source pixel.

    python benchmarks/decode_memory.py [--mpx 62] [--kinds rgb16,gray16,rgba16,rgb8,jpeg] [--max-side 2048]
                                       [--repeat 2]

Kinds: 16-bit RGB, grayscale and RGBA PNGs, an 8-bit RGB PNG and an 8-bit RGB JPEG (quality 90), each a smooth
gradient with noise (seeded), written by OpenCV and read into memory before the measurement. Each decode runs in a
fresh subprocess that has imported everything the decode uses (numpy, Pillow and its plugins, OpenCV,
`proui_data.decode`): `peak` is the process's peak resident memory (VmHWM; Linux carries `ru_maxrss` over from the
parent across fork and exec) minus its resident memory just before the decode, and the figure printed subtracts
`baseline`, the same measurement of a 64x64 image of the same kind (what a decode costs apart from its pixels).
`--max-side` is the recipe's `decode.max_side`: the default reduces a large photo as a build does; a value over
the image's long side measures a full-size decode.
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

CHILD = """
import json, sys
import cv2, numpy
from PIL import Image
Image.init()
from proui_data.decode import decode_image

def status(field):
    line = next(x for x in open("/proc/self/status") if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024

data = open(sys.argv[1], "rb").read()
before = status("VmRSS")
d = decode_image(data, max_side=int(sys.argv[2]))
print(json.dumps({"peak": status("VmHWM") - before, "shape": list(d.rgb.shape)}))
"""

KINDS = {"rgb16": ".png", "gray16": ".png", "rgba16": ".png", "rgb8": ".png", "jpeg": ".jpg"}


def synthetic_image(path: Path, w: int, h: int, kind: str, seed: int = 0) -> None:
    """A `kind` image of w x h (see KINDS), written to `path`."""
    rng = np.random.default_rng(seed)
    ramp = (np.linspace(0, 60000, w, dtype=np.float32)[None, :] + np.linspace(0, 5000, h, dtype=np.float32)[:, None])
    gray = (ramp + rng.integers(0, 256, (h, w), dtype=np.uint16)).astype(np.uint16)
    del ramp
    if kind == "gray16":
        img = gray
    else:
        planes = [gray, gray[:, ::-1], 65535 - gray]
        if kind == "rgba16":
            planes.append(np.minimum(gray[::-1] * np.uint16(2), 65535).astype(np.uint16))
        img = np.stack(planes, axis=2)
        if kind in ("rgb8", "jpeg"):
            img = (img >> 8).astype(np.uint8)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if kind == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 1]
    if not cv2.imwrite(str(path), img, params):
        raise SystemExit(f"cannot write {path}")


def measure(path: Path, max_side: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(max_side)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mpx", type=float, default=62.0)
    ap.add_argument("--kinds", default="rgb16,gray16,rgba16,rgb8,jpeg")
    ap.add_argument("--max-side", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=2, help="subprocesses per kind; the largest peak is reported")
    args = ap.parse_args()
    h = int(round((args.mpx * 1e6 / 1.5) ** 0.5))
    w = int(round(args.mpx * 1e6 / h))
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.kinds.split(","):
            if kind not in KINDS:
                raise SystemExit(f"unknown kind {kind!r}: choose from {', '.join(KINDS)}")
            tiny, path = Path(tmp) / f"tiny{KINDS[kind]}", Path(tmp) / f"{kind}{KINDS[kind]}"
            synthetic_image(tiny, 64, 64, kind)
            synthetic_image(path, w, h, kind)
            baseline = max(measure(tiny, args.max_side)["peak"] for _ in range(args.repeat))
            runs = [measure(path, args.max_side) for _ in range(args.repeat)]
            peak = max(r["peak"] for r in runs) - baseline
            print(f"{kind}: {w}x{h} ({w * h / 1e6:.1f} Mpx, file {path.stat().st_size / 1e6:.0f} MB) -> "
                  f"{tuple(runs[0]['shape'])}: peak rss +{peak / 1e6:.0f} MB = {peak / (w * h):.2f} B/px "
                  f"(baseline {baseline / 1e6:.1f} MB subtracted)", flush=True)


if __name__ == "__main__":
    main()
