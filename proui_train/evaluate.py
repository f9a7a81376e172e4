"""`proui-train eval`: a model checkpoint or a baseline on the FSRNet test sets and/or a store split.

FSRNet sets (`--benchmark DIR`): `celeba_val_1000_HR/` + `celeba_val_1000_LR_8x/` and `helen_val_50_*`; the LR
files hold the 16x16 input already bicubic-upsampled to 128x128. The `bicubic` baseline is those files as
they are. A model gets the 16x16 input back by inverting that upsampling (`recover_lr`): the files are MATLAB
`imresize(lr, 8, 'bicubic')` images (Keys a = -0.5, symmetric border): the recovered 16x16, upsampled again
the same way, reproduces the provided CelebA-1000 files at 44.4 dB PSNR (JPEG noise), where area-reducing
them (8x8 means, what we did before) hands the model a blurred input and costs it ~0.55 dB. Metrics:
PSNR/SSIM on Y (BT.601) and RGB, no border crop (`proui_train.metrics`), identity similarity of output vs
HR by two judges (dlib's descriptors; FaceNet's embeddings, `models/facenet.py`, when installed) with the share
of outputs each judge verifies as their person, and, for a model, the NME of its own stage-3 landmark estimate
against dlib's 68 points on the HR (the sets have no landmark annotation; stated as `nme_vs_dlib`).
A store split (`--data STORE --split S`) adds the metrics inside / outside the occlusion mask and the NME
against the store's landmarks.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from proui_data.align import template_box
from proui_data.schema import HR_SIZE

from .data import StoreError, open_split, open_store, store_template
from .metrics import quality
from .models import STAGE_LANDMARKS
from .report import bicubic
from .runtime import from_uint8, load_generator, model_template, pick_device, to_uint8

if TYPE_CHECKING:
    from .attributes import AttributeClassifiers

log = logging.getLogger(__name__)
FSRNET_SETS = {"celeba": ("celeba_val_1000_HR", "celeba_val_1000_LR_8x"), "helen": ("helen_val_50_HR", "helen_val_50_LR_8x")}

Box = tuple[float, float, float, float]
Predict = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def heatmaps_to_points(heatmaps: torch.Tensor, hr_size: int = HR_SIZE) -> torch.Tensor:
    """(B,K,h,w) heatmaps -> (B,K,2) HR-pixel coordinates: the peak, refined per axis by the vertex of the
    parabola through the log of the peak and its two neighbours (exact for a Gaussian peak, the shape the
    targets have; a 3x3 weighted mean pulls sub-pixel offsets towards the peak pixel's centre)."""
    b, k, h, w = heatmaps.shape
    idx = heatmaps.float().flatten(2).argmax(-1)  # (B, K)
    ys, xs = idx // w, idx % w
    logs = F.pad(heatmaps.float(), (1, 1, 1, 1)).clamp_min(1e-10).log().flatten(2)  # (B, K, (h+2)(w+2))

    def at(dy: int, dx: int) -> torch.Tensor:
        return logs.gather(-1, ((ys + 1 + dy) * (w + 2) + xs + 1 + dx)[..., None])[..., 0]

    def vertex(before: torch.Tensor, peak: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        curvature = 2 * peak - before - after
        offset = (after - before) / (2 * curvature.clamp_min(1e-6))
        return torch.where(curvature > 1e-6, offset.clamp(-0.5, 0.5), torch.zeros_like(offset))

    centre = at(0, 0)
    dx = vertex(at(0, -1), centre, at(0, 1))
    dy = vertex(at(-1, 0), centre, at(1, 0))
    scale = hr_size / w
    return torch.stack([(xs + dx + 0.5) * scale - 0.5, (ys + dy + 0.5) * scale - 0.5], -1)


def _keys(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    return np.where(x <= 1, (a + 2) * x**3 - (a + 3) * x**2 + 1,
                    np.where(x < 2, a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a, 0.0))


@functools.lru_cache(maxsize=None)
def bicubic_upsampling_matrix(n: int = 16, scale: int = 8) -> np.ndarray:
    """(n*scale, n) matrix of MATLAB's `imresize(x, scale, 'bicubic')` along one axis: Keys kernel a = -0.5,
    pixel centres aligned, indices past the edge mirrored (MATLAB's symmetric extension)."""
    a = np.zeros((n * scale, n))
    for i in range(n * scale):
        u = (i + 0.5) / scale - 0.5
        for j in range(int(np.floor(u)) - 1, int(np.floor(u)) + 3):
            a[i, -j - 1 if j < 0 else (2 * n - 1 - j if j >= n else j)] += _keys(u - j)
    return a


@functools.lru_cache(maxsize=None)
def _downsampling_matrix(n: int, scale: int) -> np.ndarray:
    """The least-squares inverse of `bicubic_upsampling_matrix(n, scale)`, computed once per size."""
    return np.linalg.pinv(bicubic_upsampling_matrix(n, scale))


def recover_lr(upsampled: np.ndarray, scale: int = 8) -> np.ndarray:
    """The (h/scale, w/scale, 3) uint8 image whose MATLAB bicubic x`scale` upsampling is closest to `upsampled`
    (least squares, separable)."""
    h, w = upsampled.shape[:2]
    ph, pw = _downsampling_matrix(h // scale, scale), _downsampling_matrix(w // scale, scale)
    lr = np.einsum("ij,jkc,lk->ilc", ph, upsampled.astype(np.float64), pw)
    return np.clip(lr + 0.5, 0, 255).astype(np.uint8)


def nme(pred: np.ndarray, truth: np.ndarray, index: Sequence[int] | None = None) -> np.ndarray:
    """Per-sample mean point error / outer-eye-corner distance (points 36, 45 of the 68 in `truth`); `index`:
    the 68-point indices `pred` holds (a stage's subset), all 68 by default."""
    iod = np.linalg.norm(truth[:, 36] - truth[:, 45], axis=-1)
    truth = truth if index is None else truth[:, list(index)]
    return np.linalg.norm(pred - truth, axis=-1).mean(-1) / np.maximum(iod, 1e-6)


def _read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _to_tensor(imgs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float()


def _model_predict(generator: torch.nn.Module, device: torch.device) -> Predict:
    """lr (B,3,16,16) in 0..255 -> (output (B,3,128,128) in 0..255, {"stage{s}/{prior,heatmaps}": (B,L,2)} each
    stage's landmark estimates in HR pixels: its prior and its refined heatmaps; empty for the plain network)."""
    @torch.no_grad()
    def predict(lr16: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = generator(from_uint8(lr16.to(device)))
        points = {f"stage{s}/{kind}": heatmaps_to_points(stage[kind]).cpu()
                  for s, stage in enumerate(out["stages"], 1) for kind in ("prior", "heatmaps") if kind in stage}
        return to_uint8(out["final"]).cpu(), points
    return predict


def landmark_errors(points: dict[str, torch.Tensor], truth: np.ndarray) -> dict[str, torch.Tensor]:
    """Per-face NME of each stage's estimate, {"nme/stage1/prior": (B,), ...}, against the same points of `truth`
    (B,68,2) (the stage's STAGE_LANDMARKS); "nme" is the last stage's refined estimate, the figure reported
    before per-stage ones."""
    def stage_index(name: str) -> tuple[int, ...]:  # "stage{s}/..." -> the points stage s estimates
        return STAGE_LANDMARKS[int(name.split("/")[0].removeprefix("stage")) - 1]

    out = {f"nme/{name}": torch.from_numpy(nme(p.numpy(), truth, stage_index(name))) for name, p in points.items()}
    last = max((name for name in points if name.endswith("/heatmaps")), default=None)
    if last is not None:
        out["nme"] = out[f"nme/{last}"]
    return out


def _dlib_points(faces: list[np.ndarray], box: Box) -> np.ndarray:
    from proui_data.detect import predict_in_box

    return np.stack([predict_in_box(f, box) for f in faces])


def _faces_np(faces: torch.Tensor) -> list[np.ndarray]:
    return [t.clamp(0, 255).byte().permute(1, 2, 0).numpy() for t in faces]


@functools.cache
def _facenet():
    """The independent identity judge, or None (said once) when its graph is not installed."""
    from .models.facenet import FaceNetUnavailable, load_facenet

    try:
        return load_facenet()
    except FaceNetUnavailable as err:
        log.warning("identity_facenet is not computed: %s", err)
        return None


def _identities(sr: torch.Tensor, hr: torch.Tensor, box: Box) -> dict[str, torch.Tensor]:
    """(B,) cosines of each output and its HR by two judges, dlib's descriptors ("identity_cosine") and FaceNet's
    embeddings ("identity_facenet"), each the independent judge of an identity loss trained with the other
    (`loss.identity_net`); and, scale-free, whether each judge takes the output for its person ("verified_dlib",
    "verified_facenet": the cosine is at or above the judge's threshold at 1 % false accepts)."""
    from .identity import VERIFY_THRESHOLD as DLIB_THRESHOLD, identity_similarity
    from .models.facenet import VERIFY_THRESHOLD as FACENET_THRESHOLD, facenet_embeddings

    dlib_cos = torch.tensor([identity_similarity(a, b, box) for a, b in zip(_faces_np(sr), _faces_np(hr))],
                            dtype=torch.float64)
    out = {"identity_cosine": dlib_cos, "verified_dlib": (dlib_cos >= DLIB_THRESHOLD).double()}
    if (net := _facenet()) is not None:
        facenet_cos = (facenet_embeddings(sr.clamp(0, 255), box, net) * facenet_embeddings(hr, box, net)).sum(1)
        out["identity_facenet"] = facenet_cos.double()
        out["verified_facenet"] = (facenet_cos >= FACENET_THRESHOLD).double()
    return out


def downstream(sr: torch.Tensor, hr: torch.Tensor, landmarks: np.ndarray, box: Box) -> dict[str, torch.Tensor]:
    """The paper's downstream tasks run on the outputs, per face: dlib's 68 points found on the output, as a
    fraction of the inter-ocular distance from the true landmarks ("nme_dlib"), and identity similarity
    (`_identities`)."""
    found = _dlib_points(_faces_np(sr), box)
    return {"nme_dlib": torch.from_numpy(nme(found, landmarks)), **_identities(sr, hr, box)}


def _summarise(chunks: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    keys = chunks[0].keys()
    return {k: float(torch.cat([c[k] for c in chunks]).double().nanmean()) for k in keys}


def evaluate_fsrnet(root: Path, name: str, predict: Predict | None, identity: bool, batch: int = 16,
                    limit: int | None = None) -> dict[str, Any]:
    hr_dir, lr_dir = (root / d for d in FSRNET_SETS[name])
    box = template_box("fsrnet")  # the sets' own frame, whatever frame the model was trained in
    files = sorted(p.name for p in hr_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))[:limit]
    chunks = []
    for i in range(0, len(files), batch):
        names = files[i:i + batch]
        hr_np = [_read_rgb(hr_dir / f) for f in names]
        lr_np = [_read_rgb(lr_dir / f) for f in names]
        hr = _to_tensor(hr_np)
        per_face = {}
        if predict is None:
            sr = _to_tensor(lr_np)  # the bicubic baseline: the provided upsampled inputs
        else:
            lr16 = _to_tensor([recover_lr(x) for x in lr_np])
            sr, points = predict(lr16)
            if points:
                per_face["nme_vs_dlib"] = landmark_errors(points, _dlib_points(hr_np, box))["nme"]
        per_face.update(quality(sr, hr))
        if identity:
            per_face.update(_identities(sr, hr, box))
        chunks.append(per_face)
    return {"n": len(files), **_summarise(chunks)}


def per_kind(chunks: list[dict[str, torch.Tensor]], kinds: np.ndarray,
             metrics: tuple[str, ...] = ("psnr_y", "psnr_y_in", "psnr_y_out", "ssim_y", "hf_ratio")
             ) -> dict[str, dict[str, float]]:
    """Per-sample metrics grouped by occlusion kind -> {kind: {"n": count, metric: mean}}."""
    values = {k: torch.cat([c[k] for c in chunks]).double().numpy() for k in metrics}
    out = {}
    for kind in sorted(set(kinds.tolist())):
        sel = kinds == kind
        out[kind or "none"] = {"n": int(sel.sum()), **{k: float(np.nanmean(v[sel])) for k, v in values.items()}}
    return out


def evaluate_store(store: str, split: str, predict: Predict | None, identity: bool, batch: int = 16,
                   input_name: str | None = None, limit: int | None = None, baseline: str = "bicubic",
                   attributes: "AttributeClassifiers | None" = None) -> dict[str, Any]:
    """Metrics on a store split (its first `limit` valid faces); `input_name`: "lr_occluded" (default when the
    store has it) or "lr". Without `predict`, `baseline` "bicubic" (of the input) or "hr" (the ground truth
    itself: the ceiling of the downstream figures). `identity`: also the downstream tasks on the outputs
    (identity cosine, dlib NME); `attributes`: the attribute accuracy of `proui-train attributes`' classifiers
    (the split must be the one they were made for). Every figure is per face, so `batch` changes the memory and
    not the result."""
    root = open_store(store)
    g = open_split(root, split)
    box = template_box(store_template(root))  # the store's frame
    valid = np.flatnonzero(g["valid"][:])[:limit]
    inp = input_name or ("lr_occluded" if "lr_occluded" in g.array_keys() else "lr")
    if inp not in g.array_keys():
        raise StoreError(f"{store} split {split!r} has no {inp!r} array; arrays: {sorted(g.array_keys())}")
    has_mask = inp == "lr_occluded" and "occlusion_mask" in g.array_keys()  # clean input: no inside/outside
    kinds_all = g["occlusion_kind"][:] if has_mask and "occlusion_kind" in g.array_keys() else None
    labels_all = _attribute_labels(root, g, attributes) if attributes is not None else None
    keys_all = g["key"][:] if attributes is not None else None
    chunks, kinds, predicted, labels = [], [], [], []
    size, n_samples = g.attrs["shard_size"], g.attrs["n_samples"]
    for start in range(0, n_samples, size):  # whole shards, each read once
        rows = valid[(valid >= start) & (valid < start + size)] - start
        if rows.size == 0:
            continue
        sl = slice(start, min(start + size, n_samples))
        shard = {"hr": g["hr"][sl], "lr": g[inp][sl], "mask": g["occlusion_mask"][sl] if has_mask else None,
                 "landmarks": g["landmarks"][sl]}
        for r0 in range(0, rows.size, batch):
            r = rows[r0:r0 + batch]
            hr = torch.from_numpy(shard["hr"][r]).permute(0, 3, 1, 2).float()
            lr = torch.from_numpy(shard["lr"][r]).permute(0, 3, 1, 2).float()
            mask = torch.from_numpy(shard["mask"][r]).float()[:, None] / 255 if has_mask else None
            per_face = {}
            if predict is None:
                sr = hr.clone() if baseline == "hr" else bicubic(lr)
            else:
                sr, points = predict(lr)
                per_face.update(landmark_errors(points, shard["landmarks"][r]))
            per_face.update(quality(sr, hr, mask))
            if identity:
                per_face.update(downstream(sr, hr, shard["landmarks"][r], box))
            chunks.append(per_face)
            if kinds_all is not None:
                kinds.extend(kinds_all[start + r])
            if attributes is not None:
                predicted.append(attributes.predict(sr, [str(k) for k in keys_all[start + r]]))
                labels.append(torch.from_numpy(labels_all[start + r]))
    out: dict[str, Any] = {"n": int(valid.size), "input": inp, **_summarise(chunks)}
    if kinds:
        out["by_kind"] = per_kind(chunks, np.asarray(kinds))
    if attributes is not None:
        from .attributes import attribute_scores

        out.update(attribute_scores(torch.cat(predicted), torch.cat(labels).float(), attributes.names))
    return out


def _attribute_labels(root, group, attributes: "AttributeClassifiers") -> np.ndarray:
    """(N,A) +1/-1 labels of the classifiers' attributes for every row of `group`."""
    stored = list(root.attrs.get("attribute_names") or [])
    if "attributes" not in group.array_keys() or any(n not in stored for n in attributes.names):
        raise StoreError(f"this split has no labels for {list(attributes.names)}: evaluate attributes on the "
                         "split the classifiers were made from (proui-train attributes --split)")
    return group["attributes"][:][:, [stored.index(n) for n in attributes.names]]


def evaluate(checkpoint: str | None, baseline: str | None, benchmark: str | None, store: str | None,
             split: str = "test", device: str = "auto", identity: bool = True, limit: int | None = None,
             store_input: str | None = None, batch_size: int = 16, attributes: str | None = None) -> dict[str, Any]:
    """All requested evaluations -> {"celeba": {...}, "helen": {...}, "store/<split>": {...}}; `batch_size`
    faces per forward pass, `limit` the first faces of each set; `baseline` "bicubic" or "hr" (a store split
    only) instead of a checkpoint; `attributes` a folder of `proui-train attributes` classifiers."""
    if store:
        open_split(store, split)  # a missing store or split fails before the model is loaded
    if baseline == "hr" and benchmark:
        raise ValueError("--baseline hr is the store split's own HR; the FSRNet sets have no such baseline")
    classifiers = None
    if attributes:
        from .attributes import AttributeClassifiers

        classifiers = AttributeClassifiers.load(attributes)
    dev = pick_device(device)
    predict = None if baseline else _model_predict(load_generator(checkpoint, dev), dev)
    results: dict[str, Any] = {"method": baseline or str(checkpoint)}
    frame = None if baseline else model_template(checkpoint)  # the frame the weights record
    if frame is not None:
        results["template"] = frame
    if benchmark:
        _check_frame(frame, "fsrnet", f"the FSRNet sets in {benchmark}")
        root = Path(benchmark)
        for name, (hr_dir, _) in FSRNET_SETS.items():
            if (root / hr_dir).is_dir():
                results[name] = evaluate_fsrnet(root, name, predict, identity, batch=batch_size, limit=limit)
    if store:
        _check_frame(frame, store_template(store), store)
        results[f"store/{split}"] = evaluate_store(store, split, predict, identity, batch=batch_size,
                                                   input_name=store_input, limit=limit,
                                                   baseline=baseline or "bicubic", attributes=classifiers)
    return results


def _check_frame(model: str | None, data: str, where: str) -> None:
    """Warn when a model is evaluated on faces aligned to another template than the one it was trained in."""
    if model is not None and model != data:
        log.warning("the model was trained in the %r frame but %s is in the %r frame: its faces are out of the "
                    "model's frame (figures not comparable to a model trained in it)", model, where, data)
