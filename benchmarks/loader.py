"""Loader throughput: our zarr store + StoreDataset against a PNG folder, HF datasets and WebDataset.

Builds N 128x128 samples from real CelebA images (centre crop + resize; the other arrays are synthetic but
shaped and compressible like the pipeline's: Gaussian landmark heatmaps, region parsing maps, blob occlusion
masks), writes the same samples in each format, then measures samples/s into batched uint8/float32 tensors
with every array (hr, lr_occluded, landmarks, heatmaps, parsing, occlusion_mask). Each loader runs in its own
subprocess so its peak RSS (process + workers, from getrusage) is its own; worker start-up is excluded (one
warm-up epoch, then timed epochs with persistent workers).

    OMP_NUM_THREADS=1 python benchmarks/loader.py [--n 2048] [--batch-size 64] [--workdir /tmp/proui-loader-bench]

Targets, so that loading never starves a trainer: ours (2 workers) >= 5x the PNG folder, >= 1.5x HF datasets,
>= 5,000 samples/s.
Extra rows: ours with 0 workers (in-process, shard reads in threads: no inter-process hand-over) and ours
without heatmaps (the heaviest array, 77% of the bytes, which a trainer can render on the device from
landmarks instead).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

CELEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba" / "img_align_celeba"
ARRAYS = ("hr", "lr_occluded", "landmarks", "heatmaps", "parsing", "occlusion_mask")
IMAGE_ARRAYS = ("hr", "lr_occluded", "parsing", "occlusion_mask")  # PNG in the folder baseline
SHARD = 256


# ----- data -----

def mean_face68() -> np.ndarray:
    """A rough iBUG-68 layout in 128x128 template pixels (shape only matters for realistic heatmaps/parsing)."""
    t = np.linspace(np.pi * 0.05, np.pi * 0.95, 17)
    jaw = np.stack([64 - 40 * np.cos(t), 58 + 46 * np.sin(t) * 0.95], 1)
    brows = np.concatenate([np.stack([np.linspace(32, 56, 5), 44 - 3 * np.sin(np.linspace(0, np.pi, 5))], 1),
                            np.stack([np.linspace(72, 96, 5), 44 - 3 * np.sin(np.linspace(0, np.pi, 5))], 1)])
    nose = np.concatenate([np.stack([np.full(4, 64.0), np.linspace(54, 76, 4)], 1),
                           np.stack([np.linspace(56, 72, 5), np.full(5, 80.0)], 1)])
    a = np.linspace(0, 2 * np.pi, 6, endpoint=False)
    eyes = np.concatenate([np.stack([44 + 8 * np.cos(a), 56 + 3 * np.sin(a)], 1),
                           np.stack([84 + 8 * np.cos(a), 56 + 3 * np.sin(a)], 1)])
    b = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    c = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    mouth = np.concatenate([np.stack([64 - 16 * np.cos(b), 94 + 6 * np.sin(b)], 1),
                            np.stack([64 - 10 * np.cos(c), 94 + 2 * np.sin(c)], 1)])
    return np.concatenate([jaw, brows, nose, eyes, mouth]).astype(np.float32)


def make_samples(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    import cv2

    files = sorted(CELEBA.glob("*.jpg"))[:n]
    if len(files) < n:
        raise SystemExit(f"need {n} CelebA images in {CELEBA}, found {len(files)}")
    rng = np.random.default_rng(seed)
    hr = np.empty((n, 128, 128, 3), np.uint8)
    for i, f in enumerate(files):
        img = cv2.imread(str(f))[..., ::-1]  # 218x178 RGB
        top = (img.shape[0] - img.shape[1]) // 2
        hr[i] = cv2.resize(img[top:top + img.shape[1]], (128, 128), interpolation=cv2.INTER_AREA)
    landmarks = mean_face68()[None] + rng.normal(0, 2.0, (n, 68, 2)).astype(np.float32)
    lr = np.stack([cv2.resize(im, (16, 16), interpolation=cv2.INTER_AREA) for im in hr])
    grid = np.arange(64, dtype=np.float32) + 0.5
    heatmaps = np.empty((n, 68, 64, 64), np.uint8)
    parsing = np.zeros((n, 128, 128), np.uint8)
    occlusion = np.zeros((n, 128, 128), np.uint8)
    for i in range(n):
        pts = landmarks[i] / 2.0
        gx = np.exp(-((grid[None] - pts[:, :1]) ** 2) / (2 * 1.5**2))
        gy = np.exp(-((grid[None] - pts[:, 1:]) ** 2) / (2 * 1.5**2))
        heatmaps[i] = np.round(255 * gy[:, :, None] * gx[:, None, :]).astype(np.uint8)
        p = landmarks[i].astype(np.int32)
        cv2.fillPoly(parsing[i], [np.concatenate([p[:17], p[26:16:-1] - [0, 12]])], 1)
        for cls, sl in ((2, slice(17, 22)), (3, slice(22, 27)), (4, slice(36, 42)), (5, slice(42, 48)),
                        (6, slice(27, 36)), (7, slice(48, 60)), (9, slice(60, 68))):
            cv2.fillPoly(parsing[i], [cv2.convexHull(p[sl])], cls)
        cx, cy = rng.integers(30, 98, 2)
        cv2.ellipse(occlusion[i], (int(cx), int(cy)), tuple(int(v) for v in rng.integers(10, 30, 2)),
                    float(rng.uniform(0, 180)), 0, 360, 255, -1)
        occlusion[i] = cv2.GaussianBlur(occlusion[i], (5, 5), 1.5)
    lr_occluded = lr.copy()
    small = np.stack([cv2.resize(m, (16, 16), interpolation=cv2.INTER_AREA) for m in occlusion])[..., None] / 255
    lr_occluded = np.round(lr * (1 - small) + 128 * small).astype(np.uint8)
    return {"hr": hr, "lr_occluded": lr_occluded, "landmarks": landmarks, "heatmaps": heatmaps,
            "parsing": parsing, "occlusion_mask": occlusion}


def write_zarr(path: Path, data: dict[str, np.ndarray]) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    n = len(data["hr"])
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs.update({"proui_format": 1, "recipe": {"name": "loader-benchmark"}, "source": {"name": "celeba"},
                       "versions": {}, "template": {"size": 128, "points5": []}, "seed": 0})
    split = root.create_group("train")
    split.attrs.update({"n_samples": n, "shard_size": SHARD, "n_shards": -(-n // SHARD)})
    for name, values in {**data, "valid": np.ones(n, bool)}.items():
        arr = split.create_array(name, shape=values.shape, dtype=values.dtype,
                                 chunks=(32,) + values.shape[1:], shards=(SHARD,) + values.shape[1:],
                                 compressors=ZstdCodec(level=3))
        arr[:] = values


def write_png_folder(path: Path, data: dict[str, np.ndarray]) -> None:
    import cv2

    path.mkdir(parents=True)
    for i in range(len(data["hr"])):
        for name in IMAGE_ARRAYS:
            image = data[name][i][..., ::-1] if data[name][i].ndim == 3 else data[name][i]
            cv2.imwrite(str(path / f"{i:06d}.{name}.png"), image)
        for name in ("landmarks", "heatmaps"):
            np.save(path / f"{i:06d}.{name}.npy", data[name][i])


def write_hf(path: Path, data: dict[str, np.ndarray]) -> None:
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({
        "hr": datasets.Array3D((128, 128, 3), "uint8"),
        "lr_occluded": datasets.Array3D((16, 16, 3), "uint8"),
        "landmarks": datasets.Array2D((68, 2), "float32"),
        "heatmaps": datasets.Array3D((68, 64, 64), "uint8"),
        "parsing": datasets.Array2D((128, 128), "uint8"),
        "occlusion_mask": datasets.Array2D((128, 128), "uint8"),
    })

    def rows():
        for i in range(len(data["hr"])):
            yield {name: data[name][i] for name in ARRAYS}

    ds = datasets.Dataset.from_generator(rows, features=features, cache_dir=str(path.parent / "hf_cache"))
    ds.save_to_disk(str(path))
    shutil.rmtree(path.parent / "hf_cache", ignore_errors=True)


def write_wds(path: Path, data: dict[str, np.ndarray]) -> None:
    import webdataset as wds

    path.mkdir(parents=True)
    n = len(data["hr"])
    for k in range(-(-n // SHARD)):
        with wds.TarWriter(str(path / f"shard-{k:05d}.tar")) as sink:
            for i in range(k * SHARD, min((k + 1) * SHARD, n)):
                sink.write({"__key__": f"{i:06d}", **{f"{name}.npy": data[name][i] for name in ARRAYS}})


def build(workdir: Path, n: int, formats: dict[str, str]) -> None:
    writers = {"store.zarr": write_zarr, "png": write_png_folder, "hf": write_hf, "wds": write_wds}
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    t = time.perf_counter()
    data = make_samples(n)
    print(f"made {n} samples from CelebA in {time.perf_counter() - t:.1f}s", flush=True)
    write_s = {}
    for label, sub in formats.items():
        t = time.perf_counter()
        writers[sub](workdir / sub, data)
        write_s[label] = time.perf_counter() - t
    (workdir / "write_seconds.json").write_text(json.dumps(write_s))


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ----- loaders (each runs in its own subprocess) -----

class PngFolder:
    def __init__(self, path: str, n: int) -> None:
        self.path, self.n = Path(path), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        import cv2
        import torch

        cv2.setNumThreads(1)
        out = {}
        for name in IMAGE_ARRAYS:
            image = cv2.imread(str(self.path / f"{i:06d}.{name}.png"), cv2.IMREAD_UNCHANGED)
            out[name] = torch.from_numpy(np.ascontiguousarray(image[..., ::-1]) if image.ndim == 3 else image)
        for name in ("landmarks", "heatmaps"):
            out[name] = torch.from_numpy(np.load(self.path / f"{i:06d}.{name}.npy"))
        return out


def _stack_numpy(rows: list[dict]) -> dict:
    import torch

    return {name: torch.from_numpy(np.stack([row[name] for row in rows])) for name in ARRAYS}


def _wds_to_torch(batch: dict) -> dict:
    import torch

    return {name: torch.from_numpy(np.asarray(batch[f"{name}.npy"])) for name in ARRAYS}


def build_loader(kind: str, workdir: Path, n: int, batch_size: int, workers: int):
    from torch.utils.data import DataLoader

    if kind in ("ours", "ours-views", "ours-noheat"):
        from proui_train.data import StoreDataset, make_loader

        arrays = ARRAYS if kind != "ours-noheat" else tuple(a for a in ARRAYS if a != "heatmaps")
        dataset = StoreDataset(workdir / "store.zarr", arrays=arrays, seed=0)
        return make_loader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=False,
                           reuse_batches=kind == "ours-views")
    common = {"num_workers": workers, "persistent_workers": workers > 0}
    if kind == "png":
        return DataLoader(PngFolder(str(workdir / "png"), n), batch_size=batch_size, shuffle=True, **common)
    if kind in ("hf", "hf-np"):
        import datasets

        ds = datasets.load_from_disk(str(workdir / "hf"))
        if kind == "hf":  # HF's torch format turns uint8 arrays into int64 tensors (8x the bytes)
            return DataLoader(ds.with_format("torch"), batch_size=batch_size, shuffle=True, **common)
        return DataLoader(ds.with_format("numpy"), batch_size=batch_size, shuffle=True, collate_fn=_stack_numpy,
                          **common)
    if kind == "wds":
        import webdataset as wds

        urls = sorted(str(p) for p in (workdir / "wds").glob("*.tar"))
        ds = (wds.WebDataset(urls, shardshuffle=len(urls), empty_check=False).shuffle(1000).decode()
              .batched(batch_size).map(_wds_to_torch))
        return wds.WebLoader(ds, batch_size=None, **common)
    raise ValueError(kind)


def measure(kind: str, workdir: Path, n: int, batch_size: int, workers: int, min_seconds: float) -> dict:
    import torch

    torch.set_num_threads(1)
    loader = build_loader(kind, workdir, n, batch_size, workers)
    start = time.perf_counter()
    warm = sum(len(batch["hr"]) for batch in loader)  # includes worker start-up
    startup = time.perf_counter() - start
    if warm < n * 0.9:
        raise RuntimeError(f"{kind}: one epoch gave {warm} samples, expected ~{n}")
    cpu_before = _tree_cpu_seconds()
    samples, epochs, start = 0, 0, time.perf_counter()
    while epochs < 1 or (time.perf_counter() - start < min_seconds and epochs < 5):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epochs + 1)
        for batch in loader:
            assert batch["hr"].shape[1:] == (128, 128, 3)
            assert kind == "ours-noheat" or batch["heatmaps"].shape[1:] == (68, 64, 64)
            samples += len(batch["hr"])
        epochs += 1
    elapsed = time.perf_counter() - start
    cpu = _tree_cpu_seconds() - cpu_before
    del loader  # ends persistent workers so their peak RSS counts in RUSAGE_CHILDREN
    import gc

    gc.collect()
    time.sleep(0.5)
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"samples_per_s": samples / elapsed, "epochs": epochs, "first_epoch_s": startup,
            "cpu_us_per_sample": cpu / samples * 1e6, "cores_busy": cpu / elapsed,
            "peak_rss_main_mib": kib[0] / 1024, "peak_rss_worker_mib": kib[1] / 1024}


def _tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and its live children: the loader's workers."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/proui-loader-bench"))
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--keep", action="store_true", help="reuse the written formats if present")
    parser.add_argument("--rounds", type=int, default=2, help="measure each loader this often, keep the best")
    parser.add_argument("--only", help="comma-separated loader kinds to run (ours, ours-views, ours-noheat, png, "
                        "hf, hf-np, wds); default all")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--build", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        result = measure(args.measure, args.workdir, args.n, args.batch_size, args.workers, args.min_seconds)
        print(json.dumps(result))
        return

    formats = {"zarr (ours)": "store.zarr", "PNG + npy": "png", "HF datasets": "hf"}
    if _importable("webdataset"):
        formats["WebDataset"] = "wds"
    if args.build:  # in a subprocess, so the measuring processes do not inherit its peak RSS
        build(args.workdir, args.n, formats)
        return
    if not (args.keep and all((args.workdir / d).exists() for d in formats.values())):
        subprocess.run([sys.executable, __file__, "--build", "--n", str(args.n), "--workdir", str(args.workdir)],
                       check=True)
    write_s = json.loads((args.workdir / "write_seconds.json").read_text())
    sizes = {label: du(args.workdir / sub) for label, sub in formats.items()}

    runs = [("ours", 0, "zarr (ours)"), ("ours", 1, "zarr (ours)"), ("ours", 2, "zarr (ours)"),
            ("ours-views", 2, "zarr (ours)"), ("ours-noheat", 2, "zarr (ours)"), ("png", 2, "PNG + npy"),
            ("hf", 2, "HF datasets"), ("hf-np", 2, "HF datasets")]
    if "WebDataset" in formats:
        runs.append(("wds", 2, "WebDataset"))
    if args.only:
        runs = [run for run in runs if run[0] in args.only.split(",")]
    names = {"ours": "zarr + StoreDataset", "ours-views": "ours, ring views", "ours-noheat": "ours, no heatmaps",
             "png": "PNG+npy folder, cv2", "hf": "HF datasets, torch fmt", "hf-np": "HF datasets, numpy fmt",
             "wds": "WebDataset, npy"}
    results: dict[tuple[str, int], tuple[str, dict]] = {}
    for round_ in range(args.rounds):  # rounds interleave the loaders, so load from other processes hits all
        for kind, workers, label in runs:
            cmd = [sys.executable, __file__, "--measure", kind, "--workers", str(workers), "--n", str(args.n),
                   "--batch-size", str(args.batch_size), "--workdir", str(args.workdir),
                   "--min-seconds", str(args.min_seconds)]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if out.returncode:
                print(f"{kind} x{workers} failed:\n{out.stderr[-3000:]}", flush=True)
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"round {round_}: {label} x{workers}: {r['samples_per_s']:,.0f} samples/s", flush=True)
            best = results.get((kind, workers), (label, {"samples_per_s": 0}))[1]
            if r["samples_per_s"] > best["samples_per_s"]:
                results[(kind, workers)] = (label, r)

    ours = results.get(("ours", 2), (None, {}))[1].get("samples_per_s")
    print(f"\nN={args.n} 128x128 samples, batch {args.batch_size}, arrays: {', '.join(ARRAYS)}; "
          f"{os.cpu_count()} CPUs, OMP_NUM_THREADS=1\n")
    header = (f"{'loader':<24}{'workers':>8}{'samples/s':>11}{'ours(2w)/x':>11}{'CPU us/smp':>11}{'cores':>6}"
              f"{'1st epoch s':>12}"
              f"{'disk MiB':>10}{'write s':>9}{'RSS main MiB':>13}{'RSS worker MiB':>15}")
    print(header)
    print("-" * len(header))
    for (kind, workers), (label, r) in results.items():
        # the no-heatmaps row reads less than the others: informational, no ratio
        ratio = f"{ours / r['samples_per_s']:.2f}" if ours and kind not in ("ours-noheat", "ours-views") else "-"
        print(f"{names[kind]:<24}{workers:>8}{r['samples_per_s']:>11,.0f}{ratio:>11}"
              f"{r['cpu_us_per_sample']:>11.0f}{r['cores_busy']:>6.2f}{r['first_epoch_s']:>12.2f}"
              f"{sizes[label] / 2**20:>10.0f}{write_s.get(label, float('nan')):>9.1f}"
              f"{r['peak_rss_main_mib']:>13.0f}{r['peak_rss_worker_mib']:>15.0f}")
    if ours:
        def ratio_to(kind: str) -> float:
            return ours / results[(kind, 2)][1]["samples_per_s"] if (kind, 2) in results else float("nan")

        hf = min(ratio_to("hf"), ratio_to("hf-np"))  # against the faster HF variant
        print(f"\ngoals: >= 5x PNG folder: {ratio_to('png'):.1f}x; >= 1.5x HF datasets: {hf:.1f}x; "
              f">= 5,000 samples/s with 2 workers: {ours:,.0f}")


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    main()
