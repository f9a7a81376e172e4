"""`proui-train infer` time per photo and per face, single-threaded, stage by stage, on a folder of photos.

Times what `infer` does per image with the released generator: decode + face search + 68 points
(`proui_data.search.photo_faces`), then per face the 16x16 warp, the generator and the paste-back
(`FaceRestorer.restore`), and writing the outputs is left out (disk). `--downscale` restores every face (the
benchmark mode), so that the per-face figures count every face found; without it only tiny faces run the model.

    OMP_NUM_THREADS=1 python benchmarks/infer.py [--input ../shared/data/wild/celeba_in_the_wild] [--limit N]
        [--checkpoint weights/proui-celeba-gpu] [--no-downscale] [--upscale 1]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from proui_data.search import photo_faces  # noqa: E402
from proui_train.infer import entries  # noqa: E402
from proui_train.restore import FaceRestorer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=str(ROOT.parent / "shared" / "data" / "wild" / "celeba_in_the_wild"))
    ap.add_argument("--checkpoint", default=str(ROOT / "weights" / "proui-celeba-gpu"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--no-downscale", action="store_true")
    ap.add_argument("--upscale", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root, keys, _ = entries(args.input)
    keys = keys[:args.limit] if args.limit else keys
    restorer = FaceRestorer(args.checkpoint, device="cpu", downscale=not args.no_downscale, upscale=args.upscale)
    restorer.hallucinate(torch.zeros(1, 16, 16, 3, dtype=torch.uint8).numpy())  # warm-up, not timed
    search, per_photo, per_face, restored, found = [], [], [], 0, 0
    for k in keys:
        data = (root / k).read_bytes()
        t0 = time.process_time()
        decoded, faces = photo_faces(data, restorer.recipe)
        t1 = time.process_time()
        _, records = restorer.restore(decoded.rgb, faces)
        t2 = time.process_time()
        search.append(t1 - t0)
        per_photo.append(t2 - t0)
        n = sum(r.status == "restored" for r in records)
        found, restored = found + len(faces), restored + n
        if n:
            per_face.append((t2 - t1) / n)
    ms = lambda xs: f"median {1000 * statistics.median(xs):.0f} ms, mean {1000 * statistics.mean(xs):.0f} ms"  # noqa: E731
    print(f"{len(keys)} photos, {found} faces found, {restored} restored (downscale={not args.no_downscale}, "
          f"upscale={args.upscale}); CPU time, one thread")
    print(f"search (decode + detect + 68 points) per photo: {ms(search)}")
    print(f"align + model + paste per restored face:        {ms(per_face)}")
    print(f"whole photo:                                    {ms(per_photo)}")
    print(f"total {sum(per_photo):.1f} s: {1000 * sum(per_photo) / max(restored, 1):.0f} ms per restored face; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
