"""68 landmarks from the 2D FAN of the `face-alignment` package, on face boxes from our dlib chain.

face_alignment downloads its weights on first use, which fails offline, so this module finds them locally
and never downloads: an explicit path, else `$PROUI_FAN_WEIGHTS` (the file, or a folder holding it), else
the torch hub cache `$TORCH_HOME/hub/checkpoints` where face_alignment itself would have saved them.
Two formats load: the state dict of face_alignment >= 1.5 (`2DFAN4-11f355bf06.pth.tar`, `torch.load`) and
the TorchScript archives of face_alignment 1.3/1.4 (`2DFAN4-cd938726ad.zip`, `2DFAN4_1.6-c827573f02.zip`,
`torch.jit.load`). Face detection stays ours (face_alignment's detectors download weights too).

Crop geometry follows face_alignment: a 256x256 crop of side 200*scale around the face centre, 64x64
heatmaps, argmax with a quarter-pixel shift towards the larger neighbour. FAN was trained on crops framed
from the 68-point bounding box (centre raised by 0.12 of its height, scale = (w + h) / 195), so our
HOG-framed boxes are first mapped to a 68-point box with the offsets measured on Helen trainset
(`HOG_TO_LANDMARK_BOX`, see benchmarks/landmarks.py).
"""
from __future__ import annotations

import functools
import os
import warnings
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in image pixels

# face_alignment 1.5 (state dict) first, then the TorchScript archives of 1.3/1.4.
WEIGHT_FILES = ("2DFAN4-11f355bf06.pth.tar", "2DFAN4_1.6-c827573f02.zip", "2DFAN4-cd938726ad.zip")
WEIGHT_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"
CROP = 256
HEATMAP = 64
# Centre shift (dx, dy) and size (w, h) of the 68-point bounding box relative to a dlib HOG box, in HOG box
# widths: medians over 384 faces of Helen trainset's first 400 photos (benchmarks/landmarks.py --calibrate).
HOG_TO_LANDMARK_BOX = (-0.0045, 0.0763, 0.9676, 0.9415)


class FanWeightsMissing(RuntimeError):
    """The FAN weights are not on this machine; the message names the file (`.file`) and where to put it."""

    def __init__(self, message: str, file: str):
        super().__init__(message)
        self.file = file


def hub_checkpoints() -> Path:
    """Where face_alignment (torch.hub) caches weights: `$TORCH_HOME/hub/checkpoints`."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _expected() -> tuple[str, str]:
    """(file name, URL) the installed face_alignment downloads; the 1.5 ones if it cannot say."""
    try:
        from face_alignment.api import models_urls

        url = models_urls["2DFAN-4"]
        return os.path.basename(url), url
    except Exception:  # an older or broken install: the 1.5 file is what we load best anyway
        return WEIGHT_FILES[0], WEIGHT_URL


def find_weights(weights: str | os.PathLike | None = None) -> Path:
    """The FAN weights file: `weights`, else $PROUI_FAN_WEIGHTS (file or folder), else the torch hub cache.

    Raises FanWeightsMissing, whose message names the file to place and where.
    """
    name, url = _expected()
    names = [name] + [n for n in WEIGHT_FILES if n != name]
    given = weights if weights is not None else os.environ.get("PROUI_FAN_WEIGHTS") or None
    if given is not None and Path(given).is_file():
        return Path(given)
    folder = Path(given) if given is not None else hub_checkpoints()
    candidates = [folder / n for n in names] if given is None or folder.is_dir() else []
    for c in candidates:
        if c.is_file():
            return c
    looked = ", ".join(str(c) for c in candidates) or str(given)
    raise FanWeightsMissing(
        f"face-alignment weights not found (looked for {looked}). proui never downloads them: fetch "
        f"{name} ({url}) elsewhere and place it in {hub_checkpoints()}, or point PROUI_FAN_WEIGHTS at the "
        "file or its folder.", name)


def _is_torchscript(path: Path) -> bool:
    # torch.save archives are zips too; only TorchScript ones carry compiled code.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/")[1:2] == ["code"] for n in z.namelist())


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=4)
def load_fan(path: str, device: str) -> object:
    """The 2D FAN in eval mode on `device`, loaded once per process (so once per Dask worker)."""
    import torch

    p = Path(path)
    if _is_torchscript(p):
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; these archives need it
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(p), map_location=device)
    else:
        from face_alignment.models import FAN

        state = torch.load(str(p), map_location=device, weights_only=True)
        state = state.get("state_dict", state)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        net = FAN(4)
        try:
            net.load_state_dict(state)
        except RuntimeError as e:
            raise RuntimeError(f"{p} is not a 2D FAN-4 state dict: {str(e)[:300]}") from None
    return net.to(device).eval()


def crop_frame(box: Box) -> tuple[float, float, float]:
    """(cx, cy, side) of FAN's square crop for a HOG-framed face box."""
    x0, y0, x1, y1 = box
    w = x1 - x0
    dx, dy, sw, sh = HOG_TO_LANDMARK_BOX
    cx, cy = (x0 + x1) / 2 + dx * w, (y0 + y1) / 2 + dy * w
    lw, lh = sw * w, sh * w
    # face_alignment's framing of a landmark box: centre raised 0.12 h, side 200 * (w + h) / 195.
    return cx, cy - 0.12 * lh, 200.0 * (lw + lh) / 195.0


def _crop(rgb: np.ndarray, frame: tuple[float, float, float]) -> np.ndarray:
    import cv2

    cx, cy, side = frame
    a = side / CROP  # source pixels per crop pixel; pixel centres sit at integer coordinates
    m = np.array([[a, 0, cx + (0.5 - CROP / 2) * a], [0, a, cy + (0.5 - CROP / 2) * a]])
    return cv2.warpAffine(rgb, m, (CROP, CROP), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT)


def heatmap_points(heatmaps: np.ndarray) -> np.ndarray:
    """(B,68,2) heatmap-pixel coordinates: argmax moved a quarter pixel towards the larger neighbour."""
    b, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(b, k, h * w)
    idx = flat.argmax(-1)
    y, x = np.divmod(idx, w)
    pts = np.stack([x, y], -1).astype(np.float64)
    bi, ki = np.indices((b, k))
    inner = (x > 0) & (x < w - 1) & (y > 0) & (y < h - 1)
    xc, yc = np.clip(x, 1, w - 2), np.clip(y, 1, h - 2)
    dx = heatmaps[bi, ki, yc, xc + 1] - heatmaps[bi, ki, yc, xc - 1]
    dy = heatmaps[bi, ki, yc + 1, xc] - heatmaps[bi, ki, yc - 1, xc]
    pts += 0.25 * np.stack([np.sign(dx), np.sign(dy)], -1) * inner[..., None]
    return pts


class FanLandmarker:
    """Batched 2D FAN: `predict([(rgb, box), ...])` runs the network on all crops in batches of `batch_size`."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str | None = None,
                 batch_size: int = 16, flip: bool = False):
        self.path = find_weights(weights)
        self.device = device or default_device()
        self.batch_size = batch_size
        self.flip = flip  # average with the mirrored crop (face_alignment's default; 2x the compute)
        self.net = load_fan(str(self.path), self.device)

    def _forward(self, x: "torch.Tensor") -> np.ndarray:  # noqa: F821
        import torch

        from face_alignment.utils import shuffle_lr

        with torch.inference_mode():
            out = self.net(x)
            out = out[-1] if isinstance(out, (list, tuple)) else out
            if self.flip:
                back = self.net(x.flip(-1))
                back = back[-1] if isinstance(back, (list, tuple)) else back
                out = out + shuffle_lr(back).flip(-1)
        return out.float().cpu().numpy()

    def predict(self, faces: Sequence[tuple[np.ndarray, Box]]) -> np.ndarray:
        """(N,68,2) landmarks in each image's pixels for N (RGB uint8 image, HOG-framed box) pairs."""
        import torch

        if not faces:
            return np.zeros((0, 68, 2))
        frames = [crop_frame(box) for _, box in faces]
        out = []
        for start in range(0, len(faces), self.batch_size):
            chunk = faces[start:start + self.batch_size]
            crops = np.stack([_crop(rgb, f) for (rgb, _), f in zip(chunk, frames[start:start + len(chunk)])])
            x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div_(255.0).to(self.device)
            out.append(heatmap_points(self._forward(x)))
        pts = np.concatenate(out)
        frame = np.array(frames)
        # heatmap pixel centre u <-> crop pixel 4u + 1.5 <-> source cx + (4u + 2 - CROP/2) * side/CROP
        scale = frame[:, 2] / HEATMAP
        return (pts - HEATMAP / 2 + 0.5) * scale[:, None, None] + frame[:, None, :2]


@functools.lru_cache(maxsize=1)
def landmarker(weights: str | None = None, device: str | None = None) -> FanLandmarker:
    """The process-wide FanLandmarker (weights resolved as in `find_weights`)."""
    return FanLandmarker(weights, device)
