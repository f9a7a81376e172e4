"""The FaceNet judge: the GraphDef reader against protobuf's own encoder, the runner against a numpy reference
of TensorFlow's op semantics, and the real graph telling CelebA people apart."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from proui_data import align
from proui_train.metrics import verification_auc
from proui_train.models.facenet import (
    FaceNet,
    FaceNetUnavailable,
    VERIFY_THRESHOLD,
    face_crops,
    facenet_embeddings,
    facenet_graph_file,
    load_facenet,
    read_graph,
)

# TensorFlow's field numbers (graph.proto, node_def.proto, attr_value.proto, tensor.proto, tensor_shape.proto)
SCHEMA = """
message Dim { int64 size = 1; }
message TensorShapeProto { repeated Dim dim = 2; }
message TensorProto { int32 dtype = 1; TensorShapeProto tensor_shape = 2; bytes tensor_content = 4;
                      repeated float float_val = 5; repeated int32 int_val = 7; }
message ListValue { repeated bytes s = 2; repeated int64 i = 3; }
message AttrValue { oneof value { ListValue list = 1; bytes s = 2; int64 i = 3; float f = 4; bool b = 5;
                                  int32 type = 6; TensorShapeProto shape = 7; TensorProto tensor = 8; } }
message NodeDef { string name = 1; string op = 2; repeated string input = 3; map<string, AttrValue> attr = 5; }
message GraphDef { repeated NodeDef node = 1; }
"""


def graph_classes():
    """SCHEMA as protobuf message classes, built from descriptors (no protoc here)."""
    descriptor_pb2 = pytest.importorskip("google.protobuf.descriptor_pb2")
    from google.protobuf import descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="tiny_graph.proto", package="tg", syntax="proto3")

    def message(name, *fields, nested=()):
        m = file.message_type.add(name=name)
        for f in fields:
            m.field.add(**f)
        for n in nested:
            m.nested_type.add().CopyFrom(n)
        return m

    def field(name, number, kind, label=F.LABEL_OPTIONAL, type_name=None, oneof=None):
        f = dict(name=name, number=number, type=kind, label=label)
        if type_name:
            f["type_name"] = f".tg.{type_name}"
        if oneof is not None:
            f["oneof_index"] = oneof
        return f

    rep = F.LABEL_REPEATED
    message("Dim", field("size", 1, F.TYPE_INT64))
    message("TensorShapeProto", field("dim", 2, F.TYPE_MESSAGE, rep, "Dim"))
    message("TensorProto", field("dtype", 1, F.TYPE_INT32), field("tensor_shape", 2, F.TYPE_MESSAGE, type_name="TensorShapeProto"),
            field("tensor_content", 4, F.TYPE_BYTES), field("float_val", 5, F.TYPE_FLOAT, rep),
            field("int_val", 7, F.TYPE_INT32, rep))
    message("ListValue", field("s", 2, F.TYPE_BYTES, rep), field("i", 3, F.TYPE_INT64, rep))
    attr = message("AttrValue", field("list", 1, F.TYPE_MESSAGE, type_name="ListValue", oneof=0),
                   field("s", 2, F.TYPE_BYTES, oneof=0), field("i", 3, F.TYPE_INT64, oneof=0),
                   field("f", 4, F.TYPE_FLOAT, oneof=0), field("b", 5, F.TYPE_BOOL, oneof=0),
                   field("type", 6, F.TYPE_INT32, oneof=0),
                   field("shape", 7, F.TYPE_MESSAGE, type_name="TensorShapeProto", oneof=0),
                   field("tensor", 8, F.TYPE_MESSAGE, type_name="TensorProto", oneof=0))
    attr.oneof_decl.add(name="value")
    entry = descriptor_pb2.DescriptorProto(name="AttrEntry", options=descriptor_pb2.MessageOptions(map_entry=True))
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL, type_name=".tg.AttrValue")
    message("NodeDef", field("name", 1, F.TYPE_STRING), field("op", 2, F.TYPE_STRING),
            field("input", 3, F.TYPE_STRING, rep), field("attr", 5, F.TYPE_MESSAGE, rep, "NodeDef.AttrEntry"),
            nested=[entry])
    message("GraphDef", field("node", 1, F.TYPE_MESSAGE, rep, "NodeDef"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tg.{name}"))
            for name in ("GraphDef", "TensorProto", "Dim")}


def tiny_graph(rng) -> tuple[bytes, dict[str, np.ndarray]]:
    """A small Inception-like graph of every op the runner knows, file order shuffled, and its constants."""
    classes = graph_classes()
    graph = classes["GraphDef"]()
    consts = {"w3": rng.normal(size=(3, 3, 3, 4)), "w1": rng.normal(size=(1, 1, 3, 2)), "b3": rng.normal(size=4),
              "scale": np.array(0.3), "fc": rng.normal(size=(6, 5)), "gamma": rng.uniform(0.5, 2, 5),
              "beta": rng.normal(size=5), "mean": rng.normal(size=5), "var": rng.uniform(0.5, 2, 5),
              "eps": np.array(1e-10)}
    nodes = []

    def node(name, op, inputs=(), **attrs):
        nodes.append((name, op, list(inputs), attrs))

    def tensor(value, dtype=1):
        msg = classes["TensorProto"](dtype=dtype)
        msg.tensor_shape.dim.extend([classes["Dim"](size=s) for s in value.shape])
        if value.size == 1 and dtype == 1:
            msg.float_val.append(float(value))  # TensorFlow's splat form
        elif dtype == 1:
            msg.tensor_content = value.astype("<f4").tobytes()
        else:
            msg.int_val.extend(int(v) for v in value.ravel())
        return msg

    for name, value in consts.items():
        node(name, "Const", value=("tensor", tensor(value)))
    for name, value in {"axis": np.array(3), "flat": np.array([1, -1]), "to4": np.array([-1, 1, 1, 5]),
                        "to2": np.array([1, 5]), "last": np.array(1)}.items():
        node(name, "Const", value=("tensor", tensor(value, dtype=3)))
    node("input", "Placeholder")
    conv = dict(strides=("list", [1, 2, 2, 1]), data_format=("s", b"NHWC"))
    node("conv3", "Conv2D", ["input:0", "w3"], padding=("s", b"SAME"), **conv)
    node("bias", "BiasAdd", ["conv3", "b3"])
    node("relu", "Relu", ["bias"])
    node("conv1", "Conv2D", ["input:0", "w1"], padding=("s", b"VALID"), **conv)
    node("cat", "ConcatV2", ["relu", "conv1", "axis"])
    node("pool", "MaxPool", ["cat", "^relu"], ksize=("list", [1, 2, 2, 1]), strides=("list", [1, 1, 1, 1]),
         padding=("s", b"VALID"))
    node("scaled", "Mul", ["scale", "pool"])
    node("sum", "Add", ["pool", "scaled"])
    node("avg", "AvgPool", ["sum"], ksize=("list", [1, 2, 2, 1]), strides=("list", [1, 1, 1, 1]),
         padding=("s", b"VALID"))
    node("flat_r", "Reshape", ["avg", "flat"])
    node("matmul", "MatMul", ["flat_r", "fc"])
    node("r4", "Reshape", ["matmul", "to4"])
    node("bn", "FusedBatchNorm", ["r4", "gamma", "beta", "mean", "var"], epsilon=("f", 1e-3))
    node("r2", "Reshape", ["bn", "to2"])
    node("sq", "Square", ["r2"])
    node("ssum", "Sum", ["sq", "last"], keep_dims=("b", True))
    node("max", "Maximum", ["ssum", "eps"])
    node("rsqrt", "Rsqrt", ["max"])
    node("embeddings", "Mul", ["r2", "rsqrt"])
    for i in rng.permutation(len(nodes)):
        name, op, inputs, attrs = nodes[i]
        nd = graph.node.add(name=name, op=op, input=inputs)
        for key, (kind, value) in attrs.items():
            target = nd.attr[key]
            if kind == "list":
                target.list.i.extend(value)
            elif kind == "tensor":
                target.tensor.CopyFrom(value)
            else:
                setattr(target, kind, value)
    return graph.SerializeToString(), consts


def tf_conv_same(x, w, stride):
    """TensorFlow's SAME convolution, NHWC/HWIO, written out: the odd padded pixel goes after."""
    n, h, wd, _ = x.shape
    kh, kw, _, out = w.shape
    oh, ow = -(-h // stride), -(-wd // stride)
    ph, pw = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - wd, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    y = np.zeros((n, oh, ow, out))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw]
            y[:, i, j] = np.einsum("nhwc,hwco->no", patch, w)
    return y


def reference(x, c):
    branch = np.maximum(tf_conv_same(x, c["w3"], 2) + c["b3"], 0)  # 5x6 -> 3x3, padding rows 1+1, cols 0+1
    other = np.einsum("nhwc,co->nhwo", x[:, ::2, ::2], c["w1"][0, 0])  # 1x1 VALID stride 2
    cat = np.concatenate([branch, other], axis=3)
    pool = np.stack([np.stack([cat[:, i:i + 2, j:j + 2].max(axis=(1, 2)) for j in range(2)], 1)
                     for i in range(2)], 1)  # 3x3 -> 2x2 (N,H,W,C)
    total = pool * (1 + c["scale"])
    flat = total.mean(axis=(1, 2))  # 2x2 VALID average -> 1x1
    bn = (flat @ c["fc"] - c["mean"]) / np.sqrt(c["var"] + 1e-3) * c["gamma"] + c["beta"]
    return bn / np.linalg.norm(bn, axis=1, keepdims=True)


def test_tiny_graph_matches_tensorflow_semantics(tmp_path):
    rng = np.random.default_rng(0)
    data, consts = tiny_graph(rng)
    path = tmp_path / "tiny.pb"
    path.write_bytes(data)
    nodes = read_graph(path)
    by_name = {n.name: n for n in nodes}
    assert by_name["pool"].inputs == ["cat"]  # the control input is dropped
    assert by_name["conv3"].attrs["strides"] == [1, 2, 2, 1] and by_name["bn"].attrs["epsilon"] == pytest.approx(1e-3)
    np.testing.assert_allclose(by_name["w3"].attrs["value"], consts["w3"].astype(np.float32))
    assert by_name["eps"].attrs["value"] == np.float32(1e-10) and by_name["to4"].attrs["value"].tolist() == [-1, 1, 1, 5]
    x = rng.normal(size=(2, 5, 6, 3))
    with torch.no_grad():
        ours = FaceNet(nodes, output="embeddings")(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(ours, reference(x, consts), atol=1e-5)


def test_unknown_op_and_missing_file_are_clear_errors(tmp_path, monkeypatch):
    data, _ = tiny_graph(np.random.default_rng(1))
    path = tmp_path / "g.pb"
    path.write_bytes(data.replace(b"Rsqrt", b"Sqrtx"))
    with pytest.raises(ValueError, match="Sqrtx"):
        FaceNet(read_graph(path))
    monkeypatch.setenv("PROUI_FACENET", str(tmp_path / "absent.pb"))
    with pytest.raises(FaceNetUnavailable, match="absent.pb"):
        facenet_graph_file()


def test_crop_is_the_scaled_face_box_prewhitened():
    face = torch.zeros(1, 3, 128, 128)
    face[:, :, 40:88, 30:98] = 200.0  # a bright rectangle: where does it land in the 160 crop?
    box = (30.0, 40.0, 98.0, 108.0)  # 68 wide, 68 tall, centre (64, 74)
    crop = face_crops(face, box, scale=1.0)[0]
    assert crop.shape == (160, 160, 3)
    assert abs(float(crop.mean())) < 1e-5 and abs(float(crop.std(correction=0)) - 1) < 1e-4
    bright = crop[..., 0] > crop[..., 0].min() + 1e-3  # prewhitened: the black background is the minimum
    rows, cols = bright.any(1).nonzero().ravel(), bright.any(0).nonzero().ravel()
    # x 30..98 fills the box's whole width; y 40..88 is the top 48 of its 68 rows: crop row k samples y =
    # 40 + (k + 0.5) * 68 / 160, which bilinear sampling sees as bright while below pixel 88's centre, 88.5
    assert cols.min() == 0 and cols.max() == 159
    assert rows.min() == 0 and int(rows.max()) == int(48.5 * 160 / 68 - 0.5)


def _graph_or_skip():
    try:
        return load_facenet()
    except FaceNetUnavailable as err:
        pytest.skip(str(err))


def test_real_graph_tells_celeba_people_apart(shared_data, dlib_models):
    """24 CelebA faces of 8 people, aligned as the build aligns them: same-person pairs score above
    different-person ones (verification AUC; 0.963 on 608 HR train faces, benchmarks/judge.py)."""
    import cv2

    from proui_data.detect import hog_boxes, predict_in_box

    net = _graph_or_skip()
    people = collections.defaultdict(list)
    for line in open(shared_data / "celeba/Anno/identity_CelebA.txt"):
        name, person = line.split()
        if (shared_data / "celeba/img_align_celeba" / name).exists():
            people[person].append(name)
    chosen = [(p, names[:3]) for p, names in sorted(people.items()) if len(names) >= 3][:8]
    faces, who = [], []
    for person, names in chosen:
        for name in names:
            rgb = cv2.imread(str(shared_data / "celeba/img_align_celeba" / name))[..., ::-1].copy()
            boxes = hog_boxes(rgb, 1)
            assert boxes, name
            five = align.landmarks68_to_5(predict_in_box(rgb, boxes[0]))
            faces.append(align.warp_to_template(rgb, align.similarity_transform(five, align.TEMPLATE_5)))
            who.append(person)
    emb = facenet_embeddings(torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2), align.template_box("celeba"),
                             net).numpy()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    cos = emb @ emb.T
    i, j = np.triu_indices(len(faces), 1)
    same = np.array(who)[i] == np.array(who)[j]
    score = verification_auc(cos[i, j][same], cos[i, j][~same])
    assert score > 0.9, score
    # The threshold eval's verified_facenet uses, calibrated at 1 % false accepts on other faces (judge.py).
    accepted = cos[i, j] >= VERIFY_THRESHOLD
    assert accepted[~same].mean() < 0.03 and accepted[same].mean() > 0.4


def test_verification_auc_counts_ordered_pairs():
    rng = np.random.default_rng(2)
    same, different = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 70).astype(float)  # many ties
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in same for b in different])
    assert verification_auc(same, different) == pytest.approx(brute)
    assert verification_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
