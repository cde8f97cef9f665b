"""The vision tower + projection (issue 19): diffgemma_image_embed against HF transformers 5.23.0's
Gemma4VisionModel + DiffusionGemmaMultimodalEmbedder (DiffusionGemma's get_image_features) in float64.

Tiny random towers of several geometries (head size other than n_embd / n_head, pooling 2 and 3, with and without
standardize) are written as projector GGUFs in llama.cpp's gemma4v layout with the names of gguf_names.def, and
loaded next to the tiny "small" text model (n_embd 64). HF is fed exactly what HF's image processor produces for
the same pixels (the patches and positions, padded to max_patches with position -1 as the processor pads them);
which patches our preprocessing makes is the preprocessing's own test.
"""
from __future__ import annotations

import types

import numpy as np
import pytest
import torch

import engine_fixtures
from diffgemma_cpp import Model, errors
from diffgemma_cpp._native import ffi, lib
from diffgemma_cpp.names import key, layer_tensor, tensor

TEXT = "small"  # tiny_hf: n_embd 64


def _text_gguf():
    return engine_fixtures.gguf(TEXT)


# name -> (vision config kwargs, max_soft_tokens, standardize)
TOWERS = {
    # head_dim 24 = n_embd / n_head, pooling 2, standardize
    "p4k2": (dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, head_dim=24,
                  patch_size=4, pooling_kernel_size=2, position_embedding_size=160), 70, True),
    # head_dim 16 with n_embd 32 and 4 heads (q/k/v are 64 wide), pooling 3, no standardize, eps 1e-5
    "p8k3": (dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, head_dim=16,
                  patch_size=8, pooling_kernel_size=3, position_embedding_size=256, rms_norm_eps=1e-5), 70, False),
    # widths that Q8_0 can hold (multiples of 32)
    "q": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, head_dim=32,
               patch_size=4, pooling_kernel_size=2, position_embedding_size=40), 70, True),
}


def build_tower(name: str, seed: int = 0, text_hidden: int = 64, calm: bool = False):
    """A random HF vision tower and projection (float64), in eval mode. Its q and k norms are around 1, so the
    attention logits (not scaled: q and k are normalised) reach the head size: a network that magnifies any
    rounding, the strictest test of exact f32 arithmetic. calm=True scales them by head_dim^-1/4 (logits of a
    few units), to judge a quantized file's activation rounding as a trained network would feel it."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaMultimodalEmbedder
    from transformers.models.gemma4.configuration_gemma4 import Gemma4VisionConfig
    from transformers.models.gemma4.modeling_gemma4 import Gemma4VisionModel

    kwargs, max_soft, standardize = TOWERS[name]
    cfg = Gemma4VisionConfig(num_key_value_heads=kwargs["num_attention_heads"], standardize=standardize,
                             rope_parameters={"rope_type": "axial", "rope_theta": 100.0}, **kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    tower = Gemma4VisionModel(cfg).eval()
    embed = DiffusionGemmaMultimodalEmbedder(cfg, types.SimpleNamespace(hidden_size=text_hidden)).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in (tower, embed):
            for pname, p in list(mod.named_parameters()) + list(mod.named_buffers()):
                if "inv_freq" in pname:
                    continue
                noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
                if p.ndim == 1 or "norm" in pname or "std_scale" in pname:
                    p.copy_(1.0 + 0.3 * noise)
                elif "std_bias" in pname or "position_embedding" in pname:
                    p.copy_(0.5 * noise)
                else:
                    p.copy_(noise / np.sqrt(p.shape[-1]))
                if calm and ("q_norm" in pname or "k_norm" in pname):
                    p.mul_(cfg.head_dim ** -0.25)
    return tower.double(), embed.double(), max_soft


def _matrix(arr: np.ndarray, qtype):
    """(data, raw_dtype) for GGUFWriter.add_tensor, and the values the file holds (float64, numpy order)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize, quantize

    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == Q.F32 or arr.shape[-1] % 32 != 0:
        return arr, None, arr.astype(np.float64)
    if qtype == Q.F16:
        h = arr.astype(np.float16)
        return h, None, h.astype(np.float64)
    q = quantize(arr, qtype)
    return q, qtype, dequantize(q, qtype).reshape(arr.shape).astype(np.float64)


def write_projector(path, tower, embed, max_soft: int, qtype=None, *, projector_type="gemma4v", drop=(), extra=None):
    """The projector GGUF of an HF tower (llama.cpp's gemma4v layout); matrices as `qtype` (F32 by default).
    Returns {HF parameter name: the values the file holds} for the matrices (to run HF on exactly those)."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    qtype = Q.F32 if qtype is None else qtype
    cfg = tower.config
    p = cfg.patch_size
    w = gguf.GGUFWriter(str(path), "clip")
    w.add_string(key("CLIP_PROJECTOR_TYPE"), projector_type)
    w.add_bool(key("CLIP_HAS_VISION_ENCODER"), True)
    w.add_uint32(key("CLIP_VISION_PATCH_SIZE"), p)
    w.add_uint32(key("CLIP_VISION_EMBEDDING_LENGTH"), cfg.hidden_size)
    w.add_uint32(key("CLIP_VISION_FEED_FORWARD_LENGTH"), cfg.intermediate_size)
    w.add_uint32(key("CLIP_VISION_PROJECTION_DIM"), embed.text_hidden_size)
    w.add_uint32(key("CLIP_VISION_BLOCK_COUNT"), cfg.num_hidden_layers)
    w.add_uint32(key("CLIP_VISION_HEAD_COUNT"), cfg.num_attention_heads)
    w.add_float32(key("CLIP_VISION_LAYER_NORM_EPS"), cfg.rms_norm_eps)
    w.add_uint32(key("CLIP_VISION_SCALE_FACTOR"), cfg.pooling_kernel_size)
    w.add_float32(key("CLIP_VISION_ROPE_FREQ_BASE"), cfg.rope_parameters["rope_theta"])
    w.add_uint32(key("CLIP_VISION_MAX_SOFT_TOKENS"), max_soft)
    held = {}

    def put(name, hf_name, values, matrix=True):
        if name in drop:
            return
        arr = values.detach().numpy()
        if matrix:
            data, raw, back = _matrix(arr, qtype)
            held[hf_name] = back
            w.add_tensor(name, data, raw_dtype=raw)
        else:
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))

    sd = dict(tower.named_parameters()) | dict(tower.named_buffers())
    E = cfg.hidden_size
    # input_proj [E, p*p*3] over (row, column, channel) -> a conv kernel [E, 3, p, p] (ggml [p, p, 3, E])
    kernel = sd["patch_embedder.input_proj.weight"].detach().reshape(E, p, p, 3).permute(0, 3, 1, 2).contiguous()
    if "v.patch_embd.weight" not in drop:
        w.add_tensor(tensor("V_PATCH_EMBD"), kernel.numpy().astype(np.float32))
    put(tensor("V_POSITION_EMBD"), "patch_embedder.position_embedding_table", sd["patch_embedder.position_embedding_table"],
        matrix=False)
    if cfg.standardize:
        put(tensor("V_STD_BIAS"), "std_bias", sd["std_bias"], matrix=False)
        put(tensor("V_STD_SCALE"), "std_scale", sd["std_scale"], matrix=False)
    for il in range(cfg.num_hidden_layers):
        pre = f"encoder.layers.{il}."
        for ident, hf, matrix in (("V_LN1", "input_layernorm.weight", False),
                                  ("V_ATTN_Q", "self_attn.q_proj.linear.weight", True),
                                  ("V_ATTN_K", "self_attn.k_proj.linear.weight", True),
                                  ("V_ATTN_V", "self_attn.v_proj.linear.weight", True),
                                  ("V_ATTN_OUT", "self_attn.o_proj.linear.weight", True),
                                  ("V_ATTN_Q_NORM", "self_attn.q_norm.weight", False),
                                  ("V_ATTN_K_NORM", "self_attn.k_norm.weight", False),
                                  ("V_ATTN_POST_NORM", "post_attention_layernorm.weight", False),
                                  ("V_LN2", "pre_feedforward_layernorm.weight", False),
                                  ("V_FFN_GATE", "mlp.gate_proj.linear.weight", True),
                                  ("V_FFN_UP", "mlp.up_proj.linear.weight", True),
                                  ("V_FFN_DOWN", "mlp.down_proj.linear.weight", True),
                                  ("V_FFN_POST_NORM", "post_feedforward_layernorm.weight", False)):
            put(layer_tensor(ident, il), pre + hf, sd[pre + hf], matrix)
    data, raw, back = _matrix(embed.embedding_projection.weight.detach().numpy(), qtype)
    held["embed.embedding_projection.weight"] = back
    if tensor("MM_INPUT_PROJECTION") not in drop:
        w.add_tensor(tensor("MM_INPUT_PROJECTION"), data, raw_dtype=raw)
    for name, arr in (extra or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return held


def hf_patches(rgb: np.ndarray, patch: int, max_patches: int):
    """What Gemma4ImageProcessor makes of an image already at its target size: pixels / 255 cut into patches in
    (row, column, channel) order, row-major, (x, y) positions, padded to max_patches (position -1)."""
    h, w, _ = rgb.shape
    img = torch.from_numpy(rgb).permute(2, 0, 1).double() / 255.0
    gh, gw = h // patch, w // patch
    pv = img.reshape(3, gh, patch, gw, patch).permute(1, 3, 2, 4, 0).reshape(gh * gw, -1)
    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
    pos = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    pad = max_patches - pv.shape[0]
    pv = torch.cat([pv, torch.zeros(pad, pv.shape[1], dtype=pv.dtype)])
    pos = torch.cat([pos, torch.full((pad, 2), -1, dtype=pos.dtype)])
    return pv[None], pos[None]


def hf_features(tower, embed, pixel_values, positions) -> np.ndarray:
    """DiffusionGemma get_image_features: the tower, then embed_vision."""
    with torch.no_grad():
        out = tower(pixel_values=pixel_values.double(), pixel_position_ids=positions).last_hidden_state
        return embed(out).numpy()


def _with_weights(tower, embed, held):
    """Copies of the tower and projection holding the values a projector file holds (write_projector)."""
    import copy

    tower, embed = copy.deepcopy(tower), copy.deepcopy(embed)
    params = dict(tower.named_parameters())
    with torch.no_grad():
        for name, values in held.items():
            if name.startswith("embed."):
                embed.embedding_projection.weight.copy_(torch.from_numpy(values))
            else:
                params[name].copy_(torch.from_numpy(values).reshape(params[name].shape))
    return tower, embed


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    built = {}
    for name in TOWERS:
        tower, embed, max_soft = build_tower(name)
        path = root / f"{name}.gguf"
        write_projector(path, tower, embed, max_soft)
        built[name] = (tower, embed, max_soft, path)
    return built


# Images at their own target size (Gemma4ImageProcessor leaves them as they are): non-square and square.
CASES = [("p4k2", 56, 80), ("p4k2", 64, 64), ("p8k3", 144, 240), ("p8k3", 192, 192), ("q", 80, 56)]


@pytest.mark.parametrize("name,h,w", CASES)
def test_image_embed_matches_hf_f32(towers, name, h, w):
    tower, embed, max_soft, path = towers[name]
    p, k = tower.config.patch_size, tower.config.pooling_kernel_size
    rgb = _image(h, w, seed=h * 1000 + w)
    with Model(_text_gguf(), mmproj=path, n_threads=2) as m:
        assert lib.diffgemma_model_has_vision(m._model) == 1
        got = m.image_embed(rgb)
        assert lib.diffgemma_image_n_tokens(m._model, w, h) == got.shape[0]
    pv, pos = hf_patches(rgb, p, max_soft * k * k)
    want = hf_features(tower, embed, pv, pos)
    assert got.shape == want.shape == ((h // p // k) * (w // p // k), 64)
    err = np.abs(got - want).max()
    print(f"{name} {h}x{w}: max |d| {err:.3g} (max |hf| {np.abs(want).max():.3g})")
    assert err <= 1e-3


# Measured (AMD EPYC Zen 3, AVX2): F16 1.9e-13, BF16 2.0e-13 (our f32 GEMM: exact activations), Q8_0 1.1e-4
# (ggml's Q8_0 product rounds the activations to 8 bits too; the file's own weight rounding costs 2.3e-4 against the
# F32 tower). BF16 is what `convert --mmproj` writes by default for the bf16 release.
@pytest.mark.parametrize("qname,nmse_bound", [("F16", 1e-10), ("BF16", 1e-10), ("Q8_0", 3e-4)])
def test_quantized_projector_matches_its_weights(tmp_path, qname, nmse_bound):
    """F16 and Q8_0 projectors against HF run on the file's own (dequantized) weights: what is left is how our
    graph computes with them. A calm tower (build_tower) of Q8_0-compatible widths."""
    from gguf import GGMLQuantizationType as Q

    tower, embed, max_soft = build_tower("q", calm=True)
    path = tmp_path / f"q-{qname}.gguf"
    held = write_projector(path, tower, embed, max_soft, getattr(Q, qname))
    rgb = _image(80, 56, seed=7)
    with Model(_text_gguf(), mmproj=path, n_threads=2) as m:
        got = m.image_embed(rgb)
    pv, pos = hf_patches(rgb, 4, max_soft * 4)
    want = hf_features(*_with_weights(tower, embed, held), pv, pos)
    exact = hf_features(tower, embed, pv, pos)
    nmse = float(((got - want) ** 2).mean() / (want ** 2).mean())
    quant_nmse = float(((want - exact) ** 2).mean() / (exact ** 2).mean())
    print(f"{qname}: NMSE vs its weights {nmse:.3g}, max |d| {np.abs(got - want).max():.3g}; "
          f"its weights vs F32 {quant_nmse:.3g}")
    assert nmse <= nmse_bound
    assert 0 < quant_nmse  # the file really holds other values than the f32 weights
    assert nmse < quant_nmse  # and our arithmetic costs less than the file's rounding


def test_tensor_names_and_row_order(towers):
    """Rows come out row-major over the pooled grid: a picture and its left-right mirror give mirrored rows
    only up to the tower's non-mirror-symmetric position embeddings, so instead check that two images that
    differ in one pooled cell differ in that row the most."""
    tower, embed, max_soft, path = towers["p4k2"]
    rgb = _image(56, 80, seed=3)
    other = rgb.copy()
    other[8:16, 24:32] = 255 - other[8:16, 24:32]  # the cell at pooled row 1, column 3 (cells of 8 x 8 pixels)
    with Model(_text_gguf(), mmproj=path, n_threads=2) as m:
        a, b = m.image_embed(rgb), m.image_embed(other)
    grid_w = 80 // 8
    change = np.abs(a - b).max(axis=1)
    assert change.argmax() == 1 * grid_w + 3


def test_no_projector():
    with Model(_text_gguf(), n_threads=2) as m:
        assert lib.diffgemma_model_has_vision(m._model) == 0
        with pytest.raises(errors.UnsupportedModelError, match="no vision projector loaded"):
            m.image_embed(_image(16, 16, 0))
        assert lib.diffgemma_image_n_tokens(m._model, 16, 16) == lib.DIFFGEMMA_ERR_UNSUPPORTED_MODEL
        out = ffi.new("float[]", 64)
        img = ffi.new("diffgemma_image *")
        pixels = ffi.new("uint8_t[]", 16 * 16 * 3)
        img.rgb, img.width, img.height = pixels, 16, 16
        n = ffi.new("int32_t *")
        assert lib.diffgemma_image_embed(m._c, img, out, 64, n) == lib.DIFFGEMMA_ERR_UNSUPPORTED_MODEL
        assert "mmproj" in ffi.string(lib.diffgemma_last_error()).decode()


def test_mismatched_projector(tmp_path):
    tower, embed, max_soft = build_tower("p4k2", text_hidden=96)
    path = tmp_path / "wide.gguf"
    write_projector(path, tower, embed, max_soft)
    with pytest.raises(errors.UnsupportedModelError, match="projector does not match the model.*96.*64"):
        Model(_text_gguf(), mmproj=path, n_threads=2)


def test_bad_projector_files(tmp_path, towers):
    tower, embed, max_soft, good = towers["p4k2"]
    # not a GGUF at all
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file" * 10)
    with pytest.raises(errors.ModelLoadError, match="not a GGUF"):
        Model(_text_gguf(), mmproj=junk, n_threads=2)
    # truncated
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(errors.ModelLoadError, match="projector|truncated|outside"):
        Model(_text_gguf(), mmproj=cut, n_threads=2)
    # the text model given as the projector
    with pytest.raises(errors.UnsupportedModelError, match="not a vision projector"):
        Model(_text_gguf(), mmproj=_text_gguf(), n_threads=2)
    # another projector type
    other = tmp_path / "gemma3.gguf"
    write_projector(other, tower, embed, max_soft, projector_type="gemma3")
    with pytest.raises(errors.UnsupportedModelError, match="projector type 'gemma3'"):
        Model(_text_gguf(), mmproj=other, n_threads=2)
    # a missing tensor is named
    missing = tmp_path / "missing.gguf"
    write_projector(missing, tower, embed, max_soft, drop=(layer_tensor("V_FFN_UP", 1),))
    with pytest.raises(errors.UnsupportedModelError, match=r"v\.blk\.1\.ffn_up\.weight"):
        Model(_text_gguf(), mmproj=missing, n_threads=2)
    # clipped linears are refused, not ignored
    clipped = tmp_path / "clipped.gguf"
    write_projector(clipped, tower, embed, max_soft,
                    extra={"v.blk.0.attn_q.input_min": np.array([-1.0], dtype=np.float32)})
    with pytest.raises(errors.UnsupportedModelError, match="clipped linears"):
        Model(_text_gguf(), mmproj=clipped, n_threads=2)
    # an image wider than the position tables (the "q" tower's hold 40 positions; 8 x 400 pixels is 140 patches wide)
    q_tower, q_embed, q_max_soft, q_path = towers["q"]
    with Model(_text_gguf(), mmproj=q_path, n_threads=2) as m:
        with pytest.raises(errors.UnsupportedModelError, match="position"):
            m.image_embed(_image(8, 400, 0))
    # no such file
    with pytest.raises(errors.DiffGemmaError, match="projector file"):
        Model(_text_gguf(), mmproj=tmp_path / "absent.gguf", n_threads=2)


def test_image_token(tmp_path):
    """diffusion.image_token_id when the file has it, else the vocabulary's "<|image|>" (the tiny vocabulary has
    none: -1)."""
    from gguf_mutate import VT, Gguf

    with Model(_text_gguf(), n_threads=2) as m:
        assert m.tokenizer.token_to_id("<|image|>") is None if hasattr(m.tokenizer, "token_to_id") else True
        assert lib.diffgemma_model_image_token(m._model) == -1
    tagged = tmp_path / "tagged.gguf"
    g = Gguf.parse(_text_gguf())
    # The converter writes config's image_token_id (258880, outside the tiny vocabulary: -1 above).
    g = g.set_kv(key("IMAGE_TOKEN_ID"), VT.UINT32, 7) if key("IMAGE_TOKEN_ID") in [kv.key for kv in g.kvs] else \
        g.add_kv(key("IMAGE_TOKEN_ID"), VT.UINT32, 7)
    tagged.write_bytes(g.to_bytes())
    with Model(tagged, n_threads=2) as m:
        assert lib.diffgemma_model_image_token(m._model) == 7


def test_tensor_dump_of_the_tower(towers):
    """The tower's named nodes reach the tensor dump (diffgemma_set_tensor_callback): v_inp, v_l_out-N and
    v_pooled equal HF's patch embedder, encoder layers (forward hooks) and pooler."""
    from diffgemma_cpp.tensor_dump import _Collector

    tower, embed, max_soft, path = towers["p4k2"]
    rgb = _image(56, 80, seed=11)
    collector = _Collector()
    handle = ffi.new_handle(collector)
    with Model(_text_gguf(), mmproj=path, n_threads=2) as m:
        assert lib.diffgemma_set_tensor_callback(m._c, b"v_inp,v_l_out-*,v_pooled", lib._dg_py_tensor_callback,
                                                 handle) == 0
        m.image_embed(rgb)
        lib.diffgemma_set_tensor_callback(m._c, ffi.NULL, ffi.NULL, ffi.NULL)
    assert collector.error is None
    got = collector.tensors
    assert sorted(got) == ["v_inp", "v_l_out-0", "v_l_out-1", "v_pooled"]
    pv, pos = hf_patches(rgb, 4, max_soft * 4)
    seen = {}
    hooks = [tower.patch_embedder.register_forward_hook(lambda mod, args, out: seen.__setitem__("v_inp", out))]
    for il, layer in enumerate(tower.encoder.layers):
        hooks.append(layer.register_forward_hook(lambda mod, args, out, il=il: seen.__setitem__(f"v_l_out-{il}", out)))
    hooks.append(tower.pooler.register_forward_hook(lambda mod, args, out: seen.__setitem__("v_pooled", out[0])))
    hf_features(tower, embed, pv, pos)
    for h in hooks:
        h.remove()
    n = got["v_inp"].shape[0]
    assert n == (56 // 4) * (80 // 4)
    for name, values in got.items():
        want = seen[name][0].numpy()
        want = want[: values.shape[0]]  # HF's rows past ours are its padding
        err = np.abs(values - want).max() / np.abs(want).max()
        assert err < 1e-5, f"{name}: relative max |d| {err}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """tiny_hf's vision checkpoint through `convert --mmproj` (our converter): (checkpoint, text GGUF, projector)."""
    import tiny_hf
    from diffgemma_cpp.convert.pipeline import convert_checkpoint

    root = tmp_path_factory.mktemp("converted")
    ckpt = tiny_hf.make_tiny_vision_checkpoint(root / "vis", seed=2, patch_size=4, pooling=2, max_soft_tokens=70,
                                               position_embedding_size=40)
    paths = convert_checkpoint(ckpt, root / "text.gguf", "f32", mmproj=root / "mmproj.gguf", progress=False,
                               quiet=True)
    return ckpt, paths[0], paths[1]


def test_converted_checkpoint_matches_hf_get_image_features(converted):
    """The converter's projector and text GGUF: diffgemma_image_embed equals HF DiffusionGemma's
    get_image_features (pooler_output) of the same checkpoint in float64, and the image token is config's."""
    from transformers import DiffusionGemmaForBlockDiffusion

    ckpt, text, mmproj = converted
    hf = DiffusionGemmaForBlockDiffusion.from_pretrained(ckpt, dtype=torch.float64).eval()
    rgb = _image(56, 80, seed=5)
    pv, pos = hf_patches(rgb, 4, 70 * 4)
    with torch.no_grad():
        want = hf.model.encoder.get_image_features(pv, pos).pooler_output.numpy()
    with Model(text, mmproj=mmproj, n_threads=2) as m:
        assert lib.diffgemma_model_image_token(m._model) == hf.config.image_token_id
        got = m.image_embed(rgb)
    err = np.abs(got - want).max()
    print(f"converted f32: max |d| {err:.3g}")
    assert got.shape == want.shape == (7 * 10, 64)
    assert err <= 1e-3


@pytest.mark.parametrize("gpu_graph", [False, True])
def test_offloaded_projector(towers, monkeypatch, caplog, gpu_graph):
    """With the text model offloaded (the stand-in GPU, gpu_devices.h), the projector's weights go to the first
    offloaded layer's device and the tower runs ggml's ops on them (with DIFFGEMMA_TEST_GPU_GRAPH, the real
    device's graph: ggml's GEGLU): the same features as on the CPU."""
    import logging

    tower, embed, max_soft, path = towers["p4k2"]
    rgb = _image(56, 80, seed=9)
    with Model(_text_gguf(), mmproj=path, n_threads=2) as m:
        cpu = m.image_embed(rgb)
    monkeypatch.setenv("DIFFGEMMA_TEST_GPU_MIB", "4096")
    if gpu_graph:
        monkeypatch.setenv("DIFFGEMMA_TEST_GPU_GRAPH", "1")
    with caplog.at_level(logging.INFO, logger="diffgemma_cpp"):
        with Model(_text_gguf(), mmproj=path, n_threads=2, n_gpu_layers=-1, verbose=True) as m:
            gpu = m.image_embed(rgb)
    assert any("vision projector's weights" in r.getMessage() and "stand-in" in r.getMessage() for r in caplog.records)
    err = np.abs(gpu - cpu).max()
    print(f"offloaded (gpu_graph={gpu_graph}) vs CPU: max |d| {err:.3g}")
    # Measured 8.5e-6 (ggml's ops instead of our CPU kernels) and 1.7e-3 with the real device's graph: on the
    # stand-in, ggml's GEGLU runs on the CPU backend, whose GELU reads an f16 table (a real GPU computes it in f32).
    assert err <= (5e-3 if gpu_graph else 1e-4)


def _our_patches(rgb: np.ndarray, p: int, k: int, max_soft: int):
    """diffgemma_image_preprocess's patches and positions for an image (None while it is not built)."""
    h, w, _ = rgb.shape
    img = ffi.new("diffgemma_image *")
    buf = ffi.from_buffer("uint8_t[]", np.ascontiguousarray(rgb))
    img.rgb, img.width, img.height = buf, w, h
    ow, oh = ffi.new("int32_t *"), ffi.new("int32_t *")
    n = lib.diffgemma_image_preprocess(img, p, k, max_soft, ffi.NULL, ffi.NULL, 0, ow, oh)
    if n < 0 and "not built yet" in ffi.string(lib.diffgemma_last_error()).decode():
        return None
    assert n > 0
    pixels = np.empty((n, 3 * p * p), dtype=np.float32)
    positions = np.empty((n, 2), dtype=np.int32)
    assert lib.diffgemma_image_preprocess(img, p, k, max_soft, ffi.from_buffer("float[]", pixels),
                                          ffi.from_buffer("int32_t[]", positions), n, ow, oh) == n
    return pixels, positions


# Sizes the processor resizes: tiny (upscaled), long and thin both ways, larger than the budget.
@pytest.mark.parametrize("name,h,w", [("p4k2", 5, 7), ("p4k2", 30, 200), ("p8k3", 100, 37), ("p8k3", 400, 300)])
def test_resized_images_match_hf_on_our_patches(towers, name, h, w):
    """Any image size: HF's tower fed our preprocessing's patches (whose parity with HF's processor is the
    preprocessing's test) against diffgemma_image_embed of the image."""
    tower, embed, max_soft, path = towers[name]
    p, k = tower.config.patch_size, tower.config.pooling_kernel_size
    rgb = _image(h, w, seed=h + w)
    ours = _our_patches(rgb, p, k, max_soft)
    if ours is None:
        pytest.skip("diffgemma_image_preprocess is not built yet (helper H1's branch)")
    pixels, positions = ours
    n = pixels.shape[0]
    pad = max_soft * k * k - n
    pv = torch.cat([torch.from_numpy(pixels).double(), torch.zeros(pad, pixels.shape[1], dtype=torch.float64)])[None]
    pos = torch.cat([torch.from_numpy(positions).long(), torch.full((pad, 2), -1, dtype=torch.long)])[None]
    want = hf_features(tower, embed, pv, pos)
    with Model(_text_gguf(), mmproj=path, n_threads=2) as m:
        got = m.image_embed(rgb)
        assert lib.diffgemma_image_n_tokens(m._model, w, h) == got.shape[0] == n // (k * k)
    err = np.abs(got - want).max()
    print(f"{name} {h}x{w} -> {n} patches: max |d| {err:.3g}")
    assert err <= 1e-3
