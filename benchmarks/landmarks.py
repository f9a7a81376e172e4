"""Landmark accuracy of each backend on Helen (300-W release), per fallback stage, with speed on one core.

    OMP_NUM_THREADS=1 python benchmarks/landmarks.py                 # evaluate on Helen testset (330 photos)
    OMP_NUM_THREADS=1 python benchmarks/landmarks.py --calibrate     # measure the box corrections on trainset
    OMP_NUM_THREADS=1 python benchmarks/landmarks.py --compare       # old vs new search, Helen test + wild photos
    OMP_NUM_THREADS=1 python benchmarks/landmarks.py --faces         # detect.faces largest vs all, Helen test

NME: mean point-to-point error over the 68 points / inter-ocular distance (outer eye corners 36 and 45).
A face counts as detected when its landmarks have NME < 0.2 (the predicted face is the annotated one and
the fit did not collapse); mean NME is over detected faces. Helen photos may hold several people while the
`.pts` annotates one (`<id>_2.jpg` is the second face of photo `<id>`), so two selections are reported:
`largest` (what the pipeline does) and `annotated` (of the boxes the firing stage found, the one nearest
the annotated face: the detector's recall, independent of which person a build would pick).
Calibration (trainset only; testset is never tuned on): the centre shift and size that map MMOD and Haar
boxes onto the HOG box of the same face (detect.BOX_TO_HOG), and the HOG box -> 68-point box map used to
frame FAN crops (fan.HOG_TO_LANDMARK_BOX); medians over faces both detectors found (IoU > 0.4).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from proui_data import blazeface, detect, search  # noqa: E402
from proui_data.decode import decode_image  # noqa: E402
from proui_data.recipe import DEFAULT_MIN_EYE_DISTANCE, load_recipe  # noqa: E402
from proui_data.sources.helen import read_pts  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HELEN = SHARED / "300w" / "helen"
WILD = SHARED / "wild" / "celeba_in_the_wild"
DETECTED_NME = 0.2
FAILURE_NME = 0.08  # the usual 300-W failure threshold


def nme(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean point error over inter-ocular (outer eye corner) distance."""
    return float(np.linalg.norm(pred - gt, axis=1).mean() / np.linalg.norm(gt[36] - gt[45]))


def landmark_box(points: np.ndarray) -> tuple[float, float, float, float]:
    return (*points.min(0), *points.max(0))


def load(split_dir: Path, limit: int | None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    files = sorted(split_dir.glob("*.jpg"))[:limit]
    if not files:
        sys.exit(f"no Helen images in {split_dir} (set --root)")
    return [(f.name, np.asarray(Image.open(f).convert("RGB")), read_pts(f.with_suffix(".pts"))) for f in files]


def load_bytes(split_dir: Path, limit: int | None) -> list[bytes]:
    """The photos of `load`, as their files' bytes (what a build's BlazeFace search starts from)."""
    return [f.read_bytes() for f in sorted(split_dir.glob("*.jpg"))[:limit]]


def summarize(errors: list[float], n: int) -> dict:
    e = np.array(errors)
    ok = e[e < DETECTED_NME]
    return {"n": n, "found": len(e), "detected": len(ok), "rate": len(ok) / n if n else float("nan"),
            "nme": ok.mean() if len(ok) else float("nan"), "median": np.median(ok) if len(ok) else float("nan"),
            "fail08": int((e >= FAILURE_NME).sum()) + n - len(e)}


def row(name: str, s: dict, ips: str = "") -> str:
    return (f"| {name:38s} | {s['found']:4d}/{s['n']:<4d} | {s['detected']:4d} ({100 * s['rate']:5.1f} %)     | "
            f"{s['nme']:.4f} | {s['median']:.4f} | {s['fail08']:6d} | {ips:>9s} |")


HEADER = ("| backend / stage                        | returned  | detected (NME<0.2) | NME    | median | >=0.08 | images/s  |\n"
          "|----------------------------------------|-----------|--------------------|--------|--------|--------|-----------|")


def evaluate(data, upsample: int, stages_alone: bool) -> None:
    n = len(data)
    chain = {"largest": [], "annotated": []}
    per_stage: dict[str, dict[str, list]] = {}
    hog_only = []
    fan_items = []  # (index, rgb, box) of the annotated selection, for the FAN row
    seconds, missing = 0.0, 0
    for i, (name, rgb, gt) in enumerate(data):
        t = time.perf_counter()
        found = detect.detect(rgb, upsample)
        if found is not None:
            largest = detect.predict_in_box(rgb, found.boxes[0])
        seconds += time.perf_counter() - t  # the pipeline's cost: chain + predictor on the largest face
        if found is None:
            missing += 1
            continue
        box = max(found.boxes, key=lambda b: detect.box_iou(b, landmark_box(gt)))
        marked = largest if box == found.boxes[0] else detect.predict_in_box(rgb, box)
        st = per_stage.setdefault(found.stage, {"largest": [], "annotated": []})
        for sel, pts in (("largest", largest), ("annotated", marked)):
            e = nme(pts, gt)
            chain[sel].append(e)
            st[sel].append(e)
        if found.stage == "dlib-hog":
            hog_only.append(nme(marked, gt))
        fan_items.append((i, rgb, box))
    ips = n / seconds

    print(f"Helen testset, {n} photos, HOG upsample {upsample}; one core (OMP_NUM_THREADS=1), dlib {dlib_version()}")
    print(HEADER)
    for sel in ("largest", "annotated"):
        print(row(f"dlib chain, {sel}", summarize(chain[sel], n), f"{ips:.1f}" if sel == "largest" else ""))
    print(row("dlib HOG only (no fallback), annotated", summarize(hog_only, n)))
    for stage, errs in per_stage.items():
        print(row(f"  stage {stage}, annotated", summarize(errs["annotated"], len(errs["annotated"]))))
    print(f"| {'  no stage found a face':38s} | {missing:4d}      |")
    print(fan_row(fan_items, data))
    if stages_alone:
        print("\nEach stage alone on every photo (annotated selection), boxes mapped to HOG framing:")
        print(HEADER)
        for stage, find in (("dlib-hog", lambda im: detect.hog_boxes(im, upsample)),
                            (f"dlib-hog-up{upsample + 1}", lambda im: detect.hog_boxes(im, upsample + 1)),
                            ("dlib-mmod", detect.mmod_boxes), ("opencv-haar", detect.haar_boxes)):
            errs, t = [], time.perf_counter()
            for _, rgb, gt in data:
                boxes = find(rgb)
                if boxes is None:
                    errs = None
                    break
                if boxes:
                    b = detect.to_hog_frame(max(boxes, key=lambda b: detect.box_iou(b, landmark_box(gt))), stage)
                    errs.append(nme(detect.predict_in_box(rgb, b), gt))
            if errs is None:
                print(f"| {stage:38s} | not available in this OpenCV build")
            else:
                print(row(stage, summarize(errs, n), f"{n / (time.perf_counter() - t):.1f}"))


def dlib_version() -> str:
    import dlib

    return dlib.__version__


def fan_row(items, data) -> str:
    from proui_data import fan

    try:
        lm = fan.FanLandmarker()
    except fan.FanWeightsMissing as e:
        return f"| {'face-alignment (2D FAN)':38s} | weights not available: no {e.file} (PROUI_FAN_WEIGHTS, {fan.hub_checkpoints()})"
    t = time.perf_counter()
    pts = lm.predict([(rgb, box) for _, rgb, box in items])
    dt = time.perf_counter() - t
    errs = [nme(p, data[i][2]) for p, (i, _, _) in zip(pts, items)]
    return row(f"face-alignment on chain boxes ({lm.device})", summarize(errs, len(data)), f"{len(items) / dt:.1f}")


def blazeface_boxes(rgb: np.ndarray, data: bytes) -> list:
    """BlazeFace's raw boxes (its own framing) in `rgb`'s pixels, searched as the folder recipe searches: on the
    photo's bytes decoded reduced (`search.search_decode`), for faces down to its 20.6-px eyes."""
    recipe = folder_recipe()
    small = search.search_decode(data, recipe)
    k = small.scale / small.full_scale
    return [detect.from_copy(b, k, k) for b, _ in blazeface.face_boxes(small.rgb, search.blazeface_min_box(recipe, k))]


CALIBRATED = {"dlib-mmod": lambda rgb, data: detect.mmod_boxes(rgb),
              "opencv-haar": lambda rgb, data: detect.haar_boxes(rgb), "blazeface": blazeface_boxes}


def calibrate(data, photos: list[bytes], stages: list[str]) -> None:
    """Median box maps between detectors on faces both found (trainset)."""
    pairs: dict[str, list] = {stage: [] for stage in stages}
    to_landmarks = []
    for (_, rgb, gt), photo in zip(data, photos):
        lb = landmark_box(gt)
        hogs = detect.hog_boxes(rgb, 0)
        for hb in hogs:
            if detect.box_iou(hb, lb) > 0.4:
                w = hb[2] - hb[0]
                to_landmarks.append([(lb[0] + lb[2] - hb[0] - hb[2]) / 2 / w, (lb[1] + lb[3] - hb[1] - hb[3]) / 2 / w,
                                     (lb[2] - lb[0]) / w, (lb[3] - lb[1]) / w])
        for stage in stages:
            boxes = CALIBRATED[stage](rgb, photo) if pairs[stage] is not None else None
            if boxes is None:
                pairs[stage] = None
                continue
            for hb in hogs:
                best = max(boxes, key=lambda b: detect.box_iou(hb, b), default=None)
                if best is not None and detect.box_iou(hb, best) > 0.4:
                    w = best[2] - best[0]
                    pairs[stage].append([(hb[0] + hb[2] - best[0] - best[2]) / 2 / w,
                                         (hb[1] + hb[3] - best[1] - best[3]) / 2 / w, (hb[2] - hb[0]) / w])
    print(f"Helen trainset, {len(data)} photos. Medians (interquartile range):")
    for stage, p in pairs.items():
        if p is None:
            print(f"  {stage}: not available in this OpenCV build")
            continue
        a = np.array(p)
        q = np.percentile(a, 75, 0) - np.percentile(a, 25, 0)
        print(f"  {stage} -> HOG box, {len(a)} faces: dx {np.median(a[:, 0]):+.4f} dy {np.median(a[:, 1]):+.4f} "
              f"(box widths), size x{np.median(a[:, 2]):.4f}   IQR {q.round(3).tolist()}")
    a = np.array(to_landmarks)
    print(f"  HOG box -> 68-point box, {len(a)} faces: dx {np.median(a[:, 0]):+.4f} dy {np.median(a[:, 1]):+.4f} "
          f"width x{np.median(a[:, 2]):.4f} height x{np.median(a[:, 3]):.4f} (HOG box widths)")


def min_box_recall(data, sizes=(16, 20, 24, 28)) -> None:
    """BlazeFace's recall by face size, what `blazeface.MIN_BOX` (the size its search scales the smallest accepted
    face to) is chosen by: each Helen trainset face HOG finds (IoU > 0.4 with the annotation's box) is scaled so
    that its box in BlazeFace's framing is `size` px and searched in one 192-px input around it, in the photo's
    context; found: a box with IoU > 0.4 with the face's, both in HOG framing."""
    import cv2

    k, half = detect.BOX_TO_HOG["blazeface"][2], blazeface.INPUT // 2
    hits, n = dict.fromkeys(sizes, 0), 0
    for _, rgb, gt in data:
        lb = landmark_box(gt)
        face = max(detect.hog_boxes(rgb), key=lambda b: detect.box_iou(b, lb), default=None)
        if face is None or detect.box_iou(face, lb) <= 0.4:
            continue
        n += 1
        for size in sizes:
            s = size * k / (face[2] - face[0])
            copy = cv2.resize(rgb, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
            box = detect.to_copy(face, s)
            x0 = int(np.clip((box[0] + box[2]) / 2 - half, 0, max(0, copy.shape[1] - 2 * half)))
            y0 = int(np.clip((box[1] + box[3]) / 2 - half, 0, max(0, copy.shape[0] - 2 * half)))
            found, _ = blazeface._run(copy[y0:y0 + 2 * half, x0:x0 + 2 * half])
            hits[size] += any(detect.box_iou(detect.to_hog_frame(tuple(b + [x0, y0, x0, y0]), "blazeface"), box) > 0.4
                              for b in found)
    print(f"Helen trainset, {n} faces HOG finds: BlazeFace finds a face whose box is ... input px")
    print("| box (px) | " + " | ".join(str(v) for v in sizes) + " |\n|---|" + "---:|" * len(sizes))
    print("| found | " + " | ".join(f"{100 * hits[v] / max(n, 1):.0f} %" for v in sizes) + " |")


# (name, HOG upsample, min-face search, fallback chain, min eye distance, recheck, BlazeFace first): the searches
SEARCHES = [
    ("old: folder recipe (upsample 1, fallback)", 1, False, True, 8.0, False, False),
    ("old: upsample 0, fallback (Helen reference)", 0, False, True, 8.0, False, False),
    ("min-face search", 0, True, False, DEFAULT_MIN_EYE_DISTANCE, False, False),
    ("min-face search + fallback", 0, True, True, DEFAULT_MIN_EYE_DISTANCE, False, False),
    ("min-face search + recheck", 0, True, False, DEFAULT_MIN_EYE_DISTANCE, True, False),
    ("new: BlazeFace, then min-face search + recheck (folder recipe)", 0, True, False, DEFAULT_MIN_EYE_DISTANCE,
     True, True),
]


def eye_distance(points: np.ndarray) -> float:
    return float(np.linalg.norm(points[42:48].mean(0) - points[36:42].mean(0)))


@functools.lru_cache(maxsize=None)
def folder_recipe(upsample: int = 0, min_face: bool = True, fallback: bool = False,
                  min_eye: float = DEFAULT_MIN_EYE_DISTANCE, recheck: bool = True, blazeface: bool = True):
    """The folder recipe with a search of SEARCHES (read once: the timed searches do not read TOML)."""
    r = load_recipe(None, "folder")
    search = "blazeface" if blazeface else "min-face" if min_face else None
    return r.replace(detect=dataclasses.replace(r.detect, upsample=upsample, search=search, fallback=fallback,
                                                min_eye_distance=min_eye, recheck=recheck or None))


def build_search(rgb: np.ndarray, data: bytes, upsample: int, min_face: bool, fallback: bool, min_eye: float,
                 recheck: bool, blazeface: bool, kept: bool = False):
    """(the Detection of the largest-face choice, or None; with `kept` also the faces a faces = "all" build keeps)
    in `rgb`'s pixels, searched as a build searches: the BlazeFace search from the photo's bytes (decoded reduced,
    `search.search_photo`: its decoding counts), the others on the decoded photo."""
    if blazeface:
        found, faces, _ = search.search_photo(data, folder_recipe(upsample, min_face, fallback, min_eye, recheck,
                                                                    blazeface))
        return (found, faces) if kept else found
    scale = detect.search_scale(min_eye) if min_face else None
    found = detect.detect(rgb, upsample, fallback, scale, recheck, blazeface)
    if not kept:
        return found
    return found, detect.faces_kept(rgb, found, recheck) if found else []


def run_search(images: list[np.ndarray], photos: list[bytes], *options):
    """(largest accepted face's 68 points or None per image, CPU s, wall s): detection + predictor, as a build."""
    min_eye = options[3]
    out, cpu, wall = [], time.process_time(), time.perf_counter()
    for rgb, data in zip(images, photos):
        found = build_search(rgb, data, *options)
        pts = detect.predict_in_box(rgb, found.boxes[0]) if found else None
        out.append(pts if pts is not None and eye_distance(pts) >= min_eye else None)
    return out, time.process_time() - cpu, time.perf_counter() - wall


def compare(helen, helen_bytes: list[bytes], wild: list[np.ndarray], wild_bytes: list[bytes]) -> None:
    """Old vs new detection side by side: speed, Helen NME and detection, wild photos with an accepted face."""
    # load every model before timing (MMOD too: the fallback chain loads it on its first miss)
    detect.predict_in_box(wild[0], (0, 0, 80, 80))
    detect.mmod_boxes(wild[0])
    search.search_photo(wild_bytes[0], folder_recipe())  # this thread's interpreters
    print(f"Helen test {len(helen)} photos, wild {len(wild)} photos; one core (OMP_NUM_THREADS=1); "
          f"load average {os.getloadavg()[0]:.2f} at start; new min eye distance {DEFAULT_MIN_EYE_DISTANCE} px "
          f"(search scale {detect.search_scale(DEFAULT_MIN_EYE_DISTANCE):.2f})")
    print("| search | Helen photos/s | Helen CPU-ms/photo | Helen detected (NME<0.2) | Helen NME mean / median |"
          " wild photos/s | wild CPU-ms/photo | wild photos with a face |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, *options in SEARCHES:
        pts, cpu_h, wall_h = run_search([rgb for _, rgb, _ in helen], helen_bytes, *options)
        s = summarize([nme(p, gt) for p, (_, _, gt) in zip(pts, helen) if p is not None], len(helen))
        found, cpu_w, wall_w = run_search(wild, wild_bytes, *options)
        n_w = sum(p is not None for p in found)
        print(f"| {name} | {len(helen) / wall_h:.1f} | {1000 * cpu_h / len(helen):.1f} | "
              f"{s['detected']}/{s['n']} ({100 * s['rate']:.1f} %) | {s['nme']:.4f} / {s['median']:.4f} | "
              f"{len(wild) / wall_w:.1f} | {1000 * cpu_w / len(wild):.1f} | {n_w}/{len(wild)} |", flush=True)


def faces_found(helen, helen_bytes: list[bytes], *options) -> dict[str, list[float]]:
    """Per photo, the best NME against the annotation among the accepted faces (eyes >= min_eye) a build keeps
    under detect.faces = "largest" (the first box) and "all" (`detect.faces_kept`); inf when none; also "faces":
    accepted faces per photo under "all"; "cpu": CPU s per photo of the "all" search with its predictions."""
    min_eye = options[3]
    out: dict[str, list[float]] = {"largest": [], "all": [], "faces": [], "cpu": []}
    for (_, rgb, gt), data in zip(helen, helen_bytes):
        cpu = time.process_time()
        found, kept = build_search(rgb, data, *options, kept=True)
        errors = {}
        for box in kept:
            pts = detect.predict_in_box(rgb, box)
            errors[box] = nme(pts, gt) if eye_distance(pts) >= min_eye else np.inf
        out["cpu"].append(time.process_time() - cpu)
        # "largest" keeps the largest confident box, which "all" keeps too
        out["largest"].append(errors[found.boxes[0]] if found else np.inf)
        out["all"].append(min(errors.values(), default=np.inf))
        out["faces"].append(float(np.isfinite(list(errors.values())).sum()))
    return out


def faces(helen, helen_bytes: list[bytes]) -> None:
    """detect.faces = "largest" vs "all": photos whose annotated face is among the faces a build keeps."""
    n = len(helen)
    print(f"Helen test {n} photos: the annotated face is among the faces a build keeps (an accepted face whose 68 "
          f"points have NME < {DETECTED_NME}, or < 0.1), detect.faces = largest vs all")
    print("| search | largest, NME<0.2 | all, NME<0.2 | largest, NME<0.1 | all, NME<0.1 | faces per photo (all) |"
          " CPU-ms/photo (all) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, *options in SEARCHES:
        r = faces_found(helen, helen_bytes, *options)
        cells = []
        for bound in (DETECTED_NME, 0.1):
            for sel in ("largest", "all"):
                k = int((np.array(r[sel]) < bound).sum())
                cells.append(f"{k}/{n} ({100 * k / n:.1f} %)")
        print(f"| {name} | {' | '.join(cells)} | {np.mean(r['faces']):.2f} | {1000 * np.mean(r['cpu']):.1f} |",
              flush=True)


def load_wild(folder: Path, limit: int | None) -> tuple[list[np.ndarray], list[bytes]]:
    photos = [f.read_bytes() for f in sorted(folder.iterdir()) if f.is_file()][:limit]
    return [decode_image(data).rgb for data in photos], photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=HELEN, help="Helen 300-W root with trainset/ and testset/")
    ap.add_argument("--limit", type=int, default=None, help="first N photos only")
    ap.add_argument("--upsample", type=int, default=0, help="HOG upsample of the first stage (recipe detect.upsample)")
    ap.add_argument("--stages-alone", action="store_true", help="also run every stage on every photo (slow: MMOD)")
    ap.add_argument("--calibrate", action="store_true", help="measure the box corrections on trainset")
    ap.add_argument("--calibrate-stages", default=",".join(CALIBRATED), help="with --calibrate: these detectors")
    ap.add_argument("--compare", action="store_true", help="old vs new face search on Helen test and --wild")
    ap.add_argument("--wild", type=Path, default=WILD, help="folder of unannotated photos for --compare")
    ap.add_argument("--faces", action="store_true", help="detect.faces largest vs all: annotated face found, Helen test")
    ap.add_argument("--min-box", action="store_true", help="BlazeFace's recall by face size on trainset (MIN_BOX)")
    args = ap.parse_args()
    if args.min_box:
        min_box_recall(load(args.root / "trainset", args.limit))
    elif args.faces:
        faces(load(args.root / "testset", args.limit), load_bytes(args.root / "testset", args.limit))
    elif args.compare:
        compare(load(args.root / "testset", args.limit), load_bytes(args.root / "testset", args.limit),
                *load_wild(args.wild, args.limit))
    elif args.calibrate:
        calibrate(load(args.root / "trainset", args.limit), load_bytes(args.root / "trainset", args.limit),
                  args.calibrate_stages.split(","))
    else:
        evaluate(load(args.root / "testset", args.limit), args.upsample, args.stages_alone)


if __name__ == "__main__":
    main()
