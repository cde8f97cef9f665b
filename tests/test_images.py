"""diffgemma_cpp.images.load_image: every source it takes, the pixels HF transformers 5.23 works from for each,
the pixel cap (checked before decoding), and a specific error for everything it refuses."""

from __future__ import annotations

import base64
import io
import struct
import sys
import zlib

import numpy as np
import pytest

from diffgemma_cpp._native import lib
from diffgemma_cpp.errors import ImageError, InvalidArgumentError, VisionDependencyError
from diffgemma_cpp._native import ffi
from diffgemma_cpp.images import MAX_PIXELS, Image, c_images, load_image

PIL = pytest.importorskip("PIL.Image", reason="Pillow (the vision extra) decodes the image files")
from PIL import Image as PILImage  # noqa: E402


def encoded(image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def data_url(raw: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def rgb_array(h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---- the Image container ------------------------------------------------------------------------


def test_cap_is_the_c_headers():
    assert MAX_PIXELS == lib.DIFFGEMMA_IMAGE_MAX_PIXELS == 1 << 25


def test_image_checks_its_fields():
    image = Image(2, 1, bytearray(range(6)))
    assert image.rgb == bytes(range(6)) and image.to_numpy().shape == (1, 2, 3)
    assert "rgb" not in repr(image)
    for args in ((0, 1, b""), (2, 1, b"\0" * 5), (True, 1, b"\0" * 3), (1, 1, "abc")):
        with pytest.raises(ImageError):
            Image(*args)
    assert issubclass(ImageError, InvalidArgumentError)
    with pytest.raises(ImageError, match="over the limit"):
        Image(MAX_PIXELS + 1, 1, b"")  # refused on its size, before its bytes are looked at


def test_c_images_is_the_c_array():
    images = [Image(2, 1, bytes(range(6))), Image(1, 1, b"xyz")]
    array, keep = c_images(images)
    assert [(a.width, a.height) for a in array] == [(2, 1), (1, 1)]
    assert bytes(ffi.buffer(array[0].rgb, 6)) == bytes(range(6)) and bytes(ffi.buffer(array[1].rgb, 3)) == b"xyz"
    assert keep[0] is array and len(keep) == 3
    with pytest.raises(ImageError, match="load_image"):
        c_images([b"raw"])


# ---- arrays (no Pillow needed) ------------------------------------------------------------------


def test_arrays():
    a = rgb_array()
    assert load_image(a).to_numpy().tolist() == a.tolist()
    gray = a[..., 0]
    for g in (gray, gray[..., None]):
        assert load_image(g).to_numpy().tolist() == np.repeat(gray[..., None], 3, 2).tolist()
    assert load_image(a[:, ::2]).width == 4  # a strided view is copied contiguous
    with pytest.raises(ImageError, match="uint8"):
        load_image(a.astype(np.float32))
    with pytest.raises(ImageError, match="alpha"):
        load_image(np.zeros((2, 2, 4), np.uint8))
    with pytest.raises(ImageError, match="empty"):
        load_image(np.zeros((0, 3, 3), np.uint8))
    huge = np.broadcast_to(np.zeros((1, 1), np.uint8), (6000, 6000))  # no memory behind it
    with pytest.raises(ImageError, match="over the limit"):
        load_image(huge)
    image = Image(1, 1, b"abc")
    assert load_image(image) is image


# ---- encoded files ------------------------------------------------------------------------------


def test_every_way_to_name_a_file(tmp_path):
    a = rgb_array()
    raw = encoded(PILImage.fromarray(a))
    path = tmp_path / "pic ture.png"
    path.write_bytes(raw)
    for source in (raw, bytearray(raw), memoryview(raw), str(path), path, path.as_uri(), data_url(raw),
                   data_url(raw).replace("base64,", "base64,\n"), data_url(raw, "image/jpeg")):  # the type is a hint
        image = load_image(source)
        assert (image.width, image.height) == (7, 5) and image.to_numpy().tolist() == a.tolist(), source


@pytest.mark.parametrize("source, match", [
    ("http://example.com/a.png", "never fetches"),
    ("HTTPS://example.com/a.png", "never fetches"),
    ("ftp://example.com/a.png", "unsupported image URL scheme"),
    ("file://otherhost/a.png", "local file"),
    ("data:image/png,abc", "base64"),
    ("data:text/plain;base64,aGVsbG8=", "not an image"),
    ("data:image/png;base64", "comma"),
    ("data:image/png;base64,@@@@", "not valid base64"),
    ("/no/such/file.png", "no such image file"),
    ("", "empty"),
    (b"definitely not an image", "not an image format"),
    (12, "cannot read an image from a int"),
])
def test_refused_sources(source, match):
    with pytest.raises(ImageError, match=match):
        load_image(source)


def test_truncated_file_is_an_image_error():
    raw = encoded(PILImage.fromarray(rgb_array(40, 40)))
    with pytest.raises(ImageError, match="could not be decoded"):
        load_image(raw[: len(raw) // 2])


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixel data at all."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(8193, 4097), (20000, 20000)])  # ours; over Pillow's own bomb limit
def test_pixel_cap_before_decoding(width, height):
    # Nothing to decode in the file: refusing it on its size is the only way to get this error.
    with pytest.raises(ImageError, match="over the limit|too large"):
        load_image(_png_header_only(width, height))


# ---- pixels as HF transformers 5.23 gets them ---------------------------------------------------


def test_alpha_is_dropped_from_files_and_composited_onto_white_for_image_objects():
    a = np.zeros((2, 3, 4), np.uint8)
    a[..., 0], a[..., 1], a[0, 0, 3] = 200, 10, 128
    rgba = PILImage.fromarray(a, "RGBA")
    # Values read off HF 5.23's Gemma4ImageProcessor: fetch_images(data URL) and process_image(PIL image).
    assert load_image(encoded(rgba)).to_numpy()[0].tolist() == [[200, 10, 0]] * 3
    assert load_image(rgba).to_numpy()[0].tolist() == [[227, 132, 127], [255, 255, 255], [255, 255, 255]]
    assert load_image(rgba.convert("RGB")).to_numpy()[0].tolist() == [[200, 10, 0]] * 3


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1", "CMYK", "RGBA"])
def test_modes_convert_as_pillow_converts_a_decoded_file(mode):
    rgba = PILImage.fromarray(np.random.default_rng(1).integers(0, 256, (5, 7, 4), dtype=np.uint8), "RGBA")
    image = rgba.convert("RGB").convert(mode) if mode in ("P", "CMYK") else rgba.convert(mode)
    raw = encoded(image, "JPEG" if mode == "CMYK" else "PNG", **({"quality": 100} if mode == "CMYK" else {}))
    expected = np.asarray(PILImage.open(io.BytesIO(raw)).convert("RGB"))
    assert load_image(raw).to_numpy().tolist() == expected.tolist()


def test_sixteen_bit_gray_is_scaled_to_eight_bits():
    values = np.array([[0, 257, 65535, 1000]], dtype=np.uint16)
    raw = encoded(PILImage.fromarray(values))
    assert load_image(raw).to_numpy()[0, :, 0].tolist() == [0, 1, 255, 4]


def test_exif_orientation_applies_to_files_not_to_image_objects():
    upright = PILImage.fromarray(rgb_array(2, 3))
    exif = upright.getexif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    for fmt in ("PNG", "JPEG"):
        raw = encoded(upright, fmt, exif=exif)
        assert (load_image(raw).width, load_image(raw).height) == (2, 3), fmt
        assert load_image(PILImage.open(io.BytesIO(raw))).width == 3, fmt  # HF leaves an image object as it is


def test_missing_pillow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(VisionDependencyError, match=r'pip install "diffgemma-cpp\[vision\]"'):
        load_image(b"\x89PNG whatever")
    assert load_image(rgb_array()).width == 7  # arrays need no Pillow
