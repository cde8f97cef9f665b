"""diffgemma_image_preprocess equals HF's Gemma4ImageProcessor (transformers 5.23.0).

(a) Against HF's default torchvision backend, through fixtures made by tests/image_fixtures.py (torchvision does
    not import beside this venv's torch): same resized size, positions and soft-token counts, same floats.
(b) Against HF's PIL backend, live when Pillow is here: PIL resizes with its own fixed-point code, so a few bytes
    may differ by one.
(c) Bad arguments get specific errors, never a crash.
(d) HF's size rule (recorded in the fixtures) and where its ValueErrors can happen.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from diffgemma_cpp._native import ffi, lib
import image_fixtures
from image_fixtures import CASES, SETTINGS, decode_patches, image_digest, input_patches, make_image

FIXTURES = Path(__file__).resolve().parent / "data" / "gemma4_image_fixtures.npz"
MAX_PIXELS = lib.DIFFGEMMA_IMAGE_MAX_PIXELS


@pytest.fixture(scope="module")
def fixtures():
    data = np.load(FIXTURES)
    return data, json.loads(bytes(data["meta_json"]))


def _image(rgb: np.ndarray, keep: list):
    """A diffgemma_image over `rgb` (height, width, 3) uint8; `keep` holds the cffi objects alive."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    buf = ffi.from_buffer("uint8_t[]", rgb)
    image = ffi.new("diffgemma_image *", {"rgb": buf, "width": rgb.shape[1], "height": rgb.shape[0]})
    keep += [rgb, buf]
    return image


def c_preprocess(rgb: np.ndarray, patch_size: int, pooling: int, max_soft_tokens: int):
    """(pixels (n, patch^2 * 3) float32, positions (n, 2) int32, (width, height) resized) from the C library."""
    keep: list = []
    image = _image(rgb, keep)
    ow, oh = ffi.new("int32_t *"), ffi.new("int32_t *")
    n = lib.diffgemma_image_preprocess(image, patch_size, pooling, max_soft_tokens, ffi.NULL, ffi.NULL, 0, ow, oh)
    assert n > 0, ffi.string(lib.diffgemma_last_error()).decode()
    pixels = np.full((n, patch_size * patch_size * 3), np.nan, np.float32)
    positions = np.full((n, 2), -7, np.int32)
    got = lib.diffgemma_image_preprocess(image, patch_size, pooling, max_soft_tokens,
                                         ffi.cast("float *", ffi.from_buffer(pixels)),
                                         ffi.cast("int32_t *", ffi.from_buffer(positions)), n, ow, oh)
    assert got == n, ffi.string(lib.diffgemma_last_error()).decode()
    return pixels, positions, (ow[0], oh[0])


# ---- (a) HF's torchvision backend, through the fixtures ------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_matches_hf_torchvision_backend(fixtures, name):
    data, meta = fixtures
    case = meta["cases"][name]
    kind, width, height, seed, setting = CASES[name]
    patch, pooling, budget = SETTINGS[setting]
    img = make_image(kind, width, height, seed)
    assert image_digest(img) == case["input_sha256_16"], "make_image no longer builds the fixture's image"

    pixels, positions, size = c_preprocess(img, patch, pooling, budget)

    assert size == (case["out_width"], case["out_height"])
    n = case["n_soft_tokens"] * pooling * pooling
    assert pixels.shape == (n, patch * patch * 3)
    assert len(pixels) // (pooling * pooling) == case["n_soft_tokens"]
    np.testing.assert_array_equal(positions, data[f"{name}/positions"].astype(np.int32))
    key = f"{name}/patch_bytes_delta"
    hf_bytes = decode_patches(data[key], n) if key in data.files else input_patches(img, patch)
    hf = data["rescale_table"][hf_bytes]
    diff = float(np.abs(pixels.astype(np.float64) - hf).max())
    print(f"{name}: {size[0]}x{size[1]}, {n} patches, max |delta| vs HF torchvision = {diff:.3g}")
    assert diff <= 1e-6
    # In fact bit-exact: same bytes out of the resize, same float32 rescale.
    assert np.array_equal(pixels, hf)


def test_rescale_is_hfs_float32_product(fixtures):
    """HF multiplies the uint8 tensor by the Python float 1/255: float32(byte) * float32(1/255), not byte / 255."""
    table = fixtures[0]["rescale_table"]
    np.testing.assert_array_equal(table, np.arange(256, dtype=np.float32) * np.float32(1 / 255))
    assert (table != np.arange(256, dtype=np.float32) / np.float32(255)).sum() > 0  # the two really differ


# ---- (b) HF's PIL backend, live -------------------------------------------------------------------------------

PIL_CASES = ["gradient_1024x768_A", "edges_1000x300_A", "blocks_640x480_A", "noise_12x9_A", "noise_37x613_C",
             "noise_1024x768_B", "allbytes_336x480_B"]


@pytest.mark.parametrize("name", PIL_CASES)
def test_close_to_hf_pil_backend(name):
    pil_image = pytest.importorskip("PIL.Image")
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    kind, width, height, seed, setting = CASES[name]
    patch, pooling, budget = SETTINGS[setting]
    img = make_image(kind, width, height, seed)
    proc = Gemma4ImageProcessorPil(patch_size=patch, pooling_kernel_size=pooling, max_soft_tokens=budget)
    out = proc(images=[pil_image.fromarray(img)], return_tensors="np")
    n_soft = int(out["num_soft_tokens_per_image"][0])
    n = n_soft * pooling * pooling
    hf_pixels = np.asarray(out["pixel_values"][0][:n], np.float64)
    hf_positions = np.asarray(out["image_position_ids"][0][:n])

    pixels, positions, _ = c_preprocess(img, patch, pooling, budget)
    np.testing.assert_array_equal(positions, hf_positions)
    diff = np.abs(pixels.astype(np.float64) - hf_pixels)
    off_by_byte = float((diff > 0.5 / 255).mean())
    print(f"{name}: max |delta| vs HF PIL = {diff.max():.3g} ({diff.max() * 255:.2f}/255), "
          f"{off_by_byte:.2%} of values off by a byte level or more")
    # PIL's resize rounds with 22 fixed-point bits in both passes where torch picks the bits per pass, and HF's
    # PIL path rescales in float64: bytes may differ by one level, rarely more, and a few values by one float ulp.
    assert diff.max() <= 3 / 255 + 1e-6
    assert off_by_byte < 0.05


# ---- (c) bad arguments -----------------------------------------------------------------------------------------

def _status_and_reason(status):
    return ffi.string(lib.diffgemma_status_name(status)).decode(), ffi.string(lib.diffgemma_last_error()).decode()


def _call(image, patch=16, pooling=3, budget=280, pixels=ffi.NULL, positions=ffi.NULL, capacity=0, ow=ffi.NULL,
          oh=ffi.NULL):
    return lib.diffgemma_image_preprocess(image, patch, pooling, budget, pixels, positions, capacity, ow, oh)


def test_null_pointers_are_refused():
    assert _status_and_reason(_call(ffi.NULL)) == ("DIFFGEMMA_ERR_INVALID_ARGUMENT", "image is NULL")
    image = ffi.new("diffgemma_image *", {"rgb": ffi.NULL, "width": 4, "height": 4})
    assert _status_and_reason(_call(image)) == ("DIFFGEMMA_ERR_INVALID_ARGUMENT", "image rgb is NULL")


@pytest.mark.parametrize("width,height", [(0, 5), (5, 0), (-1, 5), (5, -2147483648), (0, 0)])
def test_empty_or_negative_sizes_are_refused(width, height):
    one = ffi.new("uint8_t[3]")
    image = ffi.new("diffgemma_image *", {"rgb": one, "width": width, "height": height})
    status, reason = _status_and_reason(_call(image))
    assert status == "DIFFGEMMA_ERR_INVALID_ARGUMENT" and "at least 1 pixel" in reason


@pytest.mark.parametrize("width,height", [(MAX_PIXELS + 1, 1), (1 << 13, (1 << 12) + 1), (2147483647, 2147483647)])
def test_pixel_bombs_are_refused_before_reading(width, height):
    one = ffi.new("uint8_t[3]")  # far too small: the size check must come before any read
    image = ffi.new("diffgemma_image *", {"rgb": one, "width": width, "height": height})
    status, reason = _status_and_reason(_call(image))
    assert status == "DIFFGEMMA_ERR_INVALID_ARGUMENT" and "DIFFGEMMA_IMAGE_MAX_PIXELS" in reason


def test_the_pixel_cap_itself_is_accepted():
    one = ffi.new("uint8_t[3]")
    image = ffi.new("diffgemma_image *", {"rgb": one, "width": MAX_PIXELS, "height": 1})
    ow, oh = ffi.new("int32_t *"), ffi.new("int32_t *")
    assert _call(image, ow=ow, oh=oh) == 280 * 9  # count only: nothing read; a 48 x 13440 strip
    assert (ow[0], oh[0]) == (13440, 48)


@pytest.mark.parametrize("patch,pooling,budget,needle", [
    (0, 3, 280, "patch_size 0"), (-16, 3, 280, "patch_size -16"), (16, 0, 280, "pooling 0"),
    (16, -3, 280, "pooling -3"), (16, 3, 0, "max_soft_tokens 0"), (16, 3, 100, "max_soft_tokens 100"),
    (16, 3, 1, "max_soft_tokens 1"), (16, 3, -280, "max_soft_tokens -280"),
    (1024, 3, 280, "DIFFGEMMA_IMAGE_MAX_PIXELS"), (16, 64, 1120, "DIFFGEMMA_IMAGE_MAX_PIXELS"),
    (2147483647, 2147483647, 1120, "DIFFGEMMA_IMAGE_MAX_PIXELS"),
])
def test_bad_patch_settings_are_refused(patch, pooling, budget, needle):
    keep: list = []
    image = _image(make_image("noise", 9, 7, 0), keep)
    status, reason = _status_and_reason(_call(image, patch, pooling, budget))
    assert status == "DIFFGEMMA_ERR_INVALID_ARGUMENT" and needle in reason


def test_every_budget_hf_accepts_is_accepted():
    keep: list = []
    image = _image(make_image("noise", 9, 7, 0), keep)
    for budget in (70, 140, 280, 560, 1120):
        assert _call(image, 16, 3, budget) > 0


def test_buffer_contract():
    keep: list = []
    img = make_image("gradient", 40, 30, 0)
    image = _image(img, keep)
    ow, oh = ffi.new("int32_t *"), ffi.new("int32_t *")
    n = _call(image, 14, 2, 70, ow=ow, oh=oh)  # NULL buffers: the count only
    assert n == (ow[0] // 14) * (oh[0] // 14) and n > 0
    pixels = np.zeros((n, 14 * 14 * 3), np.float32)
    positions = np.zeros((n, 2), np.int32)
    pix = ffi.cast("float *", ffi.from_buffer(pixels))
    pos = ffi.cast("int32_t *", ffi.from_buffer(positions))
    ow[0] = oh[0] = -1
    status, reason = _status_and_reason(_call(image, 14, 2, 70, pix, pos, n - 1, ow, oh))
    assert status == "DIFFGEMMA_ERR_BUFFER_TOO_SMALL" and f"{n} patches" in reason
    assert ow[0] > 0 and oh[0] > 0  # the size is still reported
    assert not pixels.any() and not positions.any()  # nothing written
    assert _status_and_reason(_call(image, 14, 2, 70, pix, pos, -1))[0] == "DIFFGEMMA_ERR_INVALID_ARGUMENT"
    # Positions alone (pixels NULL) and pixels alone both work and agree with the full call.
    full_pixels, full_positions, _ = c_preprocess(img, 14, 2, 70)
    assert _call(image, 14, 2, 70, ffi.NULL, pos, n) == n
    np.testing.assert_array_equal(positions, full_positions)
    assert _call(image, 14, 2, 70, pix, ffi.NULL, n) == n
    np.testing.assert_array_equal(pixels, full_pixels)


# ---- (d) HF's size rule and its errors -------------------------------------------------------------------------

def test_max_pixels_agree():
    assert MAX_PIXELS == image_fixtures.MAX_PIXELS


def test_target_size_and_counts_match_hf(fixtures):
    """HF's get_aspect_ratio_preserving_size, recorded by tests/image_fixtures.py on 474 shapes (strips whose
    short side rounds to 0 among them) for 7 settings HF accepts: the same target and patch count everywhere, and
    HF never raised for them."""
    data = fixtures[0]
    one = ffi.new("uint8_t[3]")  # count-only calls read no pixel
    ow, oh = ffi.new("int32_t *"), ffi.new("int32_t *")
    checked = 0
    for (patch, pooling, budget), sizes in zip(data["size_rule_settings"], data["size_rule_sizes"]):
        if budget not in (70, 140, 280, 560, 1120):
            continue
        assert (sizes >= 0).all(), "HF raised for a budget its processor accepts"
        for (width, height), (tw, th) in zip(data["size_rule_shapes"], sizes):
            image = ffi.new("diffgemma_image *", {"rgb": one, "width": int(width), "height": int(height)})
            n = _call(image, int(patch), int(pooling), int(budget), ow=ow, oh=oh)
            assert (ow[0], oh[0], n) == (tw, th, (tw // patch) * (th // patch)), (width, height, patch, budget)
            assert n % (pooling * pooling) == 0 and n // (pooling * pooling) <= budget
            checked += 1
    assert checked >= 7 * 470


def test_hf_zero_size_error_needs_a_budget_hf_refuses(fixtures):
    """HF raises its 0 x 0 ValueError only when both ideal sides fall below patch_size * pooling. Their product,
    the ideal area, is max_soft_tokens * (patch_size * pooling)^2, so that takes max_soft_tokens = 1 (and float
    rounding): a budget HF's processor itself refuses. Our C API refuses it up front (INVALID_ARGUMENT). HF's other
    ValueError (more than max_patches) cannot happen either: both sides are rounded down."""
    data = fixtures[0]
    settings = [tuple(int(v) for v in row) for row in data["size_rule_settings"]]
    raised = data["size_rule_sizes"][settings.index((16, 3, 1))][:, 0] == -1
    assert raised.any(), "expected HF's 0 x 0 error for some shapes with max_soft_tokens = 1"
    width, height = (int(v) for v in data["size_rule_shapes"][raised][0])
    keep: list = []
    image = _image(make_image("noise", width, height, 0), keep)
    status, reason = _status_and_reason(_call(image, 16, 3, 1))
    assert status == "DIFFGEMMA_ERR_INVALID_ARGUMENT" and "max_soft_tokens 1" in reason
    if importlib.util.find_spec("PIL") is not None:  # HF's processor refuses that budget too
        from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
        with pytest.raises(ValueError, match="max_soft_tokens"):
            Gemma4ImageProcessorPil(max_soft_tokens=1)
