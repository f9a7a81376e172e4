"""Pro-UIGAN generator, cross-modal attention and discriminators (CPU, seeded)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from proui_train.losses import generator_loss, hr_pyramid  # noqa: E402
from proui_train.models import (  # noqa: E402
    STAGE_LANDMARKS,
    CrossModalAttention,
    ProUIGAN,
    ProUIGANConfig,
    count_parameters,
    crop_patches,
    global_discriminator,
    local_discriminator,
)
from proui_train.models.pro_uigan import cross_modal_attention  # noqa: E402

# Narrow widths keep CPU tests fast; the structure (stages, attention, priors) is the default one.
SMALL = dict(channels=32, attn_channels=16, up_channels=(32, 16, 16, 8), prior_channels=8, res_blocks=1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_stage_landmarks_are_the_reference_subsets():
    s1, s2, s3 = STAGE_LANDMARKS
    assert s1 == (36, 39, 42, 45, 30, 48, 54)
    assert len(s2) == 42 and len(set(s2)) == 42
    assert set(s2) == {36, 39, 42, 45, 27, 28, 29, 30, 48, 54} | set(range(17)) | set(range(17, 27)) | set(
        range(60, 65)
    )
    assert s3 == tuple(range(68))
    assert set(s1) <= set(s2) <= set(s3)


def test_generator_shapes_through_every_stage():
    model = ProUIGAN()
    lr = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        outputs = model(lr)
    assert len(outputs["stages"]) == 3
    for stage, size, n in zip(outputs["stages"], (16, 32, 64), (7, 42, 68)):
        assert stage["face"].shape == (2, 3, size, size)
        assert stage["heatmaps"].shape == (2, n, size, size)
        assert stage["prior"].shape == (2, n, size, size)
        assert stage["out"].shape == (2, 3, 2 * size, 2 * size)
        assert stage["face"].abs().max() <= 1 and stage["out"].abs().max() <= 1  # tanh
        assert 0 <= stage["heatmaps"].min() and stage["heatmaps"].max() <= 1  # sigmoid
        assert 0 <= stage["prior"].min() and stage["prior"].max() <= 1
    assert outputs["final"] is outputs["stages"][-1]["out"]
    assert outputs["final"].shape == (2, 3, 128, 128)


def test_generator_rejects_wrong_input():
    with pytest.raises(ValueError, match=r"\(B, 3, 16, 16\)"):
        ProUIGAN(ProUIGANConfig(**SMALL))(torch.zeros(1, 3, 32, 32))


def test_parameter_counts_match_the_reference():
    model = ProUIGAN()
    counts = model.parameter_counts()
    without_priors = counts["total"] - sum(v for k, v in counts.items() if k.endswith("/prior"))
    # Released generator: 1,197,343, of which 3 x 2,112 sit in 1x1 convs its forward never calls.
    assert without_priors == 1_197_343 - 3 * 2_112
    assert 1_150_000 < without_priors < 1_250_000
    assert 1_250_000 < counts["total"] < 1_350_000  # plus ~0.12 M in the learned prior estimators
    assert counts["total"] == count_parameters(model)
    # Stage 1 has the fewest landmarks and the 3x3 tail; every stage grows.
    per_stage = [sum(v for k, v in counts.items() if k.startswith(f"stage{s}/")) for s in (1, 2, 3)]
    assert per_stage[0] < per_stage[1] < per_stage[2]


def test_config_validation():
    with pytest.raises(ValueError, match="norm"):
        ProUIGANConfig(norm="layer")
    with pytest.raises(ValueError, match="multiple of heads"):
        ProUIGANConfig(heads=3)
    with pytest.raises(ValueError, match="prior"):
        ProUIGANConfig(prior="dlib")
    with pytest.raises(ValueError, match="0..67"):
        ProUIGANConfig(stage_landmarks=((1, 2), (3, 70), (5,)))
    with pytest.raises(ValueError, match="heatmap_estimator"):
        ProUIGAN(ProUIGANConfig(prior="fan", **SMALL))


# ---- cross-modal attention ------------------------------------------------------------------------------------


def _attention_inputs(batch=2, landmarks=7, size=8):
    face = torch.rand(batch, 3, size, size) * 2 - 1
    heatmaps = torch.rand(batch, landmarks, size, size)
    return face, heatmaps


def _by_hand(module: CrossModalAttention, face, heatmaps, heads=1, scale=1.0, symmetric=False):
    """The reference's computation with bmm on (B, C, N) maps, per head."""
    f = module.face_branch(face)
    lm = module.landmark_branch(heatmaps)
    q, k = module.query(f).flatten(2), module.key(lm).flatten(2)  # (B, C, N)
    vf, vl = module.face_value(f).flatten(2), module.landmark_value(lm).flatten(2)
    b, c, n = q.shape
    d = c // heads
    attn, face_out, landmark_out = [], [], []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        s = torch.softmax(scale * torch.bmm(q[:, sl].transpose(1, 2), k[:, sl]), dim=-1)  # (B, N, N) = Q^T K
        attn.append(s)
        face_out.append(torch.bmm(vl[:, sl], s.transpose(1, 2)))  # (B, d, N): sum_j S[i, j] v_l[:, j]
        if symmetric:
            s_l = torch.softmax(scale * torch.bmm(k[:, sl].transpose(1, 2), q[:, sl]), dim=-1)
            landmark_out.append(torch.bmm(vf[:, sl], s_l.transpose(1, 2)))
        else:
            landmark_out.append(torch.bmm(vf[:, sl], s))  # (B, d, N): sum_i S[i, j] v_f[:, i]
    hw = face.shape[-2:]
    face_feat = torch.cat(face_out, 1).reshape(b, c, *hw) + q.reshape(b, c, *hw)
    landmark_feat = torch.cat(landmark_out, 1).reshape(b, c, *hw) + k.reshape(b, c, *hw)
    return module.face_head(face_feat), torch.sigmoid(module.heatmap_head(landmark_feat)), torch.stack(attn, 1)


def test_attention_rows_sum_to_one_and_match_softmax_qt_k_by_hand():
    module = CrossModalAttention(7).eval()
    face, heatmaps = _attention_inputs()
    with torch.no_grad():
        refined_face, refined_heatmaps, attn = module(face, heatmaps, return_attention=True)
        want_face, want_heatmaps, want_attn = _by_hand(module, face, heatmaps)
    assert attn.shape == (2, 1, 64, 64)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 1, 64))
    torch.testing.assert_close(attn, want_attn)
    torch.testing.assert_close(refined_face, want_face)
    torch.testing.assert_close(refined_heatmaps, want_heatmaps)
    # Queries come from the face and keys from the landmarks: the swapped matrix is a different one.
    assert not torch.allclose(attn, want_attn.transpose(-1, -2), atol=1e-4)


@pytest.mark.parametrize("symmetric", [False, True])
def test_attention_heads_scaling_and_symmetric_variant_by_hand(symmetric):
    module = CrossModalAttention(5, channels=16, attn_channels=8, heads=2, scale=True, symmetric=symmetric).eval()
    face, heatmaps = _attention_inputs(landmarks=5, size=4)
    with torch.no_grad():
        got = module(face, heatmaps, return_attention=True)
        want = _by_hand(module, face, heatmaps, heads=2, scale=1 / 2.0, symmetric=symmetric)  # d = 4
    assert got[2].shape == (2, 2, 16, 16)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_attention_depends_on_landmarks_through_keys():
    module = CrossModalAttention(7).eval()
    face, heatmaps = _attention_inputs()
    with torch.no_grad():
        _, _, attn = module(face, heatmaps, return_attention=True)
        moved = heatmaps.roll(shifts=2, dims=-1)  # only the landmark input changes
        face2, _, attn2 = module(face, moved, return_attention=True)
        _, _, attn3 = module(face.flip(-1), heatmaps, return_attention=True)  # only the face changes
    assert (attn - attn2).abs().max() > 1e-3
    assert (attn - attn3).abs().max() > 1e-3
    torch.testing.assert_close(attn2.sum(-1), torch.ones_like(attn2.sum(-1)))


def test_fused_attention_backward_matches_autograd():
    g = torch.Generator().manual_seed(1)
    q, k, vf, vl = (torch.randn(2, 2, 9, 3, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(4))
    assert torch.autograd.gradcheck(lambda *t: cross_modal_attention(*t, scale=0.7)[:2], (q, k, vf, vl))
    # and against the plain formula in float32
    inputs = [t.detach().float().requires_grad_() for t in (q, k, vf, vl)]
    face_t, landmark_t, _ = cross_modal_attention(*inputs)
    (face_t.sin().sum() + landmark_t.cos().sum()).backward()
    fused = [t.grad for t in inputs]
    plain_inputs = [t.detach().float().requires_grad_() for t in (q, k, vf, vl)]
    pq, pk, pvf, pvl = plain_inputs
    s = torch.softmax(pq @ pk.transpose(-1, -2), dim=-1)
    ((s @ pvl).sin().sum() + (s.transpose(-1, -2) @ pvf).cos().sum()).backward()
    for a, b in zip(fused, plain_inputs):
        torch.testing.assert_close(a, b.grad)


def test_channels_last_gives_the_same_outputs_and_gradients():
    model = ProUIGAN(ProUIGANConfig(**SMALL)).eval()
    lr = torch.rand(1, 3, 16, 16) * 2 - 1
    out = model(lr)["final"]
    out.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model = model.to(memory_format=torch.channels_last)
    out_cl = model(lr.contiguous(memory_format=torch.channels_last))["final"]
    out_cl.square().mean().backward()
    torch.testing.assert_close(out_cl, out, atol=1e-5, rtol=1e-4)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-3)


def test_bfloat16_autocast_and_gradients_reach_stage_one():
    model = ProUIGAN(ProUIGANConfig(input_size=8, **SMALL))
    lr = torch.rand(2, 3, 8, 8) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(lr)
        loss = outputs["final"].float().square().mean()  # only the final output
    assert outputs["final"].dtype == torch.bfloat16
    loss.backward()
    for part in ("prior", "refine", "upsample"):  # through stages 3 and 2 back to the first stage
        grads = [p.grad for p in getattr(model.stages[0], part).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), part
        assert sum(g.abs().sum() for g in grads) > 0, part


# ---- priors ------------------------------------------------------------------------------------------------------


class ChannelIndexEstimator(nn.Module):
    """A deterministic stand-in for FAN: channel c of every map holds c / 100; records its input size."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(()))  # would leak into the generator if it were registered
        self.seen: list[tuple[int, ...]] = []

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(faces.shape))
        levels = torch.arange(68, dtype=faces.dtype) / 100
        return levels.view(1, 68, 1, 1).expand(faces.shape[0], 68, 64, 64) + self.bias


def test_fan_prior_selects_and_resizes_the_stage_landmarks():
    estimator = ChannelIndexEstimator()
    model = ProUIGAN(ProUIGANConfig(prior="fan", **SMALL), heatmap_estimator=estimator)
    with torch.no_grad():
        outputs = model(torch.zeros(2, 3, 16, 16))
    assert estimator.seen == [(2, 3, 256, 256)] * 3
    for stage, landmarks, size in zip(outputs["stages"], STAGE_LANDMARKS, (16, 32, 64)):
        want = (torch.tensor(landmarks, dtype=torch.float32) / 100).view(1, -1, 1, 1).expand(2, -1, size, size)
        torch.testing.assert_close(stage["prior"], want)
    # The estimator stays outside the generator's parameters and state dict.
    assert all(p is not estimator.bias for p in model.parameters())
    assert not [k for k in model.state_dict() if ".prior." in k]


def test_fan_prior_rejects_wrong_estimator_output():
    model = ProUIGAN(ProUIGANConfig(prior="fan", **SMALL), heatmap_estimator=lambda x: x[:, :1])
    with pytest.raises(ValueError, match=r"\(B, 68, h, w\)"):
        model(torch.zeros(1, 3, 16, 16))


# ---- discriminators ------------------------------------------------------------------------------------------


def test_discriminator_outputs_8x8_patches():
    d_global, d_local = global_discriminator(), local_discriminator()
    assert d_global(torch.zeros(2, 3, 128, 128)).shape == (2, 1, 8, 8)
    assert d_global.output_shape(128, 128) == (1, 8, 8)
    assert d_local(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 8, 8)
    assert d_local.output_shape(64, 64) == (1, 8, 8)
    # Conv weights + biases and BN scale/shift per block, by hand: (3*9+1)*64 + (64*9+1)*64 + 2*64 + ...
    widths, total, c_in = (64, 128, 256, 512), 0, 3
    for i, c in enumerate(widths):
        total += (c_in * 9 + 1) * c + (c * 9 + 1) * c + 2 * c * (2 if i else 1)
        c_in = c
    total += 512 * 9 + 1
    assert count_parameters(d_global) == total


def test_crop_patches_matches_slicing_and_passes_gradients():
    images = torch.rand(2, 3, 128, 128, requires_grad=True)
    top_left = torch.tensor([[10, 20], [64, 0]])  # (x, y)
    patches = crop_patches(images, top_left, 64)
    assert patches.shape == (2, 3, 64, 64)
    torch.testing.assert_close(patches[0], images[0, :, 20:84, 10:74])
    torch.testing.assert_close(patches[1], images[1, :, 0:64, 64:128])
    patches.sum().backward()
    assert images.grad.sum() == 2 * 3 * 64 * 64
    with pytest.raises(ValueError, match="leave"):
        crop_patches(images, torch.tensor([[100, 0], [0, 0]]), 64)


# ---- end to end ------------------------------------------------------------------------------------------------


def _smooth_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    low = torch.rand(n, 3, 4, 4, generator=generator) * 2 - 1
    return F.interpolate(low, size=size, mode="bicubic", align_corners=False).clamp(-1, 1)


def _render(landmarks: torch.Tensor, size: int, hr_size: int, sigma: float = 1.0) -> torch.Tensor:
    """(B, K, 2) HR-pixel landmarks -> (B, K, size, size) Gaussians, peak 1 (the store's geometry)."""
    q = (landmarks + 0.5) * size / hr_size - 0.5
    grid = torch.arange(size, dtype=torch.float32)
    gx = torch.exp(-((grid - q[..., 0:1]) ** 2) / (2 * sigma**2))
    gy = torch.exp(-((grid - q[..., 1:2]) ** 2) / (2 * sigma**2))
    return gy[..., :, None] * gx[..., None, :]


def test_tiny_overfit_total_loss_drops_5x():
    # The 64x64 attention of the full 16 -> 128 model costs ~5 s per step on one CPU core, so this runs the
    # same three-stage network and losses at 1/4 scale: 4x4 inputs, 32x32 outputs, 8 fixed pairs, 100 steps.
    g = torch.Generator().manual_seed(0)
    hr_size, lr_size = 32, 4
    hr = _smooth_images(8, hr_size, g)
    lr = F.interpolate(hr, size=lr_size, mode="area")
    landmarks = torch.rand(8, 68, 2, generator=g) * (hr_size * 0.75) + hr_size / 8
    sizes = (lr_size, 2 * lr_size, 4 * lr_size)
    targets = {
        "hr": hr_pyramid(hr, (*sizes, hr_size)),
        "heatmaps": {s: _render(landmarks[:, list(idx)], s, hr_size) for s, idx in zip(sizes, STAGE_LANDMARKS)},
    }
    model = ProUIGAN(ProUIGANConfig(input_size=lr_size, **SMALL))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    losses = []
    for _ in range(100):
        total, terms = generator_loss(model(lr), targets)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert set(terms) == {f"stage{s}/{t}" for s in (1, 2, 3) for t in ("face_l2", "out_l2", "heatmap", "prior", "tv")}
    assert losses[-1] < losses[0] / 5, losses[::10]
    assert terms["stage3/out_l2"] < 0.05  # the 32x32 output itself, not just the heatmaps
