"""The training step and what #12 asked the trainer to prove: EMA warm-up, the local discriminator, the
plain baseline, the bicubic residual, bf16 agreement, released weights, report figures."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from proui_train import train as train_mod
from proui_train.cli import main as cli
from proui_train.config import load_config
from proui_train.models import ProUIGAN, ProUIGANConfig
from proui_train.models.plain import PlainProgressive
from proui_train.release import load_weights_file, read_metadata
from proui_train.runtime import build_generator, load_generator
from proui_train.trainer import ProUIGANTrainer, ema_decay_at, ema_update, local_crop_corners


def _batch(b: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    hr = torch.rand(b, 3, 128, 128, generator=g) * 2 - 1
    lr = F.interpolate(hr, size=16, mode="area")
    landmarks = 30 + torch.rand(b, 68, 2, generator=g) * 68
    mask = torch.zeros(b, 1, 128, 128)
    mask[0, :, 80:110, 10:40] = 1.0  # sample 0 occluded low left, sample 1 not at all
    return {"hr": hr, "lr_occluded": lr, "landmarks": landmarks, "occlusion_mask": mask}


def test_ema_warmup_follows_the_formula_and_update_is_a_lerp():
    assert ema_decay_at(0, 0.999, True) == pytest.approx(0.1)
    assert ema_decay_at(90, 0.999, True) == pytest.approx(91 / 100)
    assert ema_decay_at(100_000, 0.999, True) == 0.999
    assert ema_decay_at(0, 0.999, False) == 0.999
    # after 200 warm steps the EMA holds almost nothing of the initial weights (0.999**200 = 82 % without)
    init = np.prod([ema_decay_at(t, 0.999, True) for t in range(200)])
    assert init < 1e-3
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in a.parameters()]
    ema_update(a, b, 0.75)
    for p, q, r in zip(a.parameters(), b.parameters(), before):
        torch.testing.assert_close(p, 0.75 * r + 0.25 * q.detach())


def test_local_crops_centre_on_the_occlusion_and_stay_inside():
    mask = torch.zeros(3, 1, 128, 128)
    mask[0, :, 80:110, 10:40] = 1  # centroid (24.5, 94.5)
    mask[1, :, 0:4, 120:128] = 1  # in a corner: the crop is pushed back inside
    corners = local_crop_corners(mask, 3)
    # centroid (24.5, 94.5) - 31.5 = (-7, 63), clamped to x = 0; the corner mask's crop is pushed inside
    assert corners.tolist() == [[0, 63], [64, 0], [32, 32]]
    assert corners.min() >= 0 and corners.max() <= 64


def test_train_step_with_local_discriminator_updates_both_discriminators():
    cfg = load_config(None, sets=["loss.local_adversarial=1e-3", "loss.mask_weight=1.0", "data.flip=true"])
    torch.manual_seed(0)
    trainer = ProUIGANTrainer(cfg, torch.device("cpu"))
    assert trainer.local_discriminator is not None
    d_before = [p.detach().clone() for p in trainer.local_discriminator.parameters()]
    g_before = [p.detach().clone() for p in trainer.generator.parameters()]
    losses = trainer.train_step(_batch(), step=0, aug_rng=torch.Generator().manual_seed(1))
    assert losses is not None and {"g", "d", "adversarial", "local_adversarial", "stage3/out_l2"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, p) for a, p in zip(d_before, trainer.local_discriminator.parameters()))
    assert any(not torch.equal(a, p) for a, p in zip(g_before, trainer.generator.parameters()))
    state = trainer.state_dict()
    assert "local_discriminator" in state and state["inference_weights"] == "ema"


def test_mask_weight_raises_the_pixel_loss_only_when_the_occlusion_is_wrong():
    from proui_train.losses import l2_loss

    pred, target = torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4, :] = 1
    pred[..., :4, :] = 1.0  # wrong inside the mask only: weight 1 + 2 = 3 on half the pixels
    assert l2_loss(pred, target, mask, 2.0).item() == pytest.approx(1.5)
    assert l2_loss(pred, target).item() == pytest.approx(0.5)
    assert l2_loss(pred, target, 1 - mask, 2.0).item() == pytest.approx(0.5)


def test_plain_baseline_matches_capacity_and_output_layout():
    pro, plain = ProUIGAN(), PlainProgressive()
    n_pro, n_plain = pro.parameter_counts()["total"], plain.parameter_counts()["total"]
    assert abs(n_plain - n_pro) / n_pro < 0.05
    out = plain(torch.zeros(2, 3, 16, 16))
    assert out["final"].shape == (2, 3, 128, 128)
    assert [s["out"].shape[-1] for s in out["stages"]] == [32, 64, 128] and "heatmaps" not in out["stages"][0]
    cfg = load_config(None, sets=['model.arch="plain"'])
    assert isinstance(build_generator(cfg), PlainProgressive)
    losses = ProUIGANTrainer(cfg, torch.device("cpu")).train_step(_batch(), step=0)
    assert losses is not None and not any("heatmap" in k or "prior" in k for k in losses)


def test_residual_stages_start_from_bicubic():
    torch.manual_seed(0)
    g = ProUIGAN(ProUIGANConfig(residual=True)).eval()
    for stage in g.stages:  # silence every correction: the output must be bicubic x2 three times
        torch.nn.init.zeros_(stage.upsample.tail[-2].weight)
        torch.nn.init.zeros_(stage.upsample.tail[-2].bias)
    lr = torch.rand(1, 3, 16, 16) * 2 - 1
    expected = lr
    for _ in range(3):
        expected = F.interpolate(expected, scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(g(lr)["final"], expected)


def test_reference_upsampling_aligns_corners():
    g = ProUIGAN()
    assert g.config.align_corners and g.stages[0].upsample.align_corners
    x = torch.arange(4.0).view(1, 1, 2, 2)
    # align_corners=True keeps the corner values exactly (False would blend them)
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    assert up[0, 0, 0, 0] == 0 and up[0, 0, -1, -1] == 3


def test_bf16_generator_agrees_with_fp32():
    torch.manual_seed(0)
    g = ProUIGAN(ProUIGANConfig(residual=True)).eval()
    lr = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        ref = g(lr)["final"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = g(lr)["final"].float()
    # bf16 keeps 8 bits of mantissa: through ~40 layers outputs in [-1, 1] stay within 0.05 (6 grey levels)
    assert (low - ref).abs().max().item() < 0.05
    assert (low - ref).abs().mean().item() < 0.01


def test_release_round_trip_and_from_pretrained(demo_store, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, {"data.store": demo_store, "run_dir": str(run), "steps": 2, "data.batch_size": 2,
                             "val_every": 2, "log_every": 1, "image_every": 0, "model.residual": True})
    train_mod.train(cfg, progress=False)
    rel = tmp_path / "release"
    r = CliRunner().invoke(cli, ["release", str(run), "--out", str(rel)])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in rel.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert read_metadata(rel)["step"] == 2 and read_metadata(rel)["template"] == "celeba"  # its store's frame
    cfg_back, state = load_weights_file(rel / "model.safetensors")
    assert cfg_back.model.residual is True
    lr = torch.rand(1, 3, 16, 16) * 2 - 1
    from_run, from_file = load_generator(run), load_generator(rel / "model.safetensors")
    from_hub_layout = ProUIGAN.from_pretrained(str(rel))
    with torch.no_grad():
        a, b, c = (m(lr)["final"] for m in (from_run, from_file, from_hub_layout))
    assert torch.equal(a, b) and torch.equal(a, c)
    # a weights file is released again with a card and figures: same weights, its metadata kept
    card, figures = tmp_path / "card.md", tmp_path / "check.json"
    card.write_text("# a card\n")
    figures.write_text(json.dumps({"demo_val": {"psnr_y": 1.5}}))
    again = tmp_path / "again"
    r = CliRunner().invoke(cli, ["release", str(rel / "model.safetensors"), "--out", str(again), "--card", str(card),
                                 "--check", str(figures)])
    assert r.exit_code == 0, r.output
    meta = read_metadata(again)
    assert meta["step"] == 2 and meta["template"] == "celeba" and meta["check"] == {"demo_val": {"psnr_y": 1.5}}
    assert (again / "README.md").read_text() == "# a card\n"
    with torch.no_grad():
        assert torch.equal(load_generator(again)(lr)["final"], a)
    # eval and infer take the file as --checkpoint
    out = tmp_path / "m.json"
    r = CliRunner().invoke(cli, ["eval", "--checkpoint", str(rel / "model.safetensors"), "--data", demo_store,
                                 "--split", "val", "--out", str(out), "--no-identity"])
    assert r.exit_code == 0, r.output
    m = json.loads(out.read_text())["store/val"]
    assert np.isfinite(m["psnr_y"]) and "by_kind" in m


def test_report_draws_curves_and_grid(demo_store, tmp_path):
    run = tmp_path / "run"
    cfg = load_config(None, {"data.store": demo_store, "run_dir": str(run), "steps": 2, "data.batch_size": 2,
                             "val_every": 1, "log_every": 1, "image_every": 0})
    train_mod.train(cfg, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val/psnr_y" in x and "val_raw/psnr_y" in x for x in lines)
    r = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "r.png"), "--grid",
                                 str(tmp_path / "g.png"), "--n", "2"])
    assert r.exit_code == 0, r.output
    assert "bicubic:" in r.output
    import cv2

    assert cv2.imread(str(tmp_path / "r.png")) is not None
    assert cv2.imread(str(tmp_path / "g.png")).shape == (256, 128 * 4, 3)  # input | bicubic | run | truth


def test_gpu_benchmark_runs_tiny_on_cpu(demo_store, tmp_path):
    """benchmarks/gpu.py end to end at toy size, so the GPU script cannot rot between GPU sessions."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu.json"
    bench = root.parent / "shared" / "data" / "benchmark" / "fsrnet"
    cmd = [sys.executable, str(root / "benchmarks" / "gpu.py"), "--tiny", "--data", demo_store, "--out", str(out),
           "--run-dir", str(tmp_path / "runs"), "--releases", str(tmp_path / "releases")]
    cmd += ["--benchmark", str(bench)] if bench.is_dir() else []
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["eager_bf16"]["samples_per_s"] > 0 and 0 <= report["eager_bf16"]["loader_wait"] < 1
    # bf16 autocast changes the step's loss by well under 1 %
    assert report["precision"]["max_relative_difference"] < 0.01
    runs = report["runs"]["runs"]
    assert report["runs"]["steps"] == 2 and set(runs) == {"proui_s0", "plain_s0", "proui_gan_s0"}
    for name, run in runs.items():  # every run finished and left a weights file that rebuilds its network
        assert run["exit_code"] == 0 and run["steps"] == 2 and run["curve"][-1]["step"] == 2
        generator = load_generator(tmp_path / "releases" / f"{name}.safetensors")
        assert isinstance(generator, PlainProgressive if name.startswith("plain") else ProUIGAN)
    # only the GAN run trains a discriminator
    assert runs["proui_gan_s0"]["last_logged"]["loss/d"] > 0 and runs["proui_s0"]["last_logged"]["loss/d"] == 0
    if bench.is_dir():
        assert report["fsrnet"]["model"]["celeba"]["n"] == 8 and report["fsrnet"]["bicubic"]["celeba"]["n"] == 8
