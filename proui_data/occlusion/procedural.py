"""Procedural occluders drawn with cv2 when no `occluders_dir` is given: glasses, sunglasses, masks, hands.

Templates are drawn large (`_PROC_IOD` px between the eye anchors, ~2.3x the HR size) so their edges come out
smooth once placed; placement is the same as for real occluders (`objects.place_object`).
"""
from __future__ import annotations

import cv2
import numpy as np

from .draw import ONE, SHIFT, fx, poly, polyline
from .sampling import choice
from .template import MTF_TARGETS, ObjectTemplate

_PROC_IOD = 64.0  # template pixels between the eye anchors


def procedural_object(rng: np.random.Generator) -> ObjectTemplate:
    kind = ("glasses", "sunglasses", "mask", "hand")[choice(rng, [1.0, 1.0, 1.0, 0.6])]
    if kind in ("glasses", "sunglasses"):
        return _draw_glasses(rng, dark=kind == "sunglasses")
    if kind == "mask":
        return _draw_mask(rng)
    return _draw_hand(rng)


def _superellipse(c, rx: float, ry: float, n: float, rot: float = 0.0, k: int = 48) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    ct, st = np.cos(t), np.sin(t)
    x = rx * np.sign(ct) * np.abs(ct) ** (2 / n)
    y = ry * np.sign(st) * np.abs(st) ** (2 / n)
    r = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]])
    return np.stack([x, y], 1) @ r.T + c


def _draw_glasses(rng: np.random.Generator, dark: bool) -> ObjectTemplate:
    u = _PROC_IOD
    w, h = int(2.4 * u), int(0.9 * u)
    centres = np.array([[w / 2 - u / 2, h / 2], [w / 2 + u / 2, h / 2]])
    rx = u * rng.uniform(0.3, 0.4)
    ry = rx * rng.uniform(0.65, 0.9)
    n = float(rng.choice([2.0, 2.0, 3.0, 4.5]))  # ellipse, soft and hard rounded rectangles
    tilt = np.deg2rad(rng.uniform(0, 12))
    thick = max(1, int(round(u * rng.uniform(0.03, 0.08))))
    frame = np.array([[20, 20, 20], [70, 40, 20], [110, 110, 115], [150, 30, 30], [30, 40, 90]])[rng.integers(5)]
    rgb = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    if dark:
        lens_c = np.array([[15, 15, 15], [40, 30, 20], [20, 35, 25], [20, 25, 50]])[rng.integers(4)]
        lens_a = rng.uniform(0.88, 1.0)
    else:
        # A clear lens hides nothing, yet its region must read as occluded: it gets a visible tint.
        lens_c = np.array([[200, 200, 200], [120, 100, 80], [120, 140, 170]])[rng.integers(3)]
        lens_a = rng.uniform(0.3, 0.55)
    outlines = [
        _superellipse(centres[0], rx, ry, n, +tilt), _superellipse(centres[1], rx, ry, n, -tilt),
    ]  # fmt: skip
    for o in outlines:
        poly(rgb, o, lens_c.tolist())
        poly(alpha, o, int(255 * lens_a))
        glint = o.mean(0) + np.array([[-0.4 * rx, -0.1 * ry], [-0.1 * rx, -0.5 * ry]])
        polyline(rgb, glint, [255, 255, 255], max(1, thick // 2 + 1))
    for o in outlines:
        polyline(rgb, o, frame.tolist(), thick, closed=True)
        polyline(alpha, o, 255, thick, closed=True)
    inner = np.array([[centres[0, 0] + rx * 0.95, h / 2 - 0.3 * ry], [w / 2, h / 2 - 0.45 * ry],
                      [centres[1, 0] - rx * 0.95, h / 2 - 0.3 * ry]])  # fmt: skip
    temples = [np.array([[centres[0, 0] - rx, h / 2 - 0.4 * ry], [0, h / 2 - 0.5 * ry]]),
               np.array([[centres[1, 0] + rx, h / 2 - 0.4 * ry], [w - 1, h / 2 - 0.5 * ry]])]  # fmt: skip
    for line in [inner] + temples:
        polyline(rgb, line, frame.tolist(), thick)
        polyline(alpha, line, 255, thick)
    rgba = np.dstack([rgb, alpha])
    return ObjectTemplate("sunglasses" if dark else "glasses", "glasses", rgba, centres, ("eye_r", "eye_l"))


def _bezier(p0, p1, p2, k: int = 16) -> np.ndarray:
    t = np.linspace(0, 1, k)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _draw_mask(rng: np.random.Generator) -> ObjectTemplate:
    # Template frame of the six MaskTheFace anchors (a..f); the mask spans ~2.2 eye distances.
    u = _PROC_IOD / 64
    margin = 14 * u
    a, b, c = np.array([4, 30]) * u, np.array([68, 6]) * u, np.array([132, 30]) * u
    d, e, f = np.array([10, 84]) * u, np.array([68, 118]) * u, np.array([126, 84]) * u
    anchors = np.stack([a, b, c, d, e, f]) + [margin, 0]
    a, b, c, d, e, f = anchors
    w, h = int(136 * u + 2 * margin), int(122 * u)
    top = _bezier(a, 2 * b - (a + c) / 2, c)
    right = _bezier(c, (c + f) / 2 + [5 * u, 0], f)
    bottom = _bezier(f, 2 * e - (d + f) / 2, d)
    left = _bezier(d, (a + d) / 2 - [5 * u, 0], a)
    outline = np.concatenate([top, right[1:], bottom[1:], left[1:]])
    colours = [[165, 205, 235], [235, 235, 235], [35, 35, 40], [120, 195, 185], [235, 185, 195], [180, 180, 185]]
    base = np.array(colours[rng.integers(len(colours))], np.float64)
    rgb = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    poly(rgb, outline, base.tolist())
    poly(alpha, outline, 255)
    shade = (base * 0.82).tolist()
    for frac in (0.33, 0.5, 0.67):  # pleats: lines across, between the left and right outlines
        yl, yr = a[1] + frac * (d[1] - a[1]), c[1] + frac * (f[1] - c[1])
        pleat = np.array([[a[0], yl], [(a[0] + c[0]) / 2, (yl + yr) / 2 + 3 * u], [c[0], yr]])
        polyline(rgb, _bezier(*pleat), shade, max(1, int(round(2 * u))))
    polyline(rgb, outline, (base * 0.9).tolist(), max(1, int(round(3 * u))), closed=True)
    loop = [235, 235, 235] if base.mean() < 100 else (base * 0.95).tolist()
    ear_loops = ((a, [0, a[1] + 8 * u]), (d, [0, d[1] - 12 * u]), (c, [w - 1, c[1] + 8 * u]), (f, [w - 1, f[1] - 12 * u]))
    for p, q in ear_loops:
        seg = np.array([p, q], np.float64)
        polyline(rgb, seg, loop, max(1, int(round(2 * u))))
        polyline(alpha, seg, 255, max(1, int(round(2 * u))))
    polyline(rgb, np.array([b + [-14 * u, 5 * u], b + [14 * u, 5 * u]]), (base * 0.7).tolist(), max(1, int(2 * u)))
    rgba = np.dstack([rgb, alpha])
    return ObjectTemplate("mask", "mask", rgba, anchors, MTF_TARGETS)


def _draw_hand(rng: np.random.Generator) -> ObjectTemplate:
    # A palm, four fingers and a thumb as capsules; the template's 2-eye-distance axis points at the fingertips.
    u = _PROC_IOD / 2  # hand proportions in half eye distances: palm ~2.6 wide, hand ~5.8 long
    w, h = int(3.6 * u), int(6.4 * u)
    tones = [[236, 196, 164], [224, 172, 140], [198, 134, 100], [141, 85, 56], [92, 58, 40]]
    skin = np.clip(np.array(tones[rng.integers(len(tones))]) + rng.normal(0, 8, 3), 0, 255)
    edge = (skin * 0.72).tolist()
    rgb = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    palm = np.array([w / 2, 4.1 * u])
    fingers = []
    for dx, length, spread in ((-0.95, 1.9, -8), (-0.32, 2.25, -3), (0.32, 2.15, 3), (0.95, 1.75, 8)):
        base = palm + [dx * u, -1.0 * u]
        ang = np.deg2rad(spread + rng.normal(0, 3))
        tip = base + length * u * np.array([np.sin(ang), -np.cos(ang)])
        fingers.append((base, tip, int(0.62 * u)))
    thumb_base = palm + [-1.1 * u, 0.4 * u]
    fingers.append((thumb_base, thumb_base + 1.6 * u * np.array([-0.75, -0.66]), int(0.72 * u)))
    wrist = np.array([[palm[0] - 0.9 * u, palm[1]], [palm[0] + 0.9 * u, palm[1]], [palm[0] + 0.85 * u, h - 1],
                      [palm[0] - 0.85 * u, h - 1]])  # fmt: skip
    for img, fg, outline in ((rgb, skin.tolist(), edge), (alpha, 255, 255)):
        poly(img, wrist, fg)
        cv2.ellipse(img, fx(palm), (int(1.3 * u * ONE), int(1.45 * u * ONE)), 0, 0, 360, fg, -1, cv2.LINE_8, SHIFT)
        for base, tip, t in fingers:  # an outline stroke then the finger: separates neighbouring fingers
            polyline(img, np.array([base, tip]), outline, t + 2)
            polyline(img, np.array([base, tip]), fg, t)
    rgba = np.dstack([rgb, alpha])
    if rng.random() < 0.5:  # left or right hand
        rgba = np.ascontiguousarray(rgba[:, ::-1])
        palm = np.array([w - 1 - palm[0], palm[1]])
    anchors = np.stack([palm, palm - [0, 4 * u]])  # palm centre; 2 eye distances towards the fingertips
    return ObjectTemplate("hand", "hand", rgba, anchors, ())
