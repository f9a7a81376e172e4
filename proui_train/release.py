"""Released generators: a folder in huggingface_hub's PyTorchModelHubMixin layout (config.json,
model.safetensors, README.md model card) whose weights file also carries the full training config in its
safetensors metadata, so `load_generator` rebuilds the network from the file alone.

`ProUIGAN.from_pretrained(folder or hub id)` reads the same folder; `publish_weights` uploads it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from proui_data.publish import PublishError, find_token, scrub

from .checkpoint import CheckpointError, damaged
from .config import TrainConfig, config_from_dict

CONFIG_KEY = "proui_config"
WEIGHTS = "model.safetensors"


def weights_path(path: str | Path) -> Path | None:
    """The weights file of a release (the file itself, or a folder holding model.safetensors and no
    training checkpoint); None when `path` is not a release."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        return p
    if p.is_dir() and (p / WEIGHTS).is_file() and not (p / "state.json").exists() and not (p / "latest").exists():
        return p / WEIGHTS
    return None


def is_weights_file(path: str | Path) -> bool:
    return weights_path(path) is not None


def save_release(out_dir: str | Path, generator: nn.Module, cfg: TrainConfig, card: str = "",
                 extra: dict[str, Any] | None = None) -> Path:
    """Write `generator` (usually the EMA copy) as a release folder; `extra` (JSON-able) joins the metadata."""
    out = Path(out_dir)
    generator.save_pretrained(out)  # config.json and a generic card from the mixin
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    meta = {CONFIG_KEY: json.dumps(cfg.to_dict()), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    save_file(state, str(out / WEIGHTS), metadata=meta)
    if card:
        (out / "README.md").write_text(card, encoding="utf-8")
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a release's weights file."""
    file = weights_path(path)
    if file is None:
        raise FileNotFoundError(f"{path}: not a .safetensors file or a release folder holding {WEIGHTS}")
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (SafetensorError, OSError, ValueError) as e:
        raise damaged(file, e) from None


def recorded_template(path: str | Path) -> str | None:
    """The template (frame) a release's generator was trained in: its weights' metadata `template`, else the
    `template:` line of its card's front matter (releases made before the metadata had it); None if neither."""
    meta = read_metadata(path)
    if "template" in meta:
        return meta["template"]
    card = weights_path(path).parent / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else ""
    if not text.startswith("---\n") or "\n---" not in text[4:]:
        return None
    import yaml  # huggingface_hub's dependency, for its own cards

    return (yaml.safe_load(text[4:text.index("\n---", 4)]) or {}).get("template")


def load_weights_file(path: str | Path) -> tuple[TrainConfig, dict[str, torch.Tensor]]:
    """(training config, state dict) of a release."""
    meta = read_metadata(path)
    if CONFIG_KEY not in meta:
        raise CheckpointError(f"{path}: no {CONFIG_KEY!r} in the weights' metadata: not a proui release "
                              "(a bare from_pretrained folder loads with ProUIGAN.from_pretrained)")
    file = weights_path(path)
    try:
        return config_from_dict(meta[CONFIG_KEY]), load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise damaged(file, e) from None


def publish_weights(folder: str | Path, repo_id: str, *, dry_run: str | Path | None = None,
                    private: bool = False) -> str:
    """Upload a release folder to the Hub model repo `repo_id` (`HF_ENDPOINT`; token from HF_TOKEN or the
    login cache, never shown), or copy what would be uploaded into `dry_run`. Returns where it went."""
    folder = Path(folder)
    if weights_path(folder) is None or not (folder / "config.json").is_file():
        raise PublishError(f"{folder}: not a release folder (config.json + {WEIGHTS})")
    if dry_run is not None:
        shutil.copytree(folder, dry_run, dirs_exist_ok=True)
        return str(dry_run)
    from huggingface_hub import HfApi, constants

    token = find_token()
    if not token:
        raise PublishError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (or use --dry-run DIR)")
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    try:
        api = HfApi(endpoint=endpoint, token=token)
        api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                 commit_message="proui-train publish")
        return str(getattr(info, "commit_url", info))
    except Exception as e:  # noqa: BLE001 - every library error is re-raised without the token
        raise PublishError(scrub(f"publishing to {repo_id} at {endpoint} failed: {type(e).__name__}: {e}",
                                 token)) from None
