"""The corrupt-input zoo: every kind of bad or unusual image decodes correctly or is rejected with a reason."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from proui_data.decode import DecodeError, decode_image


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _gradient(w: int = 64, h: int = 48) -> np.ndarray:
    x = np.linspace(0, 255, w)[None, :, None]
    y = np.linspace(0, 255, h)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 77.0)], axis=2).astype(np.uint8)


def test_rgb_png_round_trip():
    rgb = _gradient()
    d = decode_image(_encode(Image.fromarray(rgb), "PNG"))
    assert d.rgb.dtype == np.uint8 and d.rgb.shape == (48, 64, 3)
    np.testing.assert_array_equal(d.rgb, rgb)
    assert d.scale == 1.0 and d.source_size == (64, 48)


def test_grayscale_becomes_three_equal_channels():
    gray = _gradient()[..., 0]
    d = decode_image(_encode(Image.fromarray(gray, "L"), "PNG"))
    assert d.rgb.shape == (48, 64, 3)
    np.testing.assert_array_equal(d.rgb[..., 0], gray)
    np.testing.assert_array_equal(d.rgb[..., 1], d.rgb[..., 2])


def test_cmyk_jpeg_is_converted():
    rgb = _gradient()
    d = decode_image(_encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95))
    assert d.rgb.shape == (48, 64, 3)
    assert np.abs(d.rgb.astype(int) - rgb).mean() < 8


def test_16bit_png_is_scaled_to_8bit():
    v = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    d = decode_image(_encode(Image.fromarray(v), "PNG"))
    assert d.rgb.shape == (48, 64, 3)
    assert d.rgb[0, 0, 0] == 0 and d.rgb[-1, -1, 0] == 255
    assert abs(int(d.rgb[24, 32, 0]) - round(v[24, 32] / 257)) <= 1


def test_16bit_png_matches_opencvs_conversion():
    """Every 16-bit value v becomes round(v / 257), as OpenCV decodes and scales the same file; in several strips."""
    import cv2

    from proui_data import decode

    v = np.random.default_rng(0).integers(0, 65536, (61, 83), dtype=np.uint16)
    v[0, :4] = [0, 128, 129, 65535]  # the ends and the first rounding step (128 -> 0, 129 -> 1)
    data = _encode(Image.fromarray(v), "PNG")
    reference = cv2.convertScaleAbs(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), alpha=1 / 257)
    assert list(reference[0, :4]) == [0, 0, 1, 255]
    for strip in (decode.STRIP_PIXELS, 83 * 7):
        decode.STRIP_PIXELS, saved = strip, decode.STRIP_PIXELS
        try:
            d = decode.decode_image(data)
        finally:
            decode.STRIP_PIXELS = saved
        for c in range(3):
            np.testing.assert_array_equal(d.rgb[..., c], reference)


@pytest.mark.parametrize("mode", ["I;16", "L"])
def test_large_grayscale_is_reduced_as_pillow_reduces_its_rgb(mode):
    """A grayscale photo over max_side is reduced before it is made RGB: the same pixels as reducing the RGB."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 65536 if mode == "I;16" else 256, (150, 400))
    gray = values.astype(np.uint16 if mode == "I;16" else np.uint8)
    eight = ((values + 128) // 257).astype(np.uint8) if mode == "I;16" else gray
    expected = Image.fromarray(eight).convert("RGB").resize((100, 38), Image.LANCZOS)
    d = decode_image(_encode(Image.fromarray(gray), "PNG"), max_side=100)
    np.testing.assert_array_equal(d.rgb, np.asarray(expected))
    assert d.scale == 0.25 and d.source_size == (400, 150)


def test_16bit_decode_has_no_full_size_float_copy(monkeypatch):
    """numpy's peak over a 16-bit decode: the 8-bit image and one strip, not float64 copies of the whole image."""
    import tracemalloc

    from proui_data import decode

    monkeypatch.setattr(decode, "STRIP_PIXELS", 1 << 16)
    ramp = np.linspace(0, 65535, 1600, dtype=np.float64)[None, :] + np.zeros((1200, 1))
    data = _encode(Image.fromarray(ramp.astype(np.uint16)), "PNG")
    tracemalloc.start()
    try:
        d = decode_image(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert d.rgb.shape == (1200, 1600, 3)
    # the 8-bit image and the RGB result: 4 B/px and a strip (the float64 conversion took 24 B/px)
    assert peak < 4.5 * 1600 * 1200


def test_rgba_is_composited_on_grey():
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :32, 3] = 255  # left half opaque, right half transparent
    d = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (d.rgb[:, :32] == 200).all() and (d.rgb[:, 32:] == 128).all()


def test_exif_rotation_is_applied_and_frame_is_oriented():
    rgb = _gradient(64, 48)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    d = decode_image(_encode(img, "JPEG", quality=95, exif=exif.tobytes()))
    assert d.rgb.shape == (64, 48, 3)
    assert d.source_size == (48, 64)
    # The top-left of the displayed image is the stored bottom-left (low x, high y).
    assert abs(int(d.rgb[0, 0, 1]) - 255) < 12 and int(d.rgb[0, 0, 0]) < 12


@pytest.mark.parametrize("data,reason", [
    (b"", "empty_file"),
    (b"this is not an image at all" * 10, "corrupt"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "corrupt"),
])
def test_garbage_is_rejected_with_a_reason(data, reason):
    with pytest.raises(DecodeError) as e:
        decode_image(data)
    assert e.value.reason == reason


def test_truncated_jpeg_is_rejected():
    data = _encode(Image.fromarray(_gradient(256, 256)), "JPEG", quality=90)
    with pytest.raises(DecodeError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.reason == "truncated"


def test_decompression_bomb_is_rejected_before_decoding():
    # 9000 x 9000 = 81 Mpx of zeros compresses to a tiny PNG.
    data = _encode(Image.new("L", (9000, 9000)), "PNG")
    assert len(data) < 200_000
    with pytest.raises(DecodeError) as e:
        decode_image(data, max_pixels=64_000_000)
    assert e.value.reason == "too_large"


def test_large_jpeg_is_reduced_and_scale_reported():
    rgb = np.kron(_gradient(300, 200), np.ones((16, 16, 1), np.uint8))  # 4800 x 3200
    d = decode_image(_encode(Image.fromarray(rgb), "JPEG", quality=90), max_side=2048)
    assert max(d.rgb.shape[:2]) <= 2048
    assert d.source_size == (4800, 3200)
    assert d.scale == pytest.approx(d.rgb.shape[1] / 4800) and d.full_scale == d.scale and not d.reduced


def test_tiny_image_is_rejected():
    with pytest.raises(DecodeError) as e:
        decode_image(_encode(Image.new("RGB", (4, 4)), "PNG"))
    assert e.value.reason == "too_small"


def test_reduced_jpeg_decode_for_a_search_keeps_what_it_asks_for():
    """`reduce`: libjpeg's DCT scaling picks the smallest of 1/2, 1/4, 1/8 that keeps `reduce` of the size and a
    long side of `min_side`; the pixels are the full decode's, reduced; `full_scale` says what a full decode has."""
    import cv2

    rgb = cv2.resize(_gradient(80, 60), (800, 600), interpolation=cv2.INTER_LINEAR)
    data = _encode(Image.fromarray(rgb), "JPEG", quality=95)
    full = decode_image(data)
    assert full.scale == full.full_scale == 1.0 and not full.reduced
    for reduce, min_side, shape in ((0.4, 192, (300, 400)), (0.1, 192, (150, 200)), (0.1, 0, (75, 100)),
                                    (0.6, 0, (600, 800))):
        d = decode_image(data, reduce=reduce, min_side=min_side)
        assert d.rgb.shape[:2] == shape and d.source_size == (800, 600) and d.full_scale == 1.0
        assert d.scale == shape[1] / 800 and d.reduced == (shape[1] < 800)
        area = cv2.resize(full.rgb, shape[::-1], interpolation=cv2.INTER_AREA)
        assert np.abs(d.rgb.astype(int) - area).mean() < 2.0
    # the oriented frame, as a full decode gives it
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6
    d = decode_image(_encode(img, "JPEG", quality=95, exif=exif.tobytes()), reduce=0.5)
    assert d.rgb.shape == (400, 300, 3) and d.source_size == (600, 800) and d.scale == 0.5 and d.reduced
    # other formats, and photos a full decode already reduces to max_side, decode as without `reduce`
    png = decode_image(_encode(Image.fromarray(rgb), "PNG"), reduce=0.2)
    assert png.rgb.shape == (600, 800, 3) and not png.reduced
    big = decode_image(data, max_side=500, reduce=0.2)
    assert max(big.rgb.shape[:2]) == 500 and big.full_scale == big.scale == 500 / 800 and not big.reduced


def test_decodes_reduced_says_which_search_decodes_use_dct_scaling():
    """`decodes_reduced` / `reduction_factor` against what `decode_image(..., reduce, min_side)` does: a JPEG not
    over max_side at the largest of 1/2, 1/4, 1/8 that keeps `reduce` and `min_side`, of ceil(size / factor); every
    other decode the full decode itself, pixel for pixel."""
    from proui_data.decode import decodes_reduced, reduction_factor

    rng = np.random.default_rng(5)
    for w, h in ((800, 600), (501, 377), (199, 640), (160, 96)):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for fmt in ("JPEG", "PNG"):
            data = _encode(Image.fromarray(rgb), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            for max_side in (2048, 500):
                full = decode_image(data, max_side=max_side)
                assert full.format == fmt
                for reduce, min_side in ((0.405, 192), (0.1, 192), (0.1, 0), (0.3, 0), (1.0, 0)):
                    d = decode_image(data, max_side=max_side, reduce=reduce, min_side=min_side)
                    assert decodes_reduced(full, reduce, min_side) == d.reduced, (w, h, fmt, max_side, reduce)
                    if d.reduced:
                        f = reduction_factor((w, h), reduce, min_side)
                        assert f in (2, 4, 8) and d.rgb.shape[:2] == (-(-h // f), -(-w // f))
                    else:
                        np.testing.assert_array_equal(d.rgb, full.rgb)


@pytest.mark.parametrize("max_side", [2048, 300])
def test_16bit_rgba_is_composited_on_grey_strip_by_strip(monkeypatch, max_side):
    """A 16-bit RGBA PNG: colour and alpha keep their high byte (Pillow's 16-to-8 rule), then
    c * a / 255 + 128 * (255 - a) / 255, within Pillow's fixed-point rounding and exact at a = 0 and 255; strip by
    strip the same pixels as compositing the whole image at once (then reduced alike)."""
    import cv2

    from proui_data import decode

    rng = np.random.default_rng(7)
    bgra = rng.integers(0, 65536, (150, 401, 4), dtype=np.uint16)
    bgra[:, :40, 3], bgra[:, 40:80, 3] = 0, 65535
    data = cv2.imencode(".png", bgra)[1].tobytes()
    colour, alpha = (bgra[..., 2::-1] >> 8).astype(float), (bgra[..., 3:] >> 8).astype(float)
    exact = (colour * alpha + 128 * (255 - alpha)) / 255
    whole = Image.alpha_composite(Image.new("RGBA", (401, 150), (128, 128, 128, 255)),
                                  Image.open(io.BytesIO(data)).convert("RGBA")).convert("RGB")
    if max_side < 401:
        whole = whole.resize((300, 112), Image.LANCZOS)
    for strip in (decode.STRIP_PIXELS, 401 * 7):
        monkeypatch.setattr(decode, "STRIP_PIXELS", strip)
        d = decode.decode_image(data, max_side=max_side)
        np.testing.assert_array_equal(d.rgb, np.asarray(whole))
        if max_side >= 401:
            assert np.abs(d.rgb - exact).max() <= 1
            assert (d.rgb[:, :40] == 128).all()
            np.testing.assert_array_equal(d.rgb[:, 40:80], colour[:, 40:80])
