"""Small datasets in the official file formats, made from the package's public-domain demo photos."""
from __future__ import annotations

import importlib.resources
from pathlib import Path

import cv2
import numpy as np

from proui_data import align
from proui_data.detect import hog_boxes, predict_in_box

CELEBA_ATTRS = ["5_o_Clock_Shadow", "Arched_Eyebrows", "Smiling"]


def demo_photo(name: str = "astronaut.jpg") -> np.ndarray:
    """RGB uint8 of a shipped demo photo."""
    data = (importlib.resources.files("proui_data.demo") / name).read_bytes()
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def dlib_landmarks(rgb: np.ndarray) -> np.ndarray:
    boxes = hog_boxes(rgb, 0) or hog_boxes(rgb, 1)
    assert boxes, "fixture photo must contain a face"
    return predict_in_box(rgb, boxes[0])


def celeba_frame(rgb: np.ndarray, shift: float = 0.0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Warp a photo into a CelebA-aligned-like 178x218 frame; returns (image, 68 landmarks in that frame)."""
    lm = dlib_landmarks(rgb)
    # CelebA frame = HR template frame scaled by 178/128 and shifted down 20 rows.
    s = 178 / 128
    dst = (align.TEMPLATE_5 * s + [0, 20]) * scale + [shift, shift / 2]
    m = align.similarity_transform(align.landmarks68_to_5(lm), dst)
    img = cv2.warpAffine(rgb, m, (178, 218), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
    return img, align.apply_transform(m, lm)


def write_jpeg(path: Path, rgb: np.ndarray, quality: int = 92) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])


def make_celeba_root(root: Path, n: int = 12, with_landmarks: bool = True, truncate_attrs: int | None = None,
                     partition_rows: int | None = None) -> dict[str, np.ndarray]:
    """A CelebA root (img_align_celeba/, Anno/, Eval/) with n images; returns {file: 68 landmarks}."""
    photos = [demo_photo("astronaut.jpg"), demo_photo("grace_hopper.jpg")]
    base = [celeba_frame(p) for p in photos]
    truth = {}
    rows_id, rows_part, rows_attr, rows_lm = [], [], [], []
    for i in range(n):
        name = f"{i + 1:06d}.jpg"
        img, lm = base[i % 2]
        dx = (i // 2) % 3 - 1  # small shifts keep every image distinct
        img = np.roll(img, dx, axis=1)
        lm = lm + [dx, 0]
        write_jpeg(root / "img_align_celeba" / name, img)
        truth[name] = lm
        rows_id.append(f"{name} {100 + i % 2}")
        rows_part.append(f"{name} {0 if i % 4 < 2 else (1 if i % 4 == 2 else 2)}")
        rows_attr.append(f"{name}  " + " ".join("1" if (i + j) % 2 else "-1" for j in range(len(CELEBA_ATTRS))))
        p5 = align.landmarks68_to_5(lm)
        rows_lm.append(f"{name} " + " ".join(f"{int(round(v))}" for v in p5.ravel()))
    (root / "Anno").mkdir(parents=True, exist_ok=True)
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Anno" / "identity_CelebA.txt").write_text("\n".join(rows_id) + "\n")
    kept = rows_attr[:truncate_attrs] if truncate_attrs is not None else rows_attr
    (root / "Anno" / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(CELEBA_ATTRS) + "\n" + "\n".join(kept) + "\n")
    if with_landmarks:
        header = "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
        (root / "Anno" / "list_landmarks_align_celeba.txt").write_text(f"{n}\n{header}\n" + "\n".join(rows_lm) + "\n")
    part = rows_part[:partition_rows] if partition_rows is not None else rows_part
    (root / "Eval" / "list_eval_partition.txt").write_text("\n".join(part) + "\n")
    return truth


def write_pts(path: Path, landmarks: np.ndarray) -> None:
    """300-W .pts (1-based coordinates)."""
    body = "\n".join(f"{x + 1:.3f} {y + 1:.3f}" for x, y in landmarks)
    path.write_text(f"version: 1\nn_points:  {len(landmarks)}\n{{\n{body}\n}}\n")


def make_helen_root(root: Path, n_train: int = 4, n_test: int = 2, labels: bool = True) -> dict[str, np.ndarray]:
    """A Helen root in the 300-W layout (+ SmithCVPR2013 labels/); returns {key: 68 landmarks}."""
    photos = [demo_photo("astronaut.jpg"), demo_photo("grace_hopper.jpg")]
    lms = [dlib_landmarks(p) for p in photos]
    truth = {}
    for split, count in (("trainset", n_train), ("testset", n_test)):
        for i in range(count):
            name = f"{1000 + i}_{1 if split == 'trainset' else 2}"
            img, lm = photos[i % 2], lms[i % 2]
            write_jpeg(root / split / f"{name}.jpg", img)
            write_pts(root / split / f"{name}.pts", lm)
            truth[f"{split}/{name}.jpg"] = lm
            if labels:
                d = root / "labels" / name
                d.mkdir(parents=True, exist_ok=True)
                h, w = img.shape[:2]
                for c in range(11):
                    layer = np.zeros((h, w), np.uint8)
                    if c == 1:  # face skin: the jaw polygon
                        cv2.fillPoly(layer, [np.round(lm[:17]).astype(np.int32)], 255)
                    cv2.imwrite(str(d / f"{name}_lbl{c:02d}.png"), layer)
    return truth


def finished_shards(url) -> int:
    """Shards marked finished in a store being built (0 while it is still being created)."""
    import zarr

    from proui_data import store

    try:
        g = zarr.open_group(str(url), mode="r")
        return sum(int(store.finished_shards(g[s]).sum()) for s in store.splits_of(g))
    except Exception:  # noqa: BLE001 - the store is still being created
        return 0


def kill_when_finished(url, n: int, alive, kill, timeout: float = 120.0) -> int:
    """Poll the store; once `n` shards are finished call `kill()`. Returns the count seen at the kill."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and alive():
        done = finished_shards(url)
        if done >= n:
            kill()
            return done
        time.sleep(0.02)
    return finished_shards(url)
