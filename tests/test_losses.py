"""Pro-UIGAN losses and the torchvision-free VGG19 (CPU, seeded, random VGG weights)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from proui_train.losses import (  # noqa: E402
    StageLossWeights,
    generator_loss,
    gram_matrix,
    heatmap_loss,
    hr_pyramid,
    identity_loss,
    l2_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    make_targets,
    perceptual_loss,
    style_loss,
    total_variation,
)
from proui_train.models import STAGE_LANDMARKS  # noqa: E402
from proui_train.models.vgg import (  # noqa: E402
    EXPECTED_FILE,
    PERCEPTUAL_LAYER,
    STYLE_LAYERS,
    VGG19_LAYERS,
    VGGFeatureExtractor,
    load_vgg19_features,
    vgg19_features,
)

# torchvision's vgg19().features: conv layers sit at these indices (ReLU after each, max pools at 4, 9, 18, 27, 36).
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
TORCHVISION_CONV_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    """A randomly initialised VGG19 `features` state dict saved as .pth (float16 to keep the file at 40 MB)."""
    torch.manual_seed(123)
    state = {k: v.half() for k, v in vgg19_features().state_dict().items()}
    path = tmp_path_factory.mktemp("vgg") / "random_vgg19_features.pth"
    torch.save(state, path)
    return path, state


# ---- elementary terms ----------------------------------------------------------------------------------------


def test_pixel_and_heatmap_losses_zero_iff_equal():
    a = torch.rand(2, 3, 8, 8)
    b = a.clone()
    b[0, 1, 2, 3] += 0.5
    assert l2_loss(a, a) == 0 and heatmap_loss(a, a) == 0
    torch.testing.assert_close(l2_loss(a, b), torch.tensor(0.25 / a.numel()))
    assert heatmap_loss(a, b) > 0
    with pytest.raises(ValueError, match="heatmap shapes"):
        heatmap_loss(a, a[:, :2])


def test_total_variation_by_hand():
    assert total_variation(torch.full((2, 3, 16, 16), 0.7)) == 0
    x = torch.tensor([[0.0, 1.0], [3.0, 7.0]]).view(1, 1, 2, 2)
    # horizontal |1-0|, |7-3| -> mean 2.5; vertical |3-0|, |7-1| -> mean 4.5
    torch.testing.assert_close(total_variation(x), torch.tensor(7.0))


def test_gram_matrix_by_hand():
    features = torch.tensor([[1.0, 2.0, 3.0], [0.0, 1.0, -1.0]]).view(1, 2, 1, 3)  # C=2, H=1, W=3
    want = torch.tensor([[14.0, -1.0], [-1.0, 2.0]]) / (2 * 1 * 3)
    torch.testing.assert_close(gram_matrix(features), want.view(1, 2, 2))
    assert gram_matrix(features.half()).dtype == torch.float32


def test_style_and_perceptual_zero_iff_equal():
    feats = [torch.rand(2, 4, 8, 8), torch.rand(2, 8, 4, 4)]
    other = [f.clone() for f in feats]
    other[1][:, :, 0, 0] += 1.0
    assert style_loss(feats, feats) == 0 and perceptual_loss(feats, feats) == 0
    assert style_loss(feats, other) > 0 and perceptual_loss(feats, other) > 0
    # Gram matrices ignore where things are: a spatial permutation has zero style loss but not zero perceptual.
    shuffled = [f.flip(-1) for f in feats]
    assert style_loss(feats, shuffled) < 1e-6
    assert perceptual_loss(feats, shuffled) > 0


def test_lsgan_losses():
    ones, zeros = torch.ones(2, 1, 8, 8), torch.zeros(2, 1, 8, 8)
    assert lsgan_generator_loss(ones) == 0
    torch.testing.assert_close(lsgan_generator_loss(zeros), torch.tensor(1.0))
    torch.testing.assert_close(lsgan_generator_loss([zeros, zeros]), torch.tensor(2.0))  # global + local
    assert lsgan_discriminator_loss(ones, zeros) == 0
    torch.testing.assert_close(lsgan_discriminator_loss(zeros, ones), torch.tensor(1.0))
    torch.testing.assert_close(lsgan_discriminator_loss(ones * 0.5, ones * 0.5), torch.tensor(0.25))


def test_stage_loss_weights_are_the_reference_ones():
    w = StageLossWeights()
    assert w.face_l2 == (10, 1, 1) and w.out_l2 == (10, 1, 1) and w.heatmap == (1, 1, 1)
    assert w.tv == (0.1, 0.1, 0.01) and w.style == (10, 10, 1) and w.perceptual == (0.1, 0.01, 0.01)
    assert w.adversarial == 1e-3 and w.n_stages == 3
    with pytest.raises(ValueError, match="one value per stage"):
        StageLossWeights(tv=(0.1, 0.1))


def test_hr_pyramid_is_area_downsampling():
    hr = torch.rand(2, 3, 128, 128)
    pyramid = hr_pyramid(hr)
    assert sorted(pyramid) == [16, 32, 64, 128] and pyramid[128] is hr
    block_means = hr.view(2, 3, 16, 8, 16, 8).mean(dim=(3, 5))
    torch.testing.assert_close(pyramid[16], block_means)


# ---- generator_loss ------------------------------------------------------------------------------------------


def _targets(batch=2):
    hr = torch.rand(batch, 3, 128, 128) * 2 - 1
    heatmaps = {s: torch.rand(batch, len(idx), s, s) for s, idx in zip((16, 32, 64), STAGE_LANDMARKS)}
    return make_targets(hr, heatmaps)


def _perfect_outputs(targets):
    hr, heat = targets["hr"], targets["heatmaps"]
    stages = [
        {"face": hr[s].clone(), "out": hr[2 * s].clone(), "heatmaps": heat[s].clone(), "prior": heat[s].clone()}
        for s in (16, 32, 64)
    ]
    return {"stages": stages, "final": stages[-1]["out"]}


def test_generator_loss_of_perfect_outputs_is_only_tv():
    targets = _targets()
    total, terms = generator_loss(_perfect_outputs(targets), targets)
    assert set(terms) == {f"stage{s}/{t}" for s in (1, 2, 3) for t in ("face_l2", "out_l2", "heatmap", "prior", "tv")}
    for name, value in terms.items():
        assert (value > 0) if name.endswith("/tv") else (value == 0), name
    want = sum(w * total_variation(targets["hr"][s]) for w, s in zip(StageLossWeights().tv, (32, 64, 128)))
    torch.testing.assert_close(total, want)


def test_generator_loss_total_is_the_weighted_sum(vgg_weights):
    targets = _targets()
    outputs = _perfect_outputs(targets)
    for stage in outputs["stages"]:
        for key in stage:
            stage[key] = (stage[key] + 0.1 * torch.randn_like(stage[key])).requires_grad_()
    outputs["final"] = outputs["stages"][-1]["out"]
    vgg = VGGFeatureExtractor(vgg_weights[0])
    d_fake = torch.rand(2, 1, 8, 8)
    weights = StageLossWeights(prior=(0.0, 0.5, 0.5))
    total, terms = generator_loss(outputs, targets, weights, vgg=vgg, d_fake=d_fake)
    assert "stage1/prior" not in terms  # weight 0: skipped
    assert all(v > 0 and not v.requires_grad for v in terms.values())
    by_hand = weights.adversarial * terms["adversarial"]
    for s in (1, 2, 3):
        for name in ("face_l2", "out_l2", "heatmap", "prior", "tv", "style", "perceptual"):
            key = f"stage{s}/{name}"
            if key in terms:
                by_hand = by_hand + getattr(weights, name)[s - 1] * terms[key]
    torch.testing.assert_close(total, by_hand)
    total.backward()
    grads = {(s, k): t.grad for s, st in enumerate(outputs["stages"], 1) for k, t in st.items()}
    assert grads.pop((1, "prior")) is None  # its weight is 0
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())
    # Perceptual and style vanish on perfect outputs, and the reference's perceptual term is per image pair.
    _, perfect = generator_loss(_perfect_outputs(targets), targets, vgg=vgg)
    assert all(perfect[f"stage{s}/{n}"] < 1e-6 for s in (1, 2, 3) for n in ("style", "perceptual"))


def test_identity_term_is_one_minus_the_descriptor_cosine():
    """With a descriptor that is a fixed linear map of the face, the term is 1 - cosine by hand, 0 for the HR
    itself, reaches the output only (the HR's descriptor is constant), and generator_loss adds it with its weight
    only when a descriptor is given."""
    project = torch.randn(3 * 128 * 128, 16)
    descriptor = lambda faces: faces.flatten(1) @ project  # noqa: E731
    hr = torch.rand(2, 3, 128, 128) * 2 - 1
    out = (hr + 0.3 * torch.randn_like(hr)).requires_grad_()
    a, b = descriptor(out.detach()), descriptor(hr)
    want = (1 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean()
    torch.testing.assert_close(identity_loss(descriptor, out, hr), want)
    assert identity_loss(descriptor, hr, hr).abs() < 1e-6
    identity_loss(descriptor, out, hr).backward()
    assert out.grad.abs().sum() > 0
    targets = _targets()
    outputs = _perfect_outputs(targets)
    _, without = generator_loss(outputs, targets, StageLossWeights(identity=2.0))
    total, terms = generator_loss(outputs, targets, StageLossWeights(identity=2.0), identity=descriptor)
    base, _ = generator_loss(outputs, targets, StageLossWeights())
    assert "identity" not in without and terms["identity"].abs() < 1e-6  # perfect outputs: the HR's descriptor
    _, off = generator_loss(outputs, targets, StageLossWeights(), identity=descriptor)
    assert "identity" not in off  # weight 0: skipped
    torch.testing.assert_close(total, base + 2.0 * terms["identity"])


def test_generator_loss_names_missing_targets():
    targets = _targets()
    del targets["heatmaps"][32]
    with pytest.raises(KeyError, match="32x32"):
        generator_loss(_perfect_outputs(_targets()), targets)


# ---- VGG19 -------------------------------------------------------------------------------------------------------


def test_vgg19_layout_matches_torchvision():
    features = vgg19_features()
    assert len(features) == 37 == len(VGG19_LAYERS)
    keys = list(features.state_dict())
    assert keys == [f"{i}.{p}" for i in TORCHVISION_CONV_INDICES for p in ("weight", "bias")]
    widths = [features[i].out_channels for i in TORCHVISION_CONV_INDICES]
    assert widths == list(TORCHVISION_CONV_WIDTHS)
    assert VGG19_LAYERS[PERCEPTUAL_LAYER] == "relu3_2" and PERCEPTUAL_LAYER == 13
    assert STYLE_LAYERS == (4, 9, 18) and [VGG19_LAYERS[i] for i in STYLE_LAYERS] == ["pool1", "pool2", "pool3"]


def test_vgg_loads_pth_safetensors_and_full_model_dicts(vgg_weights, tmp_path):
    from safetensors.torch import save_file

    path, state = vgg_weights
    features = load_vgg19_features(path)
    for k, v in features.state_dict().items():
        torch.testing.assert_close(v, state[k].float())
    assert not any(p.requires_grad for p in features.parameters())

    small = load_vgg19_features(path, num_layers=5)  # up to pool1
    assert len(small) == 5
    torch.testing.assert_close(small[2].weight, state["2.weight"].float())

    st_path = tmp_path / "vgg19_features.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st_path))
    torch.testing.assert_close(load_vgg19_features(st_path, 5)[0].weight, state["0.weight"].float())

    full = {f"features.{k}": v for k, v in state.items()} | {"classifier.0.weight": torch.zeros(4, 4)}
    full_path = tmp_path / "vgg19_full.pth"
    torch.save(full, full_path)
    torch.testing.assert_close(load_vgg19_features(full_path, 5)[0].bias, state["0.bias"].float())


def test_vgg_wrong_or_missing_weights_give_clear_errors(vgg_weights, tmp_path):
    path, state = vgg_weights
    renamed = {("conv." + k if k.startswith("0.") else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match=r"missing keys \['0.bias', '0.weight'\].*unexpected keys \['conv.0"):
        load_vgg19_features(tmp_path / "renamed.pth")
    reshaped = dict(state) | {"2.weight": torch.zeros(64, 64, 1, 1)}
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(ValueError, match=r"wrong shapes \[\('2.weight'"):
        load_vgg19_features(tmp_path / "reshaped.pth")
    with pytest.raises(FileNotFoundError, match=EXPECTED_FILE):
        VGGFeatureExtractor(tmp_path / "nope" / EXPECTED_FILE)


def test_vgg_feature_extractor_shapes_and_normalisation(vgg_weights):
    vgg = VGGFeatureExtractor.from_file(vgg_weights[0])
    assert vgg.layers == (4, 9, 13, 18) and len(vgg.features) == 19
    vgg.train()
    assert not vgg.training  # stays frozen
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        feats = vgg(images)
        assert {k: tuple(v.shape) for k, v in feats.items()} == {
            4: (2, 64, 16, 16),
            9: (2, 128, 8, 8),
            13: (2, 256, 8, 8),
            18: (2, 256, 4, 4),
        }
        # ImageNet standardisation of [0, 1] images, then the plain network.
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        torch.testing.assert_close(feats[13], vgg.features[:14](((images + 1) / 2 - mean) / std))
        assert list(vgg(images, layers=[4])) == [4]
    with pytest.raises(ValueError, match="not all among"):
        vgg(images, layers=[30])
