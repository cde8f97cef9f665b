"""Images in the prompt, end to end against HF transformers 5.23.0: a tiny random DiffusionGemma with a vision
tower, converted by our converter (text GGUF + `--mmproj` projector), run by our engine.

What is checked here is the encoder's side of images (the projector's own output is test_vision_tower.py's,
the preprocessing test_image_preprocess.py's): the features replace the soft tokens' embeddings unscaled, an
image's span attends both ways in the encoder, chunking never cuts a span, the prefix cache keeps an image only
when it is the same pixels, and generation replays HF's token for token. HF gets the pixel values our C
preprocessing made (the preprocessing is compared with HF's separately), so one difference cannot hide another.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import tiny_hf
from diffgemma_cpp import Model, errors
from diffgemma_cpp._native import ffi, lib
from diffgemma_cpp.convert import convert_checkpoint

MAX_SOFT_TOKENS = 70  # the smallest budget HF allows: 630 patches per image keeps the tiny tower fast
PATCH, POOL = 16, 3
IMAGE_TOKEN = tiny_hf.TINY_IMAGE_TOKEN_IDS["image_token_id"]
BOI, EOI = tiny_hf.TINY_IMAGE_TOKEN_IDS["boi_token_id"], tiny_hf.TINY_IMAGE_TOKEN_IDS["eoi_token_id"]


@functools.lru_cache(maxsize=None)
def _files(variant: str = "") -> tuple:
    """(HF checkpoint dir, text GGUF, projector GGUF) of the tiny vision model; "replay" = the calm weights the
    text replay test uses (random weights at full scale make sampling chaotic)."""
    import tempfile
    from pathlib import Path

    root = Path(tempfile.mkdtemp(prefix="dg-vision-"))
    kwargs = {"": {}, "replay": dict(weight_scale=0.08, self_conditioning_gain=0.1),
              "trained": dict(conditioning="trained_like")}[variant]
    ckpt = tiny_hf.make_tiny_vision_checkpoint(root / "hf", seed=3, max_soft_tokens=MAX_SOFT_TOKENS, **kwargs)
    text, mmproj = root / "model-f32.gguf", root / "mmproj-f32.gguf"
    convert_checkpoint(ckpt, text, "f32", mmproj=mmproj, progress=False, quiet=True)
    return ckpt, text, mmproj


@functools.lru_cache(maxsize=None)
def _quantized_files(variant: str, outtype: str) -> tuple:
    """The same checkpoint as _files(variant), text model and projector both converted to `outtype`."""
    ckpt, text, _ = _files(variant)
    q_text, q_mmproj = text.with_name(f"model-{outtype}.gguf"), text.with_name(f"mmproj-{outtype}.gguf")
    convert_checkpoint(ckpt, q_text, outtype, mmproj=q_mmproj, progress=False, quiet=True)
    return q_text, q_mmproj


@functools.lru_cache(maxsize=None)
def _hf(variant: str = ""):
    from transformers import DiffusionGemmaForBlockDiffusion

    return DiffusionGemmaForBlockDiffusion.from_pretrained(str(_files(variant)[0]), dtype=torch.float64).eval()


def _image(seed: int, width: int, height: int) -> np.ndarray:
    """A smooth picture with some edges (noise alone averages out in the pooling)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / (7 + c) + seed) * np.cos(y / (5 + 2 * c)) for c in range(3)], -1)
    img = 127.5 * (1 + base) + rng.normal(0, 20, (height, width, 3))
    img[height // 3: height // 2, width // 4: width // 2] = rng.integers(0, 256, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _preprocess(img: np.ndarray):
    """Our C preprocessing: pixel values [n_patches, 768] and positions [n_patches, 2] for HF."""
    h, w = img.shape[:2]
    c_img = ffi.new("diffgemma_image *", {"rgb": ffi.from_buffer("uint8_t[]", img), "width": w, "height": h})
    n = lib.diffgemma_image_preprocess(c_img, PATCH, POOL, MAX_SOFT_TOKENS, ffi.NULL, ffi.NULL, 0, ffi.NULL, ffi.NULL)
    assert n > 0, ffi.string(lib.diffgemma_last_error()).decode()
    pixels = np.empty((n, PATCH * PATCH * 3), dtype=np.float32)
    positions = np.empty((n, 2), dtype=np.int32)
    got = lib.diffgemma_image_preprocess(c_img, PATCH, POOL, MAX_SOFT_TOKENS, ffi.from_buffer("float[]", pixels),
                                         ffi.from_buffer("int32_t[]", positions), n, ffi.NULL, ffi.NULL)
    assert got == n
    return pixels, positions


def _prompt(seed: int, n_vocab: int, before: int = 5, between: int = 3, after: int = 4,
            n_tokens=None) -> list:
    """<bos> text (<|image> soft tokens x n <image|> text)* with random text ids outside the image markers."""
    rng = np.random.default_rng(seed)
    text = lambda k: [int(t) for t in rng.integers(60, n_vocab, k)]  # noqa: E731 (past the special ids)
    ids = [2] + text(before)
    for i, n in enumerate(n_tokens):
        ids += [BOI] + [IMAGE_TOKEN] * n + [EOI] + text(between if i + 1 < len(n_tokens) else after)
    return ids


def _hf_inputs(images: list):
    pix, pos = zip(*(_preprocess(img) for img in images))
    # One image per batch row of pixel_values is HF's layout; different sizes would need padding, so the tests
    # give several images the same size.
    return torch.from_numpy(np.stack(pix)).double(), torch.from_numpy(np.stack(pos)).long()


def _hf_logits(hf, prompt: list, images: list, canvas: list) -> np.ndarray:
    """HF's decoder logits for `canvas` after its encoder saw prompt + images, masks made by HF's own
    generation code (its plain forward ignores the bidirectional image mask: it builds masks and drops them)."""
    from transformers.cache_utils import DynamicCache

    ids = torch.tensor([prompt])
    P, C = ids.shape[1], hf.config.canvas_length
    cache = DynamicCache(config=hf.config.get_text_config(decoder=True))
    mm = (ids == IMAGE_TOKEN).long()
    pos_ids = torch.arange(P)[None]
    with torch.no_grad():
        _, masks = hf._prepare_encoder_inputs(input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool),
                                              encoder_position_ids=pos_ids, past_key_values=cache, is_prefill=True,
                                              canvas_length=C, batch_size=1, mm_token_type_ids=mm)
        kwargs = {}
        if images:
            kwargs = dict(zip(("pixel_values", "image_position_ids"), _hf_inputs(images)))
        hf.model.encoder(input_ids=ids, attention_mask=masks, past_key_values=cache, position_ids=pos_ids,
                         mm_token_type_ids=mm, **kwargs)
        return hf(decoder_input_ids=torch.tensor([canvas]), past_key_values=cache).logits[0].numpy()


def _ours(prompt, images, canvas, files=None, **kwargs) -> np.ndarray:
    text, mmproj = files or _files()[1:]
    with Model(text, mmproj=mmproj, n_threads=2, **kwargs) as m:
        m.encode(prompt, images=images)
        return m.decoder_logits(canvas)


def _canvas(seed: int) -> list:
    hf = _hf()
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, hf.config.text_config.vocab_size, (hf.config.canvas_length,), generator=g).tolist()


def _n_tokens(img) -> int:
    _, text, mmproj = _files()
    with Model(text, mmproj=mmproj, n_threads=1) as m:
        return m.image_n_tokens(img.shape[1], img.shape[0])


@pytest.mark.parametrize("shape", [(150, 100), (37, 300)], ids=["landscape", "tall-thin"])
def test_decoder_logits_with_an_image_match_hf(shape):
    img = _image(1, *shape)
    hf = _hf()
    n = _n_tokens(img)
    prompt = _prompt(11, hf.config.text_config.vocab_size, n_tokens=[n])
    canvas = _canvas(5)
    ref = _hf_logits(hf, prompt, [img], canvas)
    ours = _ours(prompt, [img], canvas)
    err = float(np.max(np.abs(ours - ref)))
    print(f"image {shape[0]}x{shape[1]} ({n} soft tokens): decoder logits max|d| vs HF f64 = {err:.2e}")
    assert err <= 1e-3
    # The image must matter (or the comparison proves nothing): HF with another picture gives other logits.
    other = _hf_logits(hf, prompt, [_image(2, *shape)], canvas)
    assert np.max(np.abs(other - ref)) > 1e-2


# The text path's bounds for its quantized files on a trained-like model (test_engine_parity.py), here with an
# image in the prompt: the projector converted to the same type as the text model.
QUANTIZED_BOUNDS = [("f16", 1e-4), ("q8_0", 1e-3)]


@pytest.mark.parametrize("outtype,bound", QUANTIZED_BOUNDS)
def test_quantized_files_with_an_image_within_the_text_bounds(outtype, bound):
    img = _image(10, 140, 100)
    hf = _hf("trained")
    n = _n_tokens(img)
    prompt = _prompt(16, hf.config.text_config.vocab_size, n_tokens=[n])
    canvas = _canvas(9)
    ref = _hf_logits(hf, prompt, [img], canvas)
    ours = _ours(prompt, [img], canvas, files=_quantized_files("trained", outtype))
    nmse = float(np.sum((ours - ref) ** 2) / np.sum(ref ** 2))
    print(f"trained-like model, {outtype} text + projector, one image: NMSE vs HF f64 = {nmse:.2e}")
    assert nmse <= bound


def test_two_images_and_bidirectional_spans_match_hf():
    imgs = [_image(3, 120, 90), _image(4, 120, 90)]
    hf = _hf()
    n = _n_tokens(imgs[0])
    prompt = _prompt(12, hf.config.text_config.vocab_size, n_tokens=[n, n])
    canvas = _canvas(6)
    ref = _hf_logits(hf, prompt, imgs, canvas)
    err = float(np.max(np.abs(_ours(prompt, imgs, canvas) - ref)))
    print(f"two images ({n} soft tokens each): max|d| = {err:.2e}")
    assert err <= 1e-3


def test_an_image_is_never_cut_by_an_encoder_chunk():
    """With n_batch just above the span, the chunk boundary would fall inside the image: the engine ends the
    chunk before it instead, and the logits equal those of one big chunk (to rounding)."""
    img = _image(5, 100, 100)
    hf = _hf()
    n = _n_tokens(img)
    prompt = _prompt(13, hf.config.text_config.vocab_size, n_tokens=[n], before=9)
    canvas = _canvas(7)
    whole = _ours(prompt, [img], canvas)
    chunked = _ours(prompt, [img], canvas, n_batch=n + 2)
    assert float(np.max(np.abs(whole - chunked))) <= 1e-4
    with pytest.raises(errors.InvalidArgumentError, match="n_batch"):
        _ours(prompt, [img], canvas, n_batch=n - 1)


def test_prefix_cache_keeps_an_image_only_when_its_pixels_are_the_same():
    a, b = _image(6, 110, 80), _image(7, 110, 80)
    hf = _hf()
    n = _n_tokens(a)
    prompt = _prompt(14, hf.config.text_config.vocab_size, n_tokens=[n])
    canvas = _canvas(8)
    _, text, mmproj = _files()
    with Model(text, mmproj=mmproj, n_threads=2) as m:
        first = list(m.generate_blocks(prompt, max_new_tokens=1, steps=2, seed=1, images=[a]))
        again = list(m.generate_blocks(prompt, max_new_tokens=1, steps=2, seed=1, images=[a]))
        assert first[0].canvas == again[0].canvas  # the same prompt and pixels: the cached prefix is reused
        other = list(m.generate_blocks(prompt, max_new_tokens=1, steps=2, seed=1, images=[b]))
    with Model(text, mmproj=mmproj, n_threads=2) as fresh:
        expected = list(fresh.generate_blocks(prompt, max_new_tokens=1, steps=2, seed=1, images=[b]))
    assert other[0].canvas == expected[0].canvas, "the cache kept image a's K/V for image b"
    assert other[0].canvas != first[0].canvas


def test_image_errors_are_specific():
    img = _image(8, 100, 100)
    _, text, mmproj = _files()
    hf = _hf()
    n = _n_tokens(img)
    prompt = _prompt(15, hf.config.text_config.vocab_size, n_tokens=[n])
    with Model(text, mmproj=mmproj, n_threads=1) as m:
        with pytest.raises(errors.InvalidArgumentError, match="1 run.* but 0 image"):
            m.encode(prompt)
        with pytest.raises(errors.InvalidArgumentError, match="1 run.* but 2 image"):
            m.encode(prompt, images=[img, img])
        first = prompt.index(IMAGE_TOKEN)
        short = prompt[:first] + prompt[first + 1:]  # one soft token fewer
        with pytest.raises(errors.InvalidArgumentError, match=f"becomes {n} soft tokens"):
            m.encode(short, images=[img])
        m.reset()
        m.encode(prompt, images=[img])  # and the context still works
    with Model(text, n_threads=1) as text_only:
        assert not text_only.has_vision
        with pytest.raises(errors.InvalidArgumentError, match="no vision projector"):
            list(text_only.generate_blocks(prompt, max_new_tokens=1, images=[img]))


def test_generate_replay_with_an_image_matches_hf_token_for_token():
    import engine_fixtures as fx
    from transformers import DiffusionGemmaGenerationConfig, EntropyBoundSamplerConfig

    hf = _hf("replay")
    _, text, mmproj = _files("replay")
    C = hf.config.canvas_length
    img = _image(9, 130, 95)
    pixel_values, image_position_ids = _hf_inputs([img])
    identical, seeds = 0, range(20)
    with Model(text, mmproj=mmproj, n_threads=2) as m:
        n = m.image_n_tokens(130, 95)
        eos = m.eos_ids
        gc = DiffusionGemmaGenerationConfig(max_new_tokens=2 * C, max_denoising_steps=5, t_min=0.4, t_max=0.8,
                                            sampler_config=EntropyBoundSamplerConfig(entropy_bound=2.0),
                                            stability_threshold=1, confidence_threshold=2.5, eos_token_id=eos,
                                            pad_token_id=0)
        for seed in seeds:
            prompt = _prompt(100 + seed, hf.config.text_config.vocab_size, before=3 + seed % 5, n_tokens=[n])
            ids = torch.tensor([prompt])
            torch.manual_seed(seed)
            with fx.DrawRecorder(C) as rec, torch.no_grad():
                ref = hf.generate(ids, generation_config=gc, pixel_values=pixel_values,
                                  image_position_ids=image_position_ids,
                                  mm_token_type_ids=(ids == IMAGE_TOKEN).long()).sequences[0].tolist()
            ours = m.generate_ids(prompt, max_new_tokens=2 * C, steps=5, t_min=0.4, t_max=0.8, entropy_bound=2.0,
                                  stability_threshold=1, confidence_threshold=2.5, replay=rec.replay(), images=[img])
            identical += ours == ref
    print(f"generate replay with an image ({n} soft tokens): identical {identical}/{len(seeds)}")
    assert identical == len(seeds)
