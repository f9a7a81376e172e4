"""VGG19 `features` for the style and perceptual losses, without torchvision.

`vgg19_features()` builds the same nn.Sequential as torchvision's `vgg19().features`, so its state-dict keys
(`0.weight`, `0.bias`, `2.weight`, ...) and layer indices match and torchvision's ImageNet checkpoint loads
as is. Nothing is downloaded: pass the path of a local file (`.pth`/`.pt` state dict, read with
`torch.load(weights_only=True)`, or `.safetensors`). A full `vgg19()` state dict (`features.0.weight`, ...,
`classifier.*`) is accepted too; only the `features` part is kept.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

# torchvision's ImageNet VGG19 (VGG19_Weights.IMAGENET1K_V1).
EXPECTED_FILE = "vgg19-dcbb9e9d.pth"
EXPECTED_URL = f"https://download.pytorch.org/models/{EXPECTED_FILE}"
# Configuration "E" of Simonyan & Zisserman: conv widths, "M" = 2x2 max pool.
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
)  # fmt: skip


def _layer_names() -> tuple[str, ...]:
    names, block, conv = [], 1, 1
    for v in VGG19_CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return tuple(names)


# VGG19_LAYERS[i] names features[i]: 'conv1_1', 'relu1_1', 'conv1_2', 'relu1_2', 'pool1', ...
VGG19_LAYERS: tuple[str, ...] = _layer_names()
# The reference's perceptual features are vgg19.features[:14], i.e. up to relu3_2.
PERCEPTUAL_LAYER = VGG19_LAYERS.index("relu3_2")  # 13
# The reference's style features are the ends of VGG16 blocks 1-3 (pool1, pool2, pool3); the VGG19 equivalents.
STYLE_LAYERS: tuple[int, ...] = tuple(VGG19_LAYERS.index(n) for n in ("pool1", "pool2", "pool3"))  # (4, 9, 18)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vgg19_features(num_layers: int | None = None) -> nn.Sequential:
    """torchvision-compatible `vgg19().features` (37 layers), optionally only its first `num_layers`."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG19_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            # Not in-place (torchvision's are): an in-place ReLU would overwrite a conv output we hand back.
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU()]
            c_in = int(v)
    return nn.Sequential(*layers[:num_layers])


def _missing_weights_message(path: Path) -> str:
    return (
        f"VGG19 weights not found at {path}. Expected torchvision's ImageNet VGG19 state dict ({EXPECTED_FILE}, "
        f"from {EXPECTED_URL}) or its `features` part, saved as .pth or .safetensors. The style and "
        "perceptual losses need it; train without them by passing vgg=None."
    )


def load_vgg19_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a VGG19 `features` state dict (keys '0.weight', ...) from .pth/.pt or .safetensors.

    A full vgg19 state dict is cut down to its `features.` entries. Raises FileNotFoundError naming the
    expected file when `path` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(_missing_weights_message(path))
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    if any(k.startswith("features.") for k in state):
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    return state


def load_vgg19_features(path: str | Path, num_layers: int | None = None) -> nn.Sequential:
    """VGG19 features with weights from `path`, frozen (requires_grad False) and in eval mode.

    The file must hold every conv of the full network with torchvision's shapes; a clear ValueError lists
    missing, unexpected or mis-shaped keys otherwise.
    """
    state = load_vgg19_state_dict(path)
    reference = vgg19_features().state_dict()
    missing = sorted(set(reference) - set(state), key=_key_order)
    unexpected = sorted(set(state) - set(reference))
    wrong_shape = [k for k in reference if k in state and tuple(state[k].shape) != tuple(reference[k].shape)]
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"{path} is not a torchvision VGG19 `features` state dict ({EXPECTED_FILE}): "
            f"missing keys {missing[:6]}{'...' if len(missing) > 6 else ''}, "
            f"unexpected keys {unexpected[:6]}{'...' if len(unexpected) > 6 else ''}, "
            f"wrong shapes {[(k, tuple(state[k].shape), tuple(reference[k].shape)) for k in wrong_shape[:4]]}"
        )
    features = vgg19_features(num_layers)
    kept = features.state_dict().keys()
    features.load_state_dict({k: state[k].float() for k in kept})
    features.requires_grad_(False)
    return features.eval()


def _key_order(key: str) -> tuple[int, str]:
    index, _, name = key.partition(".")
    return (int(index) if index.isdigit() else 10**6, name)


class VGGFeatureExtractor(nn.Module):
    """Frozen VGG19 features at chosen layer indices, for images in [-1, 1].

    `style_layers` and `perceptual_layers` say which layers the losses use (defaults: the VGG19 equivalents of
    the reference's choices). forward(images, layers) -> {index: (B, C_i, H_i, W_i)}, running the network only
    up to the deepest requested layer. With `normalize_input` (default) images are mapped to [0, 1] and
    standardised with the ImageNet mean/std the weights were trained with; the reference fed [-1, 1] images to
    VGG unnormalised.
    """

    def __init__(
        self,
        weights: str | Path,
        style_layers: Sequence[int] = STYLE_LAYERS,
        perceptual_layers: Sequence[int] = (PERCEPTUAL_LAYER,),
        normalize_input: bool = True,
    ) -> None:
        super().__init__()
        self.style_layers = tuple(style_layers)
        self.perceptual_layers = tuple(perceptual_layers)
        self.layers = tuple(sorted(set(self.style_layers) | set(self.perceptual_layers)))
        if not self.layers or self.layers[0] < 0 or self.layers[-1] >= len(VGG19_LAYERS):
            raise ValueError(f"layers must be indices into the {len(VGG19_LAYERS)} VGG19 layers, got {self.layers}")
        self.features = load_vgg19_features(weights, num_layers=self.layers[-1] + 1)
        self.normalize_input = normalize_input
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, weights: str | Path, **kwargs) -> VGGFeatureExtractor:
        """Same as the constructor: `VGGFeatureExtractor.from_file("vgg19-dcbb9e9d.pth")`."""
        return cls(weights, **kwargs)

    def train(self, mode: bool = True) -> VGGFeatureExtractor:
        return super().train(False)  # always frozen; no dropout or norm layers to switch anyway

    def forward(self, images: torch.Tensor, layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
        wanted = self.layers if layers is None else tuple(sorted(set(layers)))
        if not wanted or not set(wanted) <= set(self.layers):
            raise ValueError(f"layers {wanted} not all among the extractor's {self.layers}")
        x = images
        if self.normalize_input:
            x = ((x + 1) * 0.5 - self.mean) / self.std
        out: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(self.features[: wanted[-1] + 1]):
            x = layer(x)
            if i in wanted:
                out[i] = x
        return out
