"""Test images and HF's Gemma4ImageProcessor outputs on them, for tests/test_image_preprocess.py.

The images are built here from (kind, width, height, seed) with numpy integer arithmetic only, so the test
rebuilds the same bytes without storing them. `main()` runs HF's default (torchvision) processor on each and
writes tests/data/gemma4_image_fixtures.npz. torchvision cannot be imported beside the test venv's torch, so run
it with a venv that has torch + torchvision + transformers 5.23.0:

    /work/venv-tv/bin/python tests/image_fixtures.py

Stored per case (only the real patches, not HF's padding): the positions, the soft-token count, the resized size
and, where HF resized the image, the patches as bytes: HF's floats are exactly rescale_table[byte], the 256 floats
HF's rescale gives (main() checks every value). The bytes are stored as differences from the same channel of the
previous pixel (decode_patches), which shrinks smooth images several times. Where HF did not resize, the patches
are the input's bytes and nothing more is stored.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "data" / "gemma4_image_fixtures.npz"

# (patch_size, pooling_kernel_size, max_soft_tokens): the release's, the smallest budget, a SigLIP-like one.
SETTINGS = {"A": (16, 3, 280), "B": (16, 3, 70), "C": (14, 2, 140)}

# name -> (kind, width, height, seed, setting). Sizes pick the paths of HF's code: shrink, enlarge, no resize
# (the size is already a fixed point of the target rule), one side rounding to 0 (strips), a 1x1 image, a large one.
CASES = {
    "gradient_1024x768_A": ("gradient", 1024, 768, 0, "A"),
    "noise_1024x768_B": ("noise", 1024, 768, 1, "B"),
    "edges_1000x300_A": ("edges", 1000, 300, 2, "A"),
    "noise_12x9_A": ("noise", 12, 9, 3, "A"),
    "blocks_640x480_A": ("blocks", 640, 480, 15, "A"),
    "noise_37x613_C": ("noise", 37, 613, 4, "C"),
    "gradient_613x37_B": ("gradient", 613, 37, 5, "B"),
    "noise_1x1_A": ("noise", 1, 1, 6, "A"),
    "noise_5x7_C": ("noise", 5, 7, 7, "C"),
    "allbytes_336x480_B": ("allbytes", 336, 480, 8, "B"),  # 336 * 480 = 70 * 48^2: no resize
    "noise_280x392_C": ("noise", 280, 392, 9, "C"),  # 280 * 392 = 140 * 4 * 14^2: no resize
    "gradient_768x768_A": ("gradient", 768, 768, 10, "A"),  # a fixed point of the rule: no resize
    "gradient_912x700_A": ("gradient", 912, 700, 16, "A"),  # -> 912 x 672: the height pass alone
    "edges_950x672_A": ("edges", 950, 672, 17, "A"),  # -> 912 x 672: the width pass alone
    "blocks_2000x3_B": ("blocks", 2000, 3, 11, "B"),  # height rounds to 0
    "edges_5x2000_C": ("edges", 5, 2000, 12, "C"),  # width rounds to 0
    "edges_4000x3000_C": ("edges", 4000, 3000, 13, "C"),  # 12 MP, shrunk 13x: the widest filters
    "noise_4000x3000_B": ("noise", 4000, 3000, 14, "B"),
}

# HF's size rule (get_aspect_ratio_preserving_size) is recorded on many shapes for these settings; the last has
# max_soft_tokens = 1, which HF's processor refuses but its size function takes: the only way to its 0 x 0 error.
SIZE_RULE_SETTINGS = [(16, 3, 280), (16, 3, 70), (14, 2, 140), (16, 3, 1120), (14, 1, 560), (16, 4, 70), (1, 1, 70),
                      (16, 3, 1)]
MAX_PIXELS = 1 << 25  # DIFFGEMMA_IMAGE_MAX_PIXELS (the test checks that they agree)


def size_rule_shapes() -> np.ndarray:
    """(n, 2) (width, height): corners, strips whose short side rounds to 0, random shapes, small squares."""
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (1, 2), (2, 1), (1, 5000), (5000, 1), (3, 2000), (2000, 3), (1, MAX_PIXELS), (MAX_PIXELS, 1),
              (5792, 5792), (4096, 8192), (281 * 3, 3), (3, 281 * 3), (280 * 7, 7), (279 * 7 + 6, 7)]
    shapes += [tuple(int(v) for v in rng.integers(1, 4000, 2)) for _ in range(300)]
    shapes += [(int(w), int(rng.integers(1, 40))) for w in rng.integers(500, 40000, 60)]
    shapes += [(s, s) for s in range(1, 100)]
    return np.array([(w, h) for w, h in shapes if w * h <= MAX_PIXELS], np.int64)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _hash_bytes(n: int, seed: int) -> np.ndarray:
    """n pseudo-random bytes: splitmix64's finaliser over the indices (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = (np.arange(n, dtype=np.uint64) + np.uint64(seed) * _GOLDEN) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(56)).astype(np.uint8)


def make_image(kind: str, width: int, height: int, seed: int) -> np.ndarray:
    """A (height, width, 3) uint8 RGB image. Broadcast (h, 1) and (1, w) coordinates keep a 12 MP image cheap."""
    y, x = np.ogrid[0:height, 0:width]
    y, x = y.astype(np.int64), x.astype(np.int64)
    rgb = np.empty((height, width, 3), np.uint8)
    if kind == "noise":
        return _hash_bytes(width * height * 3, seed).reshape(height, width, 3)
    if kind == "gradient":  # smooth ramps: the filter's accuracy away from clamping
        rgb[..., 0] = x * 255 // max(width - 1, 1)
        rgb[..., 1] = y * 255 // max(height - 1, 1)
        rgb[..., 2] = (x + y) * 255 // max(width + height - 2, 1)
        return rgb
    if kind == "edges":  # black/white blocks and a red diagonal: overshoot, so clamping at 0 and 255
        block = max(1, min(width, height) // 7)
        check = (((x // block + y // block + seed) % 2) * 255).astype(np.uint8)
        rgb[..., 0] = check
        rgb[..., 1] = 255 - check
        rgb[..., 2] = check
        rgb[np.abs(x * height - y * width) < max(width, height)] = (255, 0, 0)
        return rgb
    if kind == "blocks":  # random 8x8 blocks: flat areas and edges of every height, like a photo's
        cells = _hash_bytes(((height + 7) // 8) * ((width + 7) // 8) * 3, seed).reshape((height + 7) // 8, -1, 3)
        return np.ascontiguousarray(cells[y // 8, x // 8])
    if kind == "allbytes":  # every byte value in every channel: the rescale table
        i = y * width + x
        rgb[..., 0] = i % 256
        rgb[..., 1] = (i * 7 + 3) % 256
        rgb[..., 2] = (255 - i) % 256
        return rgb
    raise ValueError(f"unknown image kind {kind!r}")


def encode_patches(patches: np.ndarray) -> np.ndarray:
    flat = patches.reshape(-1, 3)
    return np.diff(flat, axis=0, prepend=np.zeros((1, 3), np.uint8))


def decode_patches(stored: np.ndarray, n_patches: int) -> np.ndarray:
    """(n_patches, patch_size^2 * 3) bytes from encode_patches' differences (uint8 sums wrap as they were taken)."""
    return np.cumsum(stored, axis=0, dtype=np.uint8).reshape(n_patches, -1)


def input_patches(img: np.ndarray, patch_size: int) -> np.ndarray:
    """HF's patch rows of an image that is not resized: (row, column, channel) within each patch."""
    h, w, _ = img.shape
    return (img.reshape(h // patch_size, patch_size, w // patch_size, patch_size, 3)
            .transpose(0, 2, 1, 3, 4).reshape((h // patch_size) * (w // patch_size), -1))


def image_digest(img: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest()[:16]


def main() -> None:
    import torch
    import torchvision
    import transformers
    from transformers.models.gemma4.image_processing_gemma4 import (Gemma4ImageProcessor,
                                                                    get_aspect_ratio_preserving_size)

    arrays: dict[str, np.ndarray] = {}
    meta = {"versions": {"torch": torch.__version__, "torchvision": torchvision.__version__,
                         "transformers": transformers.__version__,
                         "cpu_capability": torch.backends.cpu.get_cpu_capability()},
            "cases": {}}
    table = None  # byte -> HF's float32, learnt from the no-resize cases, checked on all
    outputs = {}
    for name, (kind, width, height, seed, setting) in CASES.items():
        patch, pooling, budget = SETTINGS[setting]
        img = make_image(kind, width, height, seed)
        proc = Gemma4ImageProcessor(patch_size=patch, pooling_kernel_size=pooling, max_soft_tokens=budget)
        out = proc(images=[img], input_data_format="channels_last", return_tensors="pt")
        pixels = out["pixel_values"][0].numpy()
        positions = out["image_position_ids"][0].numpy()
        n_soft = int(out["num_soft_tokens_per_image"][0])
        n = n_soft * pooling * pooling
        assert pixels.dtype == np.float32 and (pixels[n:] == 0).all() and (positions[n:] == -1).all()
        th, tw = get_aspect_ratio_preserving_size(height, width, patch, budget * pooling * pooling, pooling)
        assert (th // patch) * (tw // patch) == n
        outputs[name] = (pixels[:n], (tw, th) != (width, height))
        if (tw, th) == (width, height):  # no resize: the patches hold the input bytes
            src = input_patches(img, patch)
            learnt = np.full(256, np.nan, np.float32)
            learnt[src.ravel()] = pixels[:n].ravel()
            if table is None:
                table = learnt
            else:
                ok = ~np.isnan(learnt)
                table[ok & np.isnan(table)] = learnt[ok & np.isnan(table)]
                assert np.array_equal(table[ok], learnt[ok])
        arrays[f"{name}/positions"] = positions[:n].astype(np.int16)
        meta["cases"][name] = {"kind": kind, "width": width, "height": height, "seed": seed,
                               "patch_size": patch, "pooling": pooling, "max_soft_tokens": budget,
                               "n_soft_tokens": n_soft, "out_width": tw, "out_height": th,
                               "input_sha256_16": image_digest(img)}
    assert table is not None and not np.isnan(table).any(), "no no-resize case covered every byte value"
    for name, (pixels, resized) in outputs.items():
        as_bytes = np.rint(pixels * 255.0).astype(np.uint8)
        assert np.array_equal(table[as_bytes], pixels), f"{name}: HF's floats are not table[byte]"
        if resized:
            arrays[f"{name}/patch_bytes_delta"] = encode_patches(as_bytes)
    arrays["rescale_table"] = table
    # HF's target (width, height) per setting and shape; (-1, -1) where it raised ValueError.
    shapes = size_rule_shapes()
    sizes = np.zeros((len(SIZE_RULE_SETTINGS), len(shapes), 2), np.int64)
    for i, (patch, pooling, budget) in enumerate(SIZE_RULE_SETTINGS):
        for j, (width, height) in enumerate(shapes):
            try:
                th, tw = get_aspect_ratio_preserving_size(int(height), int(width), patch, budget * pooling * pooling,
                                                          pooling)
                sizes[i, j] = (tw, th)
            except ValueError:
                sizes[i, j] = (-1, -1)
    arrays["size_rule_settings"] = np.array(SIZE_RULE_SETTINGS, np.int64)
    arrays["size_rule_shapes"] = shapes
    arrays["size_rule_sizes"] = sizes
    arrays["meta_json"] = np.frombuffer(json.dumps(meta, indent=1).encode(), dtype=np.uint8)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB, {len(CASES)} cases)")


if __name__ == "__main__":
    main()
