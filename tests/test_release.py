"""The released generator in weights/: it loads every documented way and reproduces the figures its weights
file records, on the embedded demo photos and on a fixed slice of the FSRNet CelebA set."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from proui_train.evaluate import evaluate
from proui_train.models import ProUIGAN
from proui_train.release import read_metadata
from proui_train.runtime import load_generator

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
RELEASE = WEIGHTS / "proui-celeba-gpu"  # the PSNR phase
RELEASE_GAN = WEIGHTS / "proui-celeba-gan-gpu"  # with the adversarial phase
# trained in the FSRNet sets' frame on clean thumbnails, for the FSRNet comparison
RELEASE_FSRNET = WEIGHTS / "proui-celeba-fsrnet-cpu"
ALL = pytest.mark.parametrize("release", [RELEASE, RELEASE_GAN, RELEASE_FSRNET], ids=["psnr", "gan", "fsrnet-frame"])


@ALL
def test_release_is_small_and_loads_three_ways(release):
    files = {p.name: p.stat().st_size for p in release.iterdir()}
    assert set(files) == {"README.md", "config.json", "model.safetensors"}
    assert files["model.safetensors"] <= 6 * 2**20
    meta = read_metadata(release)
    assert meta["weights"] == "ema" and meta["step"] > 0
    lr = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        outs = [m(lr)["final"] for m in (load_generator(release), load_generator(release / "model.safetensors"),
                                         ProUIGAN.from_pretrained(str(release)))]
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("release", [RELEASE, RELEASE_GAN], ids=["psnr", "gan"])
def test_release_reproduces_its_recorded_demo_metrics(demo_store, release):
    recorded = read_metadata(release)["check"]["demo_val"]
    got = evaluate(str(release), None, None, demo_store, split="val", device="cpu", identity=False)["store/val"]
    for k in ("psnr_y", "ssim_y", "psnr_y_in", "psnr_y_out"):
        assert got[k] == pytest.approx(recorded[k], abs=1e-4), k


@ALL
def test_release_reproduces_its_recorded_fsrnet_slice(shared_data, release):
    recorded = read_metadata(release)["check"]["fsrnet_celeba_first64"]
    got = evaluate(str(release), None, str(shared_data / "benchmark" / "fsrnet"), None, device="cpu",
                   identity=False, limit=64)["celeba"]
    for k in ("psnr_y", "ssim_y"):
        assert got[k] == pytest.approx(recorded[k], abs=1e-4), k
