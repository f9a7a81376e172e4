"""Checkpoints without pickle: tensors in safetensors, everything else in JSON, written atomically.

A checkpoint is a folder `step-XXXXXXXX/` holding `tensors.safetensors` (model weights, EMA, optimiser
tensors, RNG states) and `state.json` (step, epoch, loader position, optimiser hyper-parameters, config).
It is written to a temporary folder and renamed into place, then `latest` is replaced atomically, so a
killed run leaves either the old or the new checkpoint, never half of one. A checkpoint damaged afterwards
(a truncated or missing file) raises `CheckpointError` naming the file; `load_latest` then falls back to the
newest older checkpoint that reads, with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)
TENSOR = "__tensor__"


class CheckpointError(ValueError):
    """A checkpoint that is not there or cannot be read, in one line naming the file."""


def damaged(file: Path, error: Exception) -> CheckpointError:
    """The error for a weights or state file that does not read."""
    return CheckpointError(f"{file}: damaged (truncated or overwritten: {error})")


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list into `tensors` (key = its path); return a JSON-able tree."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {TENSOR: key}
    if isinstance(obj, dict):
        # Keep key types (optimiser state is keyed by int): a list of pairs.
        return {"__dict__": [[k, flatten(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"{prefix}: cannot store {type(obj).__name__} in a checkpoint")


def unflatten(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if TENSOR in tree:
            return tensors[tree[TENSOR]]
        if "__dict__" in tree:
            return {k: unflatten(v, tensors) for k, v in tree["__dict__"]}
        if "__list__" in tree:
            items = [unflatten(v, tensors) for v in tree["__list__"]]
            return tuple(items) if tree.get("tuple") else items
    return tree


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `state` (nested dicts of tensors and plain values) as checkpoint `step`; keep the last `keep`."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"step-{step:08d}"
    tmp = run_dir / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    tensors: dict[str, torch.Tensor] = {}
    tree = flatten(state, "", tensors)
    save_file(tensors, str(tmp / "tensors.safetensors"))
    with open(tmp / "state.json", "w") as f:
        json.dump(tree, f)
        f.flush()
        os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = run_dir / f".latest-{os.getpid()}"
    latest_tmp.write_text(final.name)
    os.replace(latest_tmp, run_dir / "latest")
    for old in sorted(run_dir.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its `latest`)."""
    p = Path(path)
    if (p / "state.json").is_file() or (p / "tensors.safetensors").is_file():
        return p
    if (p / "latest").is_file():
        name = (p / "latest").read_text().strip()
        if not name or not (p / name).is_dir():
            raise CheckpointError(f"{p / 'latest'} names {name!r}, which is not a checkpoint folder in {p}")
        return p / name
    raise CheckpointError(f"no checkpoint at {p} (expected state.json or a run folder with 'latest')")


def _read(ck: Path, device: str | torch.device) -> dict[str, Any]:
    tensors_file, state_file = ck / "tensors.safetensors", ck / "state.json"
    for f in (tensors_file, state_file):
        if not f.is_file():
            raise CheckpointError(f"{f}: missing; the checkpoint is incomplete")
    try:
        tensors = load_file(str(tensors_file), device=str(device))
    except (SafetensorError, OSError) as e:
        raise damaged(tensors_file, e) from None
    try:
        tree = json.loads(state_file.read_text())
    except (OSError, ValueError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise damaged(state_file, e) from None
    try:
        return unflatten(tree, tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ck}: state.json and tensors.safetensors do not match ({e!r})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` (no pickle anywhere); CheckpointError when it is
    missing or damaged."""
    return _read(find_checkpoint(path), device)


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether a run folder holds a checkpoint (its `latest`, or any step folder)."""
    run_dir = Path(run_dir)
    return (run_dir / "latest").is_file() or any(p.is_dir() for p in run_dir.glob("step-*"))


def load_latest(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """(checkpoint, its folder) of a run's `latest`; when that one is damaged or missing, the newest older
    step folder that reads, with a warning. CheckpointError when none reads."""
    run_dir = Path(run_dir)
    try:
        ck = find_checkpoint(run_dir)
        return _read(ck, device), ck
    except CheckpointError as e:
        first, tried = e, None
        if (run_dir / "latest").is_file():
            tried = run_dir / (run_dir / "latest").read_text().strip()
    for older in sorted((p for p in run_dir.glob("step-*") if p.is_dir() and p != tried), reverse=True):
        try:
            state = _read(older, device)
        except CheckpointError as e:
            log.warning("%s", e)
            continue
        log.warning("%s; falling back to the previous checkpoint %s", first, older)
        return state, older
    raise CheckpointError(f"{first}; no older checkpoint in {run_dir} reads either") from None
