"""Attribute accuracy on hallucinated faces: the expression (and appearance) task of the Pro-UIGAN paper.

A small CNN per fold is trained on clean HR faces with CelebA's own attribute labels, then scores faces
(HR, bicubic, a model's outputs) it never trained on: the labelled faces are split into `folds` groups by
identity, and each face is classified by the network trained on the other folds. The better a method keeps an
attribute (a smile, an open mouth, glasses), the closer its accuracy comes to HR's.

Where the labels come from: `proui-data build --source celeba --holdout-labelled attr` puts every image with
an attribute row in its own split (`attr`), out of the generator's training split.

    proui-train attributes --data celeba.zarr --split attr --out attributes/      # train the fold networks
    proui-train eval --checkpoint RUN --data celeba.zarr --split attr --attributes attributes/
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .data import open_split, open_store

ATTRIBUTES = ("Smiling", "Mouth_Slightly_Open", "Male", "Eyeglasses")
INPUT_SIZE = 64  # faces are area-reduced from 128: attributes live in coarse structure, and it is 4x cheaper
CONFIG_FILE, WEIGHTS_FILE = "attributes.json", "attributes.safetensors"


class AttributesError(ValueError):
    """Labels or classifiers that cannot be used, said in one line."""


class AttributeNet(nn.Module):
    """faces (B,3,64,64) in [-1, 1] -> attribute logits (B,A): four conv-BN-ReLU blocks of stride 2
    (64 -> 4 px), global average pooling, a linear layer."""

    def __init__(self, n_attributes: int, widths: Sequence[int] = (32, 64, 128, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 3, 1, 1), nn.BatchNorm2d(c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, n_attributes)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(faces).mean((2, 3)))  # (B, A)


def prepare(faces: torch.Tensor) -> torch.Tensor:
    """(B,3,128,128) faces in 0..255 -> (B,3,64,64) in [-1, 1], the classifiers' input."""
    return F.interpolate(faces.float(), size=INPUT_SIZE, mode="area") / 127.5 - 1


def identity_folds(identities: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """(N,) fold index of each face: identities shuffled with `seed` and dealt round-robin, so no identity
    is in two folds (a classifier never scores a person it trained on)."""
    unique = np.unique(identities)
    order = np.random.default_rng(seed).permutation(unique)
    fold_of = {identity: i % folds for i, identity in enumerate(order)}
    return np.array([fold_of[i] for i in identities], dtype=np.int64)


@dataclass
class AttributeClassifiers:
    """The fold networks and which fold each face of the labelled split belongs to."""

    names: tuple[str, ...]
    keys: list[str]  # the split's face keys, in row order: a face is scored by its own fold's network
    fold: np.ndarray  # (N,) fold of each key
    networks: list[AttributeNet]

    def predict(self, faces: torch.Tensor, keys: Sequence[str], batch: int = 64) -> torch.Tensor:
        """(B,3,128,128) faces in 0..255 of the labelled split's `keys` -> (B,A) +1 / -1 predictions, each face
        by the network that did not train on it."""
        where = {k: i for i, k in enumerate(self.keys)}
        missing = [k for k in keys if k not in where]
        if missing:
            raise AttributesError(f"{len(missing)} faces are not in the classifiers' labelled split, e.g. "
                                  f"{missing[0]!r}: evaluate attributes on the split they were made from")
        folds = torch.as_tensor([int(self.fold[where[k]]) for k in keys])
        out = torch.zeros(len(keys), len(self.names))
        with torch.no_grad():
            for f, net in enumerate(self.networks):
                rows = torch.nonzero(folds == f).flatten()
                for chunk in rows.split(batch):
                    out[chunk] = torch.where(net.eval()(prepare(faces[chunk])) > 0, 1.0, -1.0)
        return out

    def save(self, out: str | Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {f"fold{f}.{k}": v.contiguous() for f, net in enumerate(self.networks)
                   for k, v in net.state_dict().items()}
        save_file(tensors, str(out / WEIGHTS_FILE))
        (out / CONFIG_FILE).write_text(json.dumps(
            {"names": list(self.names), "keys": self.keys, "fold": self.fold.tolist(), "folds": len(self.networks),
             "input_size": INPUT_SIZE}, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "AttributeClassifiers":
        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise AttributesError(f"{path}: no {name}; make it with `proui-train attributes --out {path}`")
        meta = json.loads((path / CONFIG_FILE).read_text())
        tensors = load_file(str(path / WEIGHTS_FILE))
        networks = []
        for f in range(meta["folds"]):
            net = AttributeNet(len(meta["names"]))
            net.load_state_dict({k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(f"fold{f}.")})
            networks.append(net.eval())
        return cls(tuple(meta["names"]), list(meta["keys"]), np.asarray(meta["fold"]), networks)


def read_labelled(store: str, split: str, names: Sequence[str] = ATTRIBUTES
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(hr (N,128,128,3) uint8, labels (N,A) +1/-1, identities (N,), keys) of the valid rows of `split`
    that have every attribute in `names` labelled."""
    group = open_split(store, split)
    root = open_store(store)
    stored = list(root.attrs.get("attribute_names") or (root.attrs.get("source") or {}).get("attribute_names") or [])
    if "attributes" not in group.array_keys() or not stored:
        raise AttributesError(f"{store} split {split!r} has no attribute labels (build CelebA with its attribute file)")
    unknown = [n for n in names if n not in stored]
    if unknown:
        raise AttributesError(f"attributes {unknown} not in the store's ({', '.join(stored)})")
    labels = group["attributes"][:][:, [stored.index(n) for n in names]]
    keep = group["valid"][:].astype(bool) & (labels != 0).all(1)
    if not keep.any():
        raise AttributesError(f"{store} split {split!r} has no valid face with all of {list(names)} labelled")
    rows = np.flatnonzero(keep)
    return (group["hr"][:][rows], labels[rows].astype(np.float32), group["identity"][:][rows],
            [str(k) for k in group["key"][:][rows]])


def train_classifiers(hr: np.ndarray, labels: np.ndarray, identities: np.ndarray, keys: list[str],
                      names: Sequence[str] = ATTRIBUTES, folds: int = 4, epochs: int = 40, batch: int = 32,
                      seed: int = 0) -> AttributeClassifiers:
    """One AttributeNet per identity fold, trained on the other folds' HR faces (flips as augmentation)."""
    fold = identity_folds(identities, folds, seed)
    faces = prepare(torch.from_numpy(hr).permute(0, 3, 1, 2))
    targets = torch.from_numpy((labels > 0).astype(np.float32))
    networks = []
    for f in range(folds):
        torch.manual_seed(seed * 100 + f)
        rows = torch.from_numpy(np.flatnonzero(fold != f))
        net = AttributeNet(len(names))
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * -(-len(rows) // batch))
        for _ in range(epochs):
            for chunk in rows[torch.randperm(len(rows))].split(batch):
                x = faces[chunk]
                flip = torch.rand(len(chunk)) < 0.5
                x = torch.where(flip[:, None, None, None], x.flip(-1), x)
                loss = F.binary_cross_entropy_with_logits(net.train()(x), targets[chunk])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        networks.append(net.eval())
    return AttributeClassifiers(tuple(names), keys, fold, networks)


def attribute_scores(predictions: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """Accuracy and balanced accuracy (mean of the true-positive and true-negative rates: Eyeglasses is rare)
    per attribute, and their means over the attributes ('attr_accuracy', 'attr_balanced')."""
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        pred, truth = predictions[:, i] > 0, labels[:, i] > 0
        rates = [float((pred[truth == t] == t).float().mean()) for t in (True, False) if (truth == t).any()]
        out[f"attr/{name}"] = float((pred == truth).float().mean())
        out[f"attr_balanced/{name}"] = float(np.mean(rates))
    out["attr_accuracy"] = float(np.mean([out[f"attr/{n}"] for n in names]))
    out["attr_balanced"] = float(np.mean([out[f"attr_balanced/{n}"] for n in names]))
    return out
