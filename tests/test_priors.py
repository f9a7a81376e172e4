"""The prior branch's learning aids: the foreground-weighted heatmap loss, integral (soft-argmax) points, the
hourglass prior with coordinate channels, and the trainer's point targets."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from proui_train.config import load_config
from proui_train.evaluate import heatmaps_to_points
from proui_train.losses import LossConfig, heatmap_loss, point_loss, soft_argmax
from proui_train.models import ProUIGAN, ProUIGANConfig
from proui_train.models.pro_uigan import STAGE_LANDMARKS, HourglassPrior, coordinate_channels
from proui_train.targets import render_heatmaps_torch
from proui_train.trainer import ProUIGANTrainer, StageHeatmaps


def test_weighted_heatmap_loss_matches_the_weight_map_by_hand():
    target = torch.zeros(1, 1, 8, 8)
    target[0, 0, 4, 4] = 1.0
    target[0, 0, 4, 5] = 0.1  # below the level, but inside the 3x3 dilation of the peak
    pred = torch.full_like(target, 0.5)
    # foreground: the 3x3 neighbourhood of (4, 4) -> 9 pixels weigh 11, 55 weigh 1
    squared = (pred - target) ** 2
    weight = torch.ones_like(target)
    weight[0, 0, 3:6, 3:6] = 11.0
    assert heatmap_loss(pred, target, "weighted", 10.0) == pytest.approx(float((squared * weight).mean()))
    assert heatmap_loss(pred, target, "mse") == pytest.approx(float(squared.mean()))
    with pytest.raises(ValueError, match="heatmap loss kind"):
        heatmap_loss(pred, target, "wing")


def test_soft_argmax_finds_a_rendered_subpixel_point():
    hr_point = torch.tensor([[[47.3, 81.9], [10.0, 100.0]]])  # (1, 2, 2) in HR pixels
    maps = render_heatmaps_torch(hr_point, size=64, sigma=1.5)
    expected = (hr_point + 0.5) * 64 / 128 - 0.5
    assert torch.allclose(soft_argmax(maps), expected, atol=0.1)  # logits clamp flat near the peak
    # the evaluation's decoder agrees with the same point
    assert torch.allclose(heatmaps_to_points(maps), hr_point, atol=0.01)


def test_point_loss_is_the_mean_l1_over_known_points_and_reaches_the_maps():
    points = torch.tensor([[[20.0, 30.0], [float("nan"), float("nan")]]])
    maps = render_heatmaps_torch((points.nan_to_num(0) + 0.5) * 2 - 0.5 + 4, size=64, sigma=1.5)  # 2 px off in x, y
    maps.requires_grad_(True)
    loss = point_loss(maps, points)
    assert loss.item() == pytest.approx((2 + 2) / 2 / 64, abs=1e-3)  # only the known point counts
    loss.backward()
    assert maps.grad[0, 0].abs().sum() > 0 and maps.grad[0, 1].abs().sum() == 0


def test_coordinate_channels_and_hourglass_shapes():
    face = torch.zeros(2, 3, 16, 24)
    coords = coordinate_channels(face)
    assert coords.shape == (2, 2, 16, 24)
    assert coords[0, 0, 0, 0] == -1 and coords[0, 0, 0, -1] == 1 and coords[0, 1, -1, 0] == 1
    for size, landmarks in ((16, 7), (32, 42), (64, 68)):
        out = HourglassPrior(landmarks, size)(torch.rand(2, 3, size, size) * 2 - 1)
        assert out.shape == (2, landmarks, size, size) and 0 <= out.min() and out.max() <= 1


def test_hourglass_prior_sees_the_whole_face():
    """The heatmaps in one corner of a 64x64 face depend on the opposite corner's pixels (gradients, in float64:
    at initialisation the dependence is far below float32's resolution); the dilated prior's 19-pixel receptive
    field cannot reach."""
    def corner_gradient(prior_arch: str) -> float:
        torch.manual_seed(0)
        prior = ProUIGAN(ProUIGANConfig(prior_arch=prior_arch)).stages[2].prior.double().eval()
        face = (torch.rand(1, 3, 64, 64, dtype=torch.float64) * 2 - 1).requires_grad_(True)
        prior(face)[..., -8:, -8:].sum().backward()
        return float(face.grad[..., :8, :8].abs().max())

    assert corner_gradient("hourglass") > 0
    assert corner_gradient("dilated") == 0
    with pytest.raises(ValueError, match="prior_arch"):
        ProUIGANConfig(prior_arch="unet")


def test_stage_points_sit_on_the_rendered_peaks():
    landmarks = 20 + torch.rand(2, 68, 2) * 88
    stage = StageHeatmaps((1.0, 1.0, 1.5))
    maps, points = stage(landmarks), stage.points(landmarks)
    for size, index in zip((16, 32, 64), STAGE_LANDMARKS):
        peaks = (heatmaps_to_points(maps[size]) + 0.5) * size / 128 - 0.5  # decoded peaks, in the map's pixels
        assert torch.allclose(peaks, points[size], atol=1e-3)
        assert torch.allclose((points[size] + 0.5) * 128 / size - 0.5, landmarks[:, list(index)], atol=1e-4)


def test_train_step_reports_points_and_weighted_terms(demo_store):
    cfg = load_config(sets=["model.prior_arch=\"hourglass\"", "loss.heatmap_kind=\"weighted\"",
                            "loss.points=[1.0, 1.0, 1.0]", "optim.gan_start=100"], overrides={"data.store": demo_store})
    trainer = ProUIGANTrainer(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 128, 128, generator=g) * 2 - 1
    batch = {"hr": hr, "lr_occluded": F.interpolate(hr, size=16, mode="area"),
             "landmarks": 30 + torch.rand(2, 68, 2, generator=g) * 68}
    terms = trainer.train_step(batch, 0)
    assert {"stage1/points", "stage2/points", "stage3/points"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    with pytest.raises(ValueError, match="heatmap_kind"):
        dataclasses.replace(LossConfig(), heatmap_kind="l1")


def test_feature_matching_by_hand_and_in_the_gan_step():
    from proui_train.losses import feature_matching_loss
    from proui_train.models.discriminator import global_discriminator

    fake = [[torch.ones(1, 2, 4, 4), torch.zeros(1, 3, 2, 2)], [torch.full((1, 1, 2, 2), 3.0)]]
    real = [[torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 2, 2)], [torch.ones(1, 1, 2, 2)]]
    assert feature_matching_loss(fake, real).item() == pytest.approx((1 + 0) / 2 + 2)
    d = global_discriminator()
    images = torch.rand(2, 3, 128, 128)
    torch.manual_seed(1)
    scores, blocks = d(images, features=True)
    assert [b.shape[1:] for b in blocks] == [(64, 64, 64), (128, 32, 32), (256, 16, 16), (512, 8, 8)]

    cfg = load_config(sets=["optim.gan_start=0", "loss.feature_matching=1.0", "loss.local_adversarial=1e-3"])
    trainer = ProUIGANTrainer(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 128, 128, generator=g) * 2 - 1
    mask = torch.zeros(2, 1, 128, 128)
    mask[:, :, 70:100, 30:60] = 1
    batch = {"hr": hr, "lr_occluded": F.interpolate(hr, size=16, mode="area"),
             "landmarks": 30 + torch.rand(2, 68, 2, generator=g) * 68, "occlusion_mask": mask}
    before = [p.clone() for p in trainer.local_discriminator.parameters()]
    terms = trainer.train_step(batch, 0)
    assert terms["feature_matching"] > 0 and torch.isfinite(terms["feature_matching"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.local_discriminator.parameters()))


def test_hourglass_prior_starts_from_the_mean_training_shape(demo_store):
    """A fresh hourglass trainer's priors put every face's landmarks on the training split's mean shape: the
    decoded peaks of an arbitrary input are the mean landmarks (to the decoder's precision)."""
    import zarr

    from proui_train.trainer import mean_training_shape

    group = zarr.open_group(demo_store, mode="r")["train"]
    expected = group["landmarks"][:][group["valid"][:].astype(bool)].mean(0)
    cfg = load_config(sets=["model.prior_arch=\"hourglass\""], overrides={"data.store": demo_store})
    assert torch.allclose(mean_training_shape(cfg), torch.from_numpy(expected).float(), atol=1e-4)
    generator = ProUIGANTrainer(cfg, torch.device("cpu")).generator.eval()
    with torch.no_grad():
        stages = generator(torch.rand(2, 3, 16, 16) * 2 - 1)["stages"]
    for stage, index in zip(stages, STAGE_LANDMARKS):
        peaks = heatmaps_to_points(stage["prior"])
        # the head adds small logits at initialisation; the peaks stay within a pixel of the stage's grid
        scale = 128 / stage["prior"].shape[-1]
        assert (peaks - torch.from_numpy(expected[list(index)]).float()).abs().max() < scale


def test_mean_shape_logits_survive_loading_and_cost_no_graph_break():
    """The mean shape's logits are derived once: a fresh prior that loads the weights of one given a mean shape
    returns the same maps (the derived logits are not in the state dict, so the released layout is unchanged),
    and the forward traces as one graph (reading the sigma on the host broke it, and synced every CUDA step)."""
    torch.manual_seed(0)
    source = HourglassPrior(68, 32).eval()
    points = torch.rand(68, 2) * 100 + 14
    source.set_mean_shape(points, 1.0)
    loaded = HourglassPrior(68, 32).eval()
    assert "mean_logits" not in source.state_dict()
    face = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        before = loaded(face)
        loaded.load_state_dict(source.state_dict())
        assert not torch.allclose(before, loaded(face))
        assert torch.equal(loaded(face), source(face))
        peaks = heatmaps_to_points(loaded.mean_logits[None].sigmoid())[0]
    assert (peaks - points).abs().max() < 0.5  # the logits are the mean shape's, in HR pixels
    torch._dynamo.reset()
    assert torch._dynamo.explain(loaded)(face).graph_break_count == 0


def test_landmark_errors_per_stage_by_hand():
    from proui_train.evaluate import landmark_errors

    truth = torch.zeros(1, 68, 2).numpy()
    truth[0, :, 0] = torch.arange(68).numpy()
    truth[0, 45, 0] = 36 + 50.0  # outer eye corners 50 px apart
    points = {f"stage{s}/{kind}": torch.from_numpy(truth[:, list(index)]).clone()
              for s, index in enumerate(STAGE_LANDMARKS, 1) for kind in ("prior", "heatmaps")}
    points["stage1/prior"][..., 1] += 5.0  # every stage-1 prior point 5 px off: 0.1 of the eye distance
    errors = landmark_errors(points, truth)
    assert errors["nme/stage1/prior"].item() == pytest.approx(0.1)
    assert errors["nme/stage1/heatmaps"].item() == 0 and errors["nme"].item() == 0
    assert set(errors) == {"nme"} | {f"nme/stage{s}/{k}" for s in (1, 2, 3) for k in ("prior", "heatmaps")}
    assert landmark_errors({}, truth) == {}  # the plain network estimates no landmarks


def test_residual_heatmaps_start_at_the_prior_and_keep_the_released_layout():
    """With residual_heatmaps the refined maps are the prior's while the head's correction is zero; the head's
    weights keep the name the released generators store them under."""
    from proui_train.models.attention import CrossModalAttention

    attention = CrossModalAttention(7, residual_heatmaps=True).eval()
    torch.nn.init.zeros_(attention.heatmap_head[0].weight)
    torch.nn.init.zeros_(attention.heatmap_head[0].bias)
    prior = render_heatmaps_torch(30 + torch.rand(2, 7, 2) * 60, size=16, sigma=1.0).clamp(0.01, 0.99)
    _, refined = attention(torch.rand(2, 3, 16, 16) * 2 - 1, prior)
    assert torch.allclose(refined, prior, atol=1e-6)
    assert {"heatmap_head.0.weight", "heatmap_head.0.bias"} <= set(attention.state_dict())
