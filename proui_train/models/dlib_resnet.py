"""dlib's face-recognition ResNet (`dlib.face_recognition_model_v1`) as a differentiable torch module.

The weights are read straight from `dlib_face_recognition_resnet_model_v1.dat` (face_recognition_models),
dlib's own binary serialization of `anet_type` in dlib's examples/dnn_face_recognition_ex.cpp:

    loss_metric<fc_no_bias<128, avg_pool_everything<alevel0<alevel1<alevel2<alevel3<alevel4<
        max_pool<3,3,2,2, relu<affine<con<32,7,7,2,2, input_rgb_image_sized<150>>>>>>>>>>>>>

Conventions of dlib (dlib/dnn/layers.h, dlib/cuda/cpu_dlib.cpp) the port keeps:
- input: (rgb - mean) / 256, mean = the input layer's stored (122.782, 117.001, 104.298);
- con_ and pooling pad by size/2 at stride 1 and by 0 otherwise (the file stores the paddings; we check
  them); output size 1 + (n + 2 pad - k) // stride, like torch; con_ filters are (out, in, kh, kw) and
  correlate like torch's conv2d; no layer here pads a pooling window, so max/avg pooling is torch's;
- residual_down adds avg_pool<2,2,2,2>(x) to the block output with add_prev, whose output has the larger of
  the two sizes on every axis and sums the zero-padded inputs (top-left aligned). It matters twice:
  the skip has fewer channels at every ares_down but the last, and at alevel1 the block gives 3x3 while the
  pooled skip is 4x4, so its output is 4x4 (the block's last row and column are zeros) and alevel0 ends 2x2;
- fc_no_bias stores its matrix as (in, out); the descriptor is the raw fc output: loss_metric's to_label
  and compute_face_descriptor do not normalise it (its norm is near, not at, 1).

`face_chips` cuts dlib's 150x150 chip out of our aligned 128x128 faces with grid_sample (see there).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
CHIP_SIZE = 150
CHIP_PADDING = 0.25  # compute_face_descriptor's default padding for get_face_chip_details


# ------------------------------------------------------------------------------------------- the .dat file


@dataclass
class DlibLayer:
    """One computational layer of the file, input side first."""

    kind: str  # con | affine | relu | max_pool | avg_pool | add_prev | fc
    geometry: tuple[int, ...] = ()  # con/pools: (nr, nc, stride_y, stride_x, pad_y, pad_x); fc: (in, out)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # filters/biases, gamma/beta, weights


@dataclass
class DlibFaceResNetWeights:
    mean_rgb: np.ndarray  # (3,) float32, what the input layer subtracts before dividing by 256
    chip_size: tuple[int, int]  # (rows, cols) the input layer expects
    layers: list[DlibLayer]


class _Reader:
    """dlib's serialize.h formats: ints are a control byte (0x80 = negative, low 4 bits = byte count) and that
    many little-endian bytes; strings are an int length and the bytes; floats/doubles are float_details,
    mantissa then exponent as ints (value = mantissa * 2**exponent); bools are ASCII '0'/'1'; tensors
    (dlib/cuda/tensor.h) are version 2, num_samples, k, nr, nc, then little-endian float32 data."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"truncated at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if control & 0x70 or not 1 <= size <= 8:
            raise ValueError(f"no dlib integer at byte {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def string(self) -> str:
        return self._take(self.int()).decode("ascii")

    def peek_string(self) -> str:
        pos = self.pos
        try:
            return self.string()
        except (ValueError, UnicodeDecodeError):
            return ""
        finally:
            self.pos = pos

    def real(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return float(np.ldexp(float(mantissa), exponent)) if exponent < 32000 else float("nan")

    def bool(self) -> bool:
        c = self._take(1)
        if c not in (b"0", b"1"):
            raise ValueError(f"no dlib bool at byte {self.pos - 1}")
        return c == b"1"

    def version(self, allowed: tuple[int, ...], what: str) -> int:
        v = self.int()
        if v not in allowed:
            raise ValueError(f"{what} version {v}, expected one of {allowed}")
        return v

    def tensor(self) -> np.ndarray:
        self.version((2,), "tensor")
        shape = tuple(self.int() for _ in range(4))
        n = int(np.prod(shape))
        return np.frombuffer(self._take(4 * n), "<f4").reshape(shape)

    def alias_tensor(self) -> tuple[int, ...]:
        self.version((1,), "alias_tensor")
        return tuple(self.int() for _ in range(4))


def _split(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """dlib layers keep all parameters in one tensor; alias_tensors view consecutive slices of it."""
    flat, out, start = params.reshape(-1), [], 0
    for shape in shapes:
        n = int(np.prod(shape))
        out.append(flat[start : start + n].reshape(shape).copy())
        start += n
    if start != flat.size:
        raise ValueError(f"parameter tensor holds {flat.size} values, its views {start}")
    return out


def _read_layer(r: _Reader) -> DlibLayer:
    """A layer's `details` (dlib/dnn/layers.h serialize), for the layer kinds this network has."""
    name = r.string()
    if name in ("con_4", "con_5", "con_6"):
        params, n_filters = r.tensor(), r.int()
        geometry = tuple(r.int() for _ in range(6))  # nr, nc, stride_y, stride_x, padding_y, padding_x
        filters_shape, biases_shape = r.alias_tensor(), r.alias_tensor()
        [r.real() for _ in range(4)]  # learning-rate and weight-decay multipliers
        use_bias = r.bool() if name != "con_4" else True
        if name == "con_6":
            r.bool()  # use_relu: a fused relu, never set by this network's con
        if filters_shape[0] != n_filters:
            raise ValueError(f"con with {n_filters} filters stores {filters_shape}")
        shapes = (filters_shape, (n_filters,)) if use_bias else (filters_shape,)
        filters, *bias = _split(params, *shapes)
        biases = bias[0] if bias else np.zeros(n_filters, np.float32)
        return DlibLayer("con", geometry, {"filters": filters, "biases": biases})
    if name in ("affine_", "affine_2"):
        params, gamma_shape, beta_shape, mode = r.tensor(), r.alias_tensor(), r.alias_tensor(), r.int()
        if name == "affine_2" and r.bool():
            raise ValueError("a disabled affine layer")
        if mode != 0:  # CONV_MODE: one gamma/beta per channel
            raise ValueError(f"affine in mode {mode}, expected per-channel (0)")
        gamma, beta = _split(params, gamma_shape, beta_shape)
        return DlibLayer("affine", (), {"gamma": gamma.reshape(-1), "beta": beta.reshape(-1)})
    if name in ("relu_", "relu_2"):
        if name == "relu_2" and r.bool():
            raise ValueError("a disabled relu layer")
        return DlibLayer("relu")
    if name in ("max_pool_2", "avg_pool_2"):
        return DlibLayer(name[:-2], tuple(r.int() for _ in range(6)))
    if name == "add_prev_":
        return DlibLayer("add_prev")
    if name in ("fc_2", "fc_3"):
        n_out, n_in, params = r.int(), r.int(), r.tensor()
        weights_shape, _, bias_mode = r.alias_tensor(), r.alias_tensor(), r.int()
        [r.real() for _ in range(4)]
        if name == "fc_3":
            r.bool()
        if bias_mode != 1:  # FC_NO_BIAS
            raise ValueError("an fc layer with a bias (expected fc_no_bias)")
        (weights,) = _split(params, weights_shape)
        return DlibLayer("fc", (n_in, n_out), {"weights": weights.reshape(n_in, n_out)})
    raise ValueError(f"unexpected layer {name!r}")


def _parse(data: bytes) -> DlibFaceResNetWeights:
    r = _Reader(data)
    # add_loss_layer: version 1, the loss (loss_metric_2: margin, distance threshold), then the network.
    r.version((1,), "add_loss_layer")
    loss = r.string()
    if loss not in ("loss_metric_", "loss_metric_2"):
        raise ValueError(f"loss {loss!r}, expected loss_metric")
    if loss == "loss_metric_2":
        r.real(), r.real()
    # Every add_layer writes its version and then its subnetwork before its own layer, so the file holds all
    # wrapper versions (2: add_layer with details, 1: tag/skip, no data), outermost first, then the input
    # add_layer, then the layers from the input side up.
    wrappers, version = [], r.int()
    while not r.peek_string().startswith("input_"):
        if version not in (1, 2) or len(wrappers) > 10_000:
            raise ValueError(f"add_layer/tag/skip version {version} before byte {r.pos}")
        wrappers.append(version)
        version = r.int()
    if version not in (2, 3):
        raise ValueError(f"input add_layer version {version}, expected 2 or 3")
    input_version = version
    if r.string() != "input_rgb_image_sized":
        raise ValueError("input layer is not input_rgb_image_sized")
    mean_rgb = np.array([r.real() for _ in range(3)], np.float32)
    chip_size = (r.int(), r.int())

    def layer_then_state(version: int) -> DlibLayer:
        layer = _read_layer(r)
        [r.bool() for _ in range(3)]  # setup called, gradient stale, output/gradient disabled
        [r.tensor() for _ in range(3)]  # x_grad, cached_output, params_grad: training state, empty here
        if version == 3:
            r.int()  # sample expansion factor
        return layer

    layers = [layer_then_state(input_version)]
    layers += [layer_then_state(2) for v in wrappers if v == 2]
    if r.pos != len(data):
        raise ValueError(f"{len(data) - r.pos} bytes left after the network")
    return DlibFaceResNetWeights(mean_rgb, chip_size, layers)


def read_dlib_face_resnet(path: str | Path) -> DlibFaceResNetWeights:
    """Input mean and every layer (parameters in order) of dlib_face_recognition_resnet_model_v1.dat."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeError(f"dlib face recognition weights not found: {path} (install face_recognition_models "
                           f"or set PROUI_DLIB_MODELS to a folder with {MODEL_FILE})")
    try:
        return _parse(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as e:
        raise RuntimeError(f"{path} is not dlib's face recognition ResNet ({MODEL_FILE}): {e}") from None


# ------------------------------------------------------------------------------------------------ blocks


class Affine(nn.Module):
    """dlib's affine_ (a frozen batch norm): gamma * x + beta per channel."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta[:, None, None], x, self.gamma[:, None, None])


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the output takes the larger size on each axis; each input is zero-padded (at the end)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return pad(a) + pad(b)


def _con(c_in: int, c_out: int, k: int, stride: int) -> nn.Conv2d:
    # dlib's default con_ padding: k // 2 at stride 1, none at other strides
    return nn.Conv2d(c_in, c_out, k, stride, padding=k // 2 if stride == 1 else 0)


class Residual(nn.Module):
    """ares<N> (down=False) or ares_down<N> (down=True):
    relu(add_prev(x or avg_pool<2,2,2,2>(x), affine(con3(relu(affine(con3/stride(x)))))))."""

    def __init__(self, c_in: int, c_out: int, down: bool = False):
        super().__init__()
        self.down = down
        self.conv1, self.affine1 = _con(c_in, c_out, 3, 2 if down else 1), Affine(c_out)
        self.conv2, self.affine2 = _con(c_out, c_out, 3, 1), Affine(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(skip, y))

    def dlib_layers(self) -> list[tuple[str, object]]:
        pool = [("avg_pool", (2, 2, 2, 2, 0, 0))] if self.down else []
        return [("con", self.conv1), ("affine", self.affine1), ("relu", None), ("con", self.conv2),
                ("affine", self.affine2), *pool, ("add_prev", None), ("relu", None)]


# ----------------------------------------------------------------------------------------------- network


class DlibFaceResNet(nn.Module):
    """dlib's anet_type: (N,3,150,150) RGB chips in [0,255] -> (N,128) descriptors as dlib computes them."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean_rgb", torch.tensor([122.782, 117.001, 104.298]))  # overwritten on load
        self.conv1, self.affine1 = _con(3, 32, 7, 2), Affine(32)
        self.level4 = nn.Sequential(*(Residual(32, 32) for _ in range(3)))
        self.level3 = nn.Sequential(Residual(32, 64, down=True), *(Residual(64, 64) for _ in range(3)))
        self.level2 = nn.Sequential(Residual(64, 128, down=True), *(Residual(128, 128) for _ in range(2)))
        self.level1 = nn.Sequential(Residual(128, 256, down=True), *(Residual(256, 256) for _ in range(2)))
        self.level0 = nn.Sequential(Residual(256, 256, down=True))
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        x = (chips - self.mean_rgb[:, None, None]) / 256.0  # (N,3,150,150)
        x = F.relu(self.affine1(self.conv1(x)))  # (N,32,72,72)
        x = F.max_pool2d(x, 3, 2)  # (N,32,35,35)
        x = self.level4(x)  # (N,32,35,35)
        x = self.level3(x)  # (N,64,17,17)
        x = self.level2(x)  # (N,128,8,8)
        x = self.level1(x)  # (N,256,4,4): block 3x3 + pooled skip 4x4
        x = self.level0(x)  # (N,256,2,2): block 1x1 + pooled skip 2x2
        return self.fc(x.mean((2, 3)))  # (N,128)

    def dlib_layers(self) -> list[tuple[str, object]]:
        """The layers in the file's order with the module (or geometry) each one fills (or must match)."""
        out = [("con", self.conv1), ("affine", self.affine1), ("relu", None), ("max_pool", (3, 3, 2, 2, 0, 0))]
        for level in (self.level4, self.level3, self.level2, self.level1, self.level0):
            for block in level:
                out += block.dlib_layers()
        return out + [("avg_pool", (0, 0, 1, 1, 0, 0)), ("fc", self.fc)]

    @torch.no_grad()
    def load_dlib(self, weights: DlibFaceResNetWeights, source: str = "weights") -> DlibFaceResNet:
        expected = self.dlib_layers()
        kinds = [layer.kind for layer in weights.layers]
        if kinds != [kind for kind, _ in expected] or weights.chip_size != (CHIP_SIZE, CHIP_SIZE):
            raise RuntimeError(f"{source} is not dlib's face recognition ResNet ({MODEL_FILE}): {len(kinds)} "
                               f"layers, chip {weights.chip_size}; expected {len(expected)}, {CHIP_SIZE}")
        for i, (layer, (kind, target)) in enumerate(zip(weights.layers, expected)):
            where = f"{source}: layer {i} ({kind})"
            if kind == "con":
                geometry = (*target.kernel_size, *target.stride, *target.padding)
                if layer.geometry != geometry or layer.tensors["filters"].shape != tuple(target.weight.shape):
                    raise RuntimeError(f"{where}: {layer.tensors['filters'].shape} {layer.geometry}, "
                                       f"expected {tuple(target.weight.shape)} {geometry}")
                target.weight.copy_(torch.from_numpy(layer.tensors["filters"]))
                target.bias.copy_(torch.from_numpy(layer.tensors["biases"]))
            elif kind == "affine":
                if layer.tensors["gamma"].shape != tuple(target.gamma.shape):
                    raise RuntimeError(f"{where}: {layer.tensors['gamma'].shape} channels, "
                                       f"expected {tuple(target.gamma.shape)}")
                target.gamma.copy_(torch.from_numpy(layer.tensors["gamma"]))
                target.beta.copy_(torch.from_numpy(layer.tensors["beta"]))
            elif kind == "fc":
                shape = (target.in_features, target.out_features)
                if layer.geometry != shape:
                    raise RuntimeError(f"{where}: {layer.geometry}, expected {shape}")
                target.weight.copy_(torch.from_numpy(layer.tensors["weights"]).T)  # dlib: x @ W, W (in, out)
            elif target is not None and layer.geometry != target:
                raise RuntimeError(f"{where}: geometry {layer.geometry}, expected {target}")
        self.mean_rgb.copy_(torch.from_numpy(weights.mean_rgb))
        return self


def load_dlib_face_resnet(path: str | Path | None = None) -> DlibFaceResNet:
    """The network with the weights of `path` (default: dlib_models_dir()/MODEL_FILE), eval mode, frozen."""
    if path is None:
        from proui_data.detect import dlib_models_dir

        path = dlib_models_dir() / MODEL_FILE
    net = DlibFaceResNet().load_dlib(read_dlib_face_resnet(path), str(path)).eval()
    return net.requires_grad_(False)


# ------------------------------------------------------------------------ the chip of an aligned face

# Positions, in dlib's unit face frame, of our five template points (eye centres = mean of iBUG 36-41 and
# 42-47, nose tip 30, mouth corners 48 and 54), from the mean face shape get_face_chip_details uses for
# 68-point shapes (dlib/image_transforms/interpolation.h). dlib's 5-point chips are made to agree with it.
_MEAN_FACE_X = {36: 0.121737, 37: 0.187122, 38: 0.265825, 39: 0.334606, 40: 0.260918, 41: 0.182743,
                42: 0.645647, 43: 0.714428, 44: 0.793132, 45: 0.858516, 46: 0.79751, 47: 0.719335,
                30: 0.490127, 48: 0.254149, 54: 0.726104}  # fmt: skip
_MEAN_FACE_Y = {36: 0.216423, 37: 0.178758, 38: 0.179852, 39: 0.231733, 40: 0.245099, 41: 0.244077,
                42: 0.231733, 43: 0.179852, 44: 0.178758, 45: 0.216423, 46: 0.244077, 47: 0.245099,
                30: 0.515625, 48: 0.780233, 54: 0.780233}  # fmt: skip
DLIB_FACE_5 = np.array(
    [[np.mean([m[i] for i in ids]) for m in (_MEAN_FACE_X, _MEAN_FACE_Y)]
     for ids in (range(36, 42), range(42, 48), (30,), (48,), (54,))]
)  # fmt: skip


def chip_to_frame(points: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """(2,3) map chip px -> frame px that dlib's extract_image_chips samples with for a face whose five
    points (template order) are `points` in the frame (pixel centres at integer coordinates, as in dlib).

    get_face_chip_details fits a similarity chip -> image to the chip points (padding + p) / (1 + 2 padding)
    * size; chip_details keeps only the centre, tform(size/2, size/2), the angle and a rect of side
    size * scale - 1 (centered_drect), and extraction maps chip pixels 0 and size-1 to that rect's
    corners. So dlib samples with scale (size * s - 1) / (size - 1), centred on chip pixel (size-1)/2,
    not with the fitted similarity itself; we do the same.
    """
    from proui_data.align import similarity_transform

    chip_points = (padding + DLIB_FACE_5) / (1 + 2 * padding) * size
    fit = similarity_transform(chip_points, np.asarray(points, np.float64))  # chip -> frame
    scale = float(np.hypot(*fit[:, 0]))
    centre = fit @ np.array([size / 2, size / 2, 1.0])
    linear = fit[:, :2] / scale * (size * scale - 1) / (size - 1)
    return np.hstack([linear, (centre - linear @ np.full(2, (size - 1) / 2))[:, None]])


@functools.lru_cache(maxsize=None)
def _chip_theta(template: str, frame_size: int, size: int) -> np.ndarray:
    from proui_data.align import template_points

    m = chip_to_frame(template_points(template), size)
    # affine_grid (align_corners=False): normalised u -> pixel (u + 1) * n / 2 - 0.5, and back.
    to_chip_px = np.array([[size / 2, 0, size / 2 - 0.5], [0, size / 2, size / 2 - 0.5], [0, 0, 1]])
    n = frame_size
    to_frame_norm = np.array([[2 / n, 0, 1 / n - 1], [0, 2 / n, 1 / n - 1], [0, 0, 1]])
    return (to_frame_norm @ np.vstack([m, [0, 0, 1]]) @ to_chip_px)[:2]


def face_chip_grid(n: int, template: str = "celeba", frame_size: int = 128, size: int = CHIP_SIZE,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n,size,size,2) grid_sample grid (align_corners=False) that cuts dlib's face chip out of faces
    aligned to `template` (align.TEMPLATES) in a frame_size square, from the template's five points."""
    theta = torch.as_tensor(_chip_theta(template, frame_size, size), dtype=dtype, device=device)
    return F.affine_grid(theta.expand(n, 2, 3), [n, 3, size, size], align_corners=False)


def face_chips(faces: torch.Tensor, template: str = "celeba", size: int = CHIP_SIZE) -> torch.Tensor:
    """(N,3,H,H) aligned faces in [0,255] -> (N,3,size,size) dlib chips, bilinear and differentiable.

    dlib samples bilinearly too (black outside the image; the chip lies inside a 128 celeba frame), then
    truncates to uint8; we keep floats. The chip is fixed, from the template's points, where
    identity.face_descriptor runs dlib's 5-point predictor on each face and cuts the chip from its points: the
    two descriptors differ by that per-face scale and rotation, which no fixed map follows (how much:
    docs/training.md, "An identity term"; tests/test_dlib_resnet.py bounds it).
    """
    grid = face_chip_grid(faces.shape[0], template, faces.shape[-1], size, faces.device, faces.dtype)
    return F.grid_sample(faces, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
