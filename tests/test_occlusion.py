"""Synthetic occlusions (proui_data.occlusion) on real aligned faces with dlib landmarks.

The demo portraits shipped in the package run everywhere; CelebA faces and the real RGBA occluders come from
../shared/data (shared_data fixture) and skip without it.
"""
from __future__ import annotations

import functools
import importlib.resources
from pathlib import Path

import cv2
import numpy as np
import pytest

from proui_data import occlusion as occ
from proui_data.align import TEMPLATE_5, apply_transform, landmarks68_to_5, similarity_transform, warp_to_template
from proui_data.occlusion import KINDS, MEAN_LANDMARKS, OcclusionConfig, face_geometry, load_occluders, occlude

NAN_LANDMARKS = np.full((68, 2), np.nan, np.float32)
RIGHT_EYE, LEFT_EYE, MOUTH = list(range(36, 42)), list(range(42, 48)), list(range(48, 60))


@functools.lru_cache(maxsize=1)
def _dlib() -> tuple[object, object]:
    import importlib.util

    import dlib

    spec = importlib.util.find_spec("face_recognition_models")
    assert spec is not None and spec.origin is not None, "needs the face_recognition_models package"
    weights = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(weights))


def _aligned(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """dlib HOG + 68 points on the largest face, then the similarity of eyes/nose/mouth to the 128x128 template."""
    detector, predictor = _dlib()
    rects = sorted(detector(rgb, 0), key=lambda r: -r.area())
    if not rects:
        return None
    lm = np.array([[p.x, p.y] for p in predictor(rgb, rects[0]).parts()], np.float64)
    m = similarity_transform(landmarks68_to_5(lm), TEMPLATE_5)
    return warp_to_template(rgb, m), apply_transform(m, lm).astype(np.float32)


@pytest.fixture(scope="module")
def demo_faces() -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for name in ("astronaut.jpg", "grace_hopper.jpg"):
        data = (importlib.resources.files("proui_data.demo") / name).read_bytes()
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        face = _aligned(rgb)
        assert face is not None, name
        out.append(face)
    return out


@pytest.fixture(scope="module")
def celeba_faces(shared_data: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first 6 CelebA train-partition images in which HOG finds a face."""
    root = shared_data / "celeba"
    train = [line.split()[0] for line in (root / "Eval/list_eval_partition.txt").read_text().splitlines()
             if line.endswith(" 0")]  # fmt: skip
    have = {p.name for p in (root / "img_align_celeba").iterdir()}
    out = []
    for name in (n for n in train if n in have):
        rgb = cv2.cvtColor(cv2.imread(str(root / "img_align_celeba" / name)), cv2.COLOR_BGR2RGB)
        face = _aligned(rgb)
        if face is not None:
            out.append(face)
        if len(out) == 6:
            break
    assert len(out) == 6
    return out


def _cfg(kind: str, **kw) -> OcclusionConfig:
    return OcclusionConfig.from_dict({"kinds": {kind: 1}, **kw})


def _poly_mask(landmarks: np.ndarray, idx: list[int]) -> np.ndarray:
    m = np.zeros((128, 128), np.uint8)
    cv2.fillPoly(m, [np.round(landmarks[idx] * 16).astype(np.int32)], 1, cv2.LINE_8, 4)
    return m.astype(bool)


# --- configuration


def test_from_dict_defaults_and_round_trip():
    assert OcclusionConfig.from_dict({}) == OcclusionConfig()
    cfg = OcclusionConfig.from_dict({
        "kinds": {"block": 2, "object": 1}, "ratio": {"low": 0.2, "high": 0.4}, "anchors": {"eyes": 1},
        "occluders_dir": "/x", "walk_hole": [30, 40], "walk_region": 48, "walk_steps": 0, "variants": 3,
    })  # fmt: skip
    assert cfg.kinds == {"block": 2.0, "stroke": 0.0, "walk": 0.0, "shape": 0.0, "object": 1.0}
    assert cfg.anchors["random"] == 0.0 and cfg.ratio.low == 0.2 and cfg.walk_hole == (30, 40)
    assert OcclusionConfig.from_dict(cfg.to_dict()) == cfg
    assert OcclusionConfig.from_dict(OcclusionConfig().to_dict()) == OcclusionConfig()


@pytest.mark.parametrize(
    "bad, words",
    [
        ({"kind": {"block": 1}}, ["unknown key", "kind"]),
        ({"ratio": {"dist": "uniform", "mean": 0.3}}, ["ratio", "unknown key", "mean"]),
        ({"kinds": {"blob": 1}}, ["kinds", "unknown key", "blob"]),
        ({"anchors": {"ears": 1}}, ["anchors", "unknown key", "ears"]),
        ({"kinds": {"block": 0}}, ["kinds", "positive sum"]),
        ({"kinds": {"block": -1, "walk": 2}}, ["kinds"]),
        ({"ratio": {"low": 0.6, "high": 0.5}}, ["ratio", "low <= high"]),
        ({"ratio": {"dist": "gauss"}}, ["ratio.dist"]),
        ({"walk_hole": [56, 70]}, ["walk_hole"]),
        ({"walk_steps": -1}, ["walk_steps"]),
        ({"walk_steps": 1.5}, ["walk_steps", "integer"]),
        ({"variants": 0}, ["variants"]),
        ("block", ["expected a table"]),
    ],
)
def test_from_dict_rejects(bad, words):
    with pytest.raises(ValueError) as e:
        OcclusionConfig.from_dict(bad)
    for w in words:
        assert w in str(e.value)


# --- geometry


def test_mean_landmarks_sit_on_the_alignment_template():
    assert np.abs(landmarks68_to_5(MEAN_LANDMARKS) - TEMPLATE_5).max() < 1.0


def test_face_region(demo_faces):
    tpl = face_geometry(NAN_LANDMARKS)
    assert not tpl.known and tpl.box == (33, 48, 94, 117)  # the box the module docstring states
    for hr, lm in demo_faces:
        face = face_geometry(lm)
        assert face.known and 2500 < face.area < 6000
        for part in (RIGHT_EYE, LEFT_EYE, MOUTH):
            assert face.region[_poly_mask(lm, part)].all()
        assert face.region[:, :10].sum() == 0 and face.region[:10].sum() == 0  # background and hair stay out
        # the lifted brows put a forehead band above the brows into the region
        top = int(np.floor(lm[17:27, 1].min()))
        assert face.region[top - 6 : top].sum() > 100
    assert face_geometry(np.zeros((68, 2), np.float32)).known is False  # collapsed points: template
    with pytest.raises(ValueError, match="68, 2"):
        face_geometry(np.zeros((5, 2)))


# --- every kind


SPECS = [("block", {}), ("stroke", {}), ("walk", {}), ("walk", {"walk_steps": 0}), ("shape", {}), ("object", {})]


@pytest.mark.parametrize("kind, extra", SPECS, ids=[f"{k}{'-target' if e else ''}" for k, e in SPECS])
def test_kind_masks_and_compositing(demo_faces, kind, extra):
    _check_kind(demo_faces, _cfg(kind, **extra), kind)


def test_object_kind_with_real_occluders(demo_faces, shared_data):
    _check_kind(demo_faces, _cfg("object", occluders_dir=str(shared_data / "occluders")), "object")


def _check_kind(faces, cfg: OcclusionConfig, kind: str) -> None:
    rng = np.random.default_rng(1)
    changed = total = 0
    for i in range(30):
        hr, lm = faces[i % len(faces)]
        lm = lm if i % 5 else NAN_LANDMARKS  # every fifth draw without landmarks
        o = occlude(hr, lm, cfg, rng)
        assert o.kind == kind and o.hr_occluded.shape == hr.shape and o.hr_occluded.dtype == np.uint8
        assert o.mask.shape == (128, 128) and o.mask.dtype == np.uint8
        assert (o.mask > 0).sum() >= 20, o.detail
        assert np.array_equal(o.hr_occluded[o.mask == 0], hr[o.mask == 0])
        full = o.mask == 255
        diff = (o.hr_occluded[full] != hr[full]).any(-1)
        # a fill colour can equal the face's own colour by chance (a shifted patch of flat background)
        assert diff.mean() > 0.9 if full.any() else True
        changed, total = changed + diff.sum(), total + full.sum()
        face = face_geometry(lm)
        assert o.ratio == pytest.approx((o.mask / 255.0)[face.region > 0].mean(), abs=1e-6)
        assert 0.1 <= o.target <= 0.5
        assert o.anchor in ("random", "eyes", "nose", "mouth", "lower_face", "forehead")
    if kind != "object":  # procedural glasses may have no fully opaque pixel at all
        assert total > 0
    assert total == 0 or changed / total > 0.99


@pytest.mark.parametrize("kind, extra", SPECS, ids=[f"{k}{'-target' if e else ''}" for k, e in SPECS])
def test_same_seed_same_output_different_seed_different_mask(demo_faces, kind, extra):
    _check_seeds(demo_faces[0], _cfg(kind, **extra))


def test_same_seed_same_output_real_occluders(demo_faces, shared_data):
    _check_seeds(demo_faces[0], _cfg("object", occluders_dir=str(shared_data / "occluders")))


def _check_seeds(face: tuple[np.ndarray, np.ndarray], cfg: OcclusionConfig) -> None:
    hr, lm = face
    a = [occlude(hr, lm, cfg, np.random.default_rng(s)) for s in (7, 7, 8)]
    assert np.array_equal(a[0].mask, a[1].mask) and np.array_equal(a[0].hr_occluded, a[1].hr_occluded)
    assert (a[0].kind, a[0].anchor, a[0].ratio, a[0].detail) == (a[1].kind, a[1].anchor, a[1].ratio, a[1].detail)
    assert not np.array_equal(a[0].mask, a[2].mask)


def test_tiny_targets_still_occlude_something(demo_faces):
    cfg = OcclusionConfig.from_dict({"ratio": {"low": 0.002, "high": 0.01}, "walk_steps": 0})
    rng = np.random.default_rng(4)
    for i in range(100):
        o = occlude(*demo_faces[i % 2], cfg, rng)
        assert o.mask.any(), (o.kind, o.detail)
        # a brush is at least one disc of up to 20 px; objects keep their shape
        limit = {"stroke": 0.1, "object": 1.0}.get(o.kind, 0.03)
        assert o.ratio < limit, (o.kind, o.ratio)


def test_mixed_config_draws_all_kinds_and_anchors(demo_faces):
    rng = np.random.default_rng(3)
    hr, lm = demo_faces[1]
    draws = [occlude(hr, lm, OcclusionConfig(), rng) for _ in range(120)]
    counts = {k: sum(d.kind == k for d in draws) for k in KINDS}
    assert all(10 <= c <= 40 for c in counts.values()), counts  # equal weights: ~24 each
    assert {d.anchor for d in draws if d.kind == "block"} == {"random", "eyes", "nose", "mouth"}


# --- achieved ratios follow the target distribution


@pytest.mark.parametrize("kind, extra", [("block", {}), ("stroke", {}), ("shape", {}), ("walk", {"walk_steps": 0})])
def test_ratio_histogram_matches_uniform_target(demo_faces, kind, extra):
    cfg = _cfg(kind, ratio={"dist": "uniform", "low": 0.1, "high": 0.5}, **extra)
    rng = np.random.default_rng(11)
    draws = [occlude(*demo_faces[i % 2], cfg, rng) for i in range(300)]
    ratio = np.array([d.ratio for d in draws])
    err = ratio - np.array([d.target for d in draws])
    assert abs(ratio.mean() - 0.30) < 0.05
    share = np.histogram(ratio, [0.0, 0.2, 0.3, 0.4, 1.0])[0] / len(ratio)
    assert ((share >= 0.15) & (share <= 0.35)).all(), share
    assert np.median(np.abs(err)) < 0.01 and np.abs(err).max() < 0.08


def test_object_scale_moves_towards_the_target(demo_faces):
    # Objects keep their shape, so only the 0.8-1.2 scale follows the target: low targets give smaller objects.
    rng = np.random.default_rng(5)
    rows = []
    for i in range(200):
        o = occlude(*demo_faces[i % 2], _cfg("object"), rng)
        rows.append((o.detail, o.target, o.ratio))
    for name in ("procedural-glasses", "procedural-mask"):
        r = np.array([(t, a) for d, t, a in rows if d == name])
        low, high = r[r[:, 0] < 0.2, 1], r[r[:, 0] > 0.4, 1]
        assert len(low) >= 5 and len(high) >= 5
        assert high.mean() > 1.3 * low.mean()


# --- the walk protocol


def test_walk_stays_in_its_hole_box(demo_faces):
    hr, lm = demo_faces[0]
    cfg = _cfg("walk", walk_hole=[20, 24], walk_region=32, walk_steps=2304)
    rng = np.random.default_rng(0)
    for _ in range(200):  # hole boxes touch every image border sooner or later
        o = occlude(hr, lm, cfg, rng)
        ys, xs = np.nonzero(o.mask)
        assert xs.max() - xs.min() < 24 and ys.max() - ys.min() < 24
        assert 100 < len(xs) <= 24 * 24
        assert set(np.unique(o.mask)) == {0, 255}
    # A long walk in a hole as large as its region fills the hole exactly.
    o = occlude(hr, lm, _cfg("walk", walk_hole=[8, 8], walk_region=8, walk_steps=20000), rng)
    ys, xs = np.nonzero(o.mask)
    assert len(xs) == 64 and xs.max() - xs.min() == 7 and ys.max() - ys.min() == 7


def test_folded_walk_matches_a_clipped_walk():
    # The authors clip each step into the box; we fold a free walk. Same process: same coverage statistics.
    rng = np.random.default_rng(0)
    moves = np.array([[0, 1], [0, -1], [1, 0], [-1, 0]])
    box = (10, 20, 30, 25)
    clipped, folded = [], []
    for _ in range(150):
        p = np.array([25, 30])
        seen = set()
        for m in moves[rng.integers(0, 4, 1500)]:
            p = np.clip(p + m, [box[0], box[1]], [box[0] + box[2] - 1, box[1] + box[3] - 1])
            seen.add((int(p[0]), int(p[1])))
        clipped.append(len(seen))
        pos = occ._folded_walk(np.array([25, 30]), 1500, box, rng)
        assert (pos.min(0) >= box[:2]).all() and (pos.max(0) < np.add(box[:2], box[2:])).all()
        folded.append(len({(int(x), int(y)) for x, y in pos}))
    assert abs(np.mean(folded) / np.mean(clipped) - 1) < 0.03
    assert abs(np.std(folded) / np.std(clipped) - 1) < 0.25


# --- objects sit on the right parts


def _part_overlaps(faces, cfg: OcclusionConfig, n: int) -> dict[str, np.ndarray]:
    """Per object: rows of (min eye overlap, mouth overlap): fraction of each polygon's pixels under the mask."""
    rng = np.random.default_rng(2)
    out: dict[str, list] = {}
    for i in range(n):
        hr, lm = faces[i % len(faces)]
        o = occlude(hr, lm, cfg, rng)
        eye = min((o.mask[_poly_mask(lm, p)] > 0).mean() for p in (RIGHT_EYE, LEFT_EYE))
        mouth = (o.mask[_poly_mask(lm, MOUTH)] > 0).mean()
        out.setdefault(o.detail, []).append((eye, mouth))
    return {k: np.array(v) for k, v in out.items()}


def _check_parts(stats: dict[str, np.ndarray], categories: dict[str, str]) -> None:
    for name, v in stats.items():
        cat = categories[name]
        if cat == "glasses":
            assert v[:, 0].min() > 0.8, (name, v.min(0))
            # glass15.png is a Groucho disguise: its fake moustache is meant to hide the upper lip
            assert v[:, 1].max() < 0.1 or name == "glass15.png", (name, v.max(0))
        elif cat == "mask":
            assert v[:, 1].min() > 0.8 and v[:, 0].max() < 0.05, (name, v.min(0), v.max(0))
        elif cat == "hat":
            assert v.max() < 0.05, name


def test_procedural_objects_sit_on_the_right_parts(demo_faces):
    stats = _part_overlaps(demo_faces, _cfg("object"), 160)
    cats = {"procedural-glasses": "glasses", "procedural-sunglasses": "glasses", "procedural-mask": "mask",
            "procedural-hand": "hand"}  # fmt: skip
    assert set(stats) == set(cats)
    _check_parts(stats, cats)


def test_procedural_objects_on_celeba(celeba_faces):
    stats = _part_overlaps(celeba_faces, _cfg("object"), 160)
    _check_parts(stats, {k: k.split("-")[1].replace("sunglasses", "glasses") for k in stats})


def test_real_occluders_sit_on_the_right_parts(celeba_faces, shared_data):
    folder = shared_data / "occluders"
    cats = {Path(t.name).name: t.category for t in load_occluders(folder)}
    stats = _part_overlaps(celeba_faces, _cfg("object", occluders_dir=str(folder)), 400)
    assert {cats[k] for k in stats} == {"glasses", "mask", "hat"}
    assert len(stats) >= 20  # most of the 31 files get drawn
    _check_parts(stats, cats)


def test_real_occluders_are_classified_and_anchored(shared_data):
    templates = load_occluders(shared_data / "occluders")
    assert load_occluders(shared_data / "occluders") is templates  # cached per process
    by_name = {Path(t.name).name: t for t in templates}
    assert len(by_name) == 31  # 21 MaskTheFace templates, 4 pederz, 6 sirin
    expect = {"cap.png": "hat", "mask.png": "mask", "glass.png": "glasses", "sunglass.png": "glasses",
              "dealwithit.png": "glasses", "glass22.png": "glasses", "N95_left.png": "mask", "gas.png": "mask"}
    for name, cat in expect.items():
        assert by_name[name].category == cat, name
    # MaskTheFace anchors come from masks.cfg (surgical.png: mask_b = 307, 22), moved with the crop to the
    # alpha box (2 px margin) and the reduction to 256 px
    t = by_name["surgical.png"]
    assert t.targets == occ._MTF_TARGETS and t.family == "surgical"
    assert by_name["surgical_left.png"].family == "surgical" and by_name["surgical_left.png"].skew < 0.25
    assert 0.45 < t.skew < 0.55
    alpha = cv2.imread(str(shared_data / "occluders/maskTheFace_templates/surgical.png"), cv2.IMREAD_UNCHANGED)[..., 3]
    ys, xs = np.nonzero(alpha > 8)
    x0, y0, w = xs.min() - 2, ys.min() - 2, xs.max() + 3 - (xs.min() - 2)
    f = 256 / w
    assert t.rgba.shape[1] == 256
    assert np.allclose(t.anchors[1], (np.array([307 - x0, 22 - y0]) + 0.5) * f - 0.5, atol=1e-6)
    # clear lenses are found as enclosed holes and their centres anchor the eyes
    g = by_name["glass.png"]
    assert g.lens is not None and g.lens.mean() > 20
    assert g.anchors[0, 0] < g.rgba.shape[1] / 2 < g.anchors[1, 0]


def test_masks_cfg_parser(shared_data):
    cfg = occ._read_masks_cfg(shared_data / "occluders/maskTheFace_templates/masks.cfg")
    assert len(cfg) == 21 and "empty" not in cfg
    assert cfg["N95_left"].tolist() == [[193, 331], [366, 172], [1160, 222], [265, 762], [595, 875], [1176, 632]]
    assert cfg["gas_right"][0].tolist() == [-105, 239]


# --- loading a folder of RGBA files (no shared data needed)


def _write_png(path: Path, rgba: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))


def test_load_folder_of_rgba_occluders(tmp_path, demo_faces):
    # Glasses: two 40-px rings, 100 px apart, with clear centres; a 16-bit copy; an RGB file that is skipped.
    glasses = np.zeros((80, 200, 4), np.uint8)
    for cx in (50, 150):
        cv2.circle(glasses, (cx, 40), 30, (20, 20, 20, 255), 6)
    cv2.line(glasses, (80, 40), (120, 40), (20, 20, 20, 255), 4)
    _write_png(tmp_path / "eyewear/my_Glasses.png", glasses)
    bgra16 = cv2.cvtColor(glasses, cv2.COLOR_RGBA2BGRA).astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "eyewear/wide16.png"), bgra16)
    cv2.imwrite(str(tmp_path / "opaque.png"), np.full((50, 50, 3), 128, np.uint8))
    # A mask template with MaskTheFace anchors in a masks.cfg next to it.
    mask = np.zeros((120, 160, 4), np.uint8)
    cv2.ellipse(mask, (80, 60), (78, 58), 0, 0, 360, (200, 220, 240, 255), -1)
    _write_png(tmp_path / "masks/blue.png", mask)
    (tmp_path / "masks/masks.cfg").write_text(
        "[blue]\ntemplate: masks/templates/blue.png\nmask_a: 2, 30\nmask_b: 80, 3\nmask_c: 158, 30\n"
        "mask_d: 10, 90\nmask_e: 80, 117\nmask_f: 150, 90\n\n[empty]\n"
    )
    _write_png(tmp_path / "_hidden/cap.png", mask)  # folders starting with _ or . are skipped
    templates = load_occluders(tmp_path)
    by_name = {Path(t.name).name: t for t in templates}
    assert set(by_name) == {"my_Glasses.png", "wide16.png", "blue.png"}
    g = by_name["my_Glasses.png"]
    assert g.category == "glasses" and g.lens is not None
    ys, xs = np.nonzero(glasses[..., 3] > 8)
    origin = np.array([xs.min() - 2, ys.min() - 2])
    assert np.allclose(g.anchors, np.array([[50, 40], [150, 40]]) - origin, atol=0.5)  # ring centres, cropped
    assert by_name["wide16.png"].category == "glasses"  # by aspect; 16 bits read as 8
    assert by_name["blue.png"].category == "mask" and by_name["blue.png"].targets == occ._MTF_TARGETS
    stats = _part_overlaps(demo_faces, _cfg("object", occluders_dir=str(tmp_path)), 60)
    _check_parts(stats, {k: by_name[k].category for k in stats})
    # lenses were tinted: the eyes inside the clear rings are occluded
    assert stats["my_Glasses.png"][:, 0].min() > 0.8


def test_bad_inputs(demo_faces, tmp_path):
    hr, lm = demo_faces[0]
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="uint8"):
        occlude(hr.astype(np.float32), lm, OcclusionConfig(), rng)
    with pytest.raises(ValueError, match="128"):
        occlude(hr[:64], lm, OcclusionConfig(), rng)
    with pytest.raises(ValueError, match="68, 2"):
        occlude(hr, lm[:5], OcclusionConfig(), rng)
    with pytest.raises(ValueError, match="not a directory"):
        occlude(hr, lm, _cfg("object", occluders_dir=str(tmp_path / "missing")), rng)
    with pytest.raises(ValueError, match="no PNG with an alpha"):
        occlude(hr, lm, _cfg("object", occluders_dir=str(tmp_path)), rng)


def test_classify_occluder_names():
    c = occ.classify_occluder
    assert c("Ray-Ban_SUNGLASSES_03", 10, 10) == "glasses" and c("face-mask", 10, 10) == "mask"
    assert c("red_cap", 10, 10) == "hat" and c("left_hand", 10, 10) == "hand"
    assert c("thing", 300, 100) == "glasses" and c("thing", 120, 100) == "mask" and c("thing", 50, 100) == "other"
