"""Converting quantized checkpoints (fp8 block-scaled, compressed-tensors int8 with split experts, Model Optimizer
NVFP4 with fused and split experts, compressed-tensors NVFP4): the GGUF's values against the checkpoint's own
dequantization (tests/quant_checkpoints.py, independent of the converter), exact for the lossless paths and
within the stated bound for Q8_0; and every damaged or unknown format refused by name, with no output file."""
from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import quant_checkpoints as qc
import tiny_hf
from convert_helpers import _libggml, dequant, hf_name, read_gguf
from diffgemma_cpp.convert.pipeline import convert_checkpoint
from diffgemma_cpp.errors import ModelLoadError, UnsupportedModelError, UnsupportedTypeError


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    small = tiny_hf.save_checkpoint("small", root / "small", seed=3)
    wide = tiny_hf.save_checkpoint("wide", root / "wide_bf16", seed=5, dtype=torch.bfloat16)
    return {"fp8_block": qc.write_fp8_block(small, root / "fp8"),
            "fp8_tensor": qc.write_fp8_block(small, root / "fp8t", block=None),
            "ct_fp8_channel_split": qc.write_ct_fp8_channel(small, root / "fp8c"),
            "ct_int8_split": qc.write_ct_int8(small, root / "int8"),
            "nvfp4_fused": qc.write_modelopt_nvfp4(wide, root / "nvfp4f", split_experts=False),
            "nvfp4_split": qc.write_modelopt_nvfp4(wide, root / "nvfp4s", split_experts=True),
            "ct_nvfp4": qc.write_ct_nvfp4(wide, root / "ctnvfp4")}


def _convert(src, out, outtype="auto"):
    convert_checkpoint(src, out, outtype, progress=False, quiet=True)
    return read_gguf(out)


def _values(tensors: dict) -> dict:
    """{HF name: values} of a GGUF, NVFP4 weights times their out_scale (the engine's product)."""
    out = {}
    for g, rt in tensors.items():
        h = hf_name(g) if g.endswith((".weight", ".scale")) else None
        if h is None:
            continue
        v = dequant(rt)
        s = tensors.get(g[:-len("weight")] + "out_scale") if g.endswith(".weight") else None
        out[h] = (v * dequant(s)[..., None]).astype(np.float32) if s is not None else v
    return out


@pytest.mark.parametrize("kind", ["nvfp4_fused", "nvfp4_split"])
def test_modelopt_nvfp4_is_kept_bit_for_bit(ckpts, tmp_path, kind):
    kv, tensors, _, _ = _convert(ckpts[kind], tmp_path / "out.gguf")
    ref = qc.dequantized(ckpts[kind])
    ours = _values(tensors)
    types = {}
    for h, v in ours.items():
        np.testing.assert_array_equal(v, ref[h].reshape(v.shape), err_msg=h)
    for g, rt in tensors.items():
        types.setdefault(rt.tensor_type.name, []).append(g)
    quantized = [g for g in tensors if g.endswith(".weight") and (hf_name(g) or "").endswith(qc.QUANTIZED)]
    assert quantized and all(tensors[g].tensor_type.name == "NVFP4" for g in quantized)
    assert all(g[:-len("weight")] + "out_scale" in tensors for g in quantized)
    assert {"BF16"} == {tensors[g].tensor_type.name for g in ("token_embd.weight",)}
    assert dict((k, v) for k, _, v in kv)["general.file_type"] == 39  # MOSTLY_NVFP4


def test_hf_quant_config_alone_identifies_modelopt(ckpts, tmp_path):
    """Model Optimizer exports may name the format only in hf_quant_config.json."""
    src = _damaged(ckpts["nvfp4_fused"], tmp_path / "ckpt")
    cfg = json.loads((src / "config.json").read_text())
    del cfg["quantization_config"]
    (src / "config.json").write_text(json.dumps(cfg))
    _, tensors, _, _ = _convert(src, tmp_path / "out.gguf")
    assert tensors["blk.0.ffn_gate_up_exps.weight"].tensor_type.name == "NVFP4"


def test_ggml_decodes_the_repacked_blocks_exactly(ckpts, tmp_path):
    """ggml's own dequantize_row_nvfp4 (libggml-base, not gguf-py) gives e2m1 * e4m3 of the checkpoint, bit for
    bit, for every NVFP4 tensor: the repack, not a requantization."""
    _, tensors, _, _ = _convert(ckpts["nvfp4_split"], tmp_path / "out.gguf")
    lib = _libggml()
    lib.dequantize_row_nvfp4.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    state = qc.load_state(ckpts["nvfp4_split"])
    stem = "model.decoder.layers.1.self_attn.q_proj."
    packed, sb = state[stem + "weight"], state[stem + "weight_scale"]
    blocks = np.ascontiguousarray(np.asarray(tensors["blk.1.attn_q.weight"].data)).view(np.uint8)
    out = np.empty(packed.shape[0] * packed.shape[1] * 2, dtype=np.float32)
    lib.dequantize_row_nvfp4(blocks.ctypes.data, out.ctypes.data, out.size)
    expected = qc.nvfp4_dequantize(packed, sb.float(), torch.tensor(1.0))
    np.testing.assert_array_equal(out.reshape(expected.shape), expected)
    np.testing.assert_array_equal(dequant(tensors["blk.1.attn_q.out_scale"]),
                                  np.full(packed.shape[0], state[stem + "weight_scale_2"].item(), np.float32))


def test_split_experts_stream_across_chunk_and_expert_boundaries(ckpts, tmp_path, monkeypatch):
    """The writer's chunks (here 11 rows of 256) straddle the 256-row per-expert tensors being re-fused: the
    bytes are those of a conversion in whole-tensor chunks."""
    from diffgemma_cpp.convert import writer

    convert_checkpoint(ckpts["nvfp4_split"], tmp_path / "big.gguf", "auto", progress=False, quiet=True)
    monkeypatch.setattr(writer, "CHUNK_ELEMENTS", 3000)
    convert_checkpoint(ckpts["nvfp4_split"], tmp_path / "small.gguf", "auto", progress=False, quiet=True)
    big, small = (read_gguf(tmp_path / f)[1] for f in ("big.gguf", "small.gguf"))
    assert set(big) == set(small)
    for name in big:
        np.testing.assert_array_equal(np.asarray(small[name].data), np.asarray(big[name].data), err_msg=name)


def test_compressed_tensors_nvfp4_keeps_codes_and_scales(ckpts, tmp_path):
    """Codes and block scales are copied; the global scale is stored inverted (1 / weight_global_scale), one
    extra float32 rounding: within 2^-23 relative of the checkpoint's quotient (QUANTIZED_FORMATS.md)."""
    _, tensors, _, _ = _convert(ckpts["ct_nvfp4"], tmp_path / "out.gguf")
    ref = qc.dequantized(ckpts["ct_nvfp4"])
    worst = 0.0
    for h, v in _values(tensors).items():
        r = ref[h].reshape(v.shape)
        if h.endswith(qc.QUANTIZED):
            worst = max(worst, float(np.max(np.abs(v - r) / np.maximum(np.abs(r), 1e-30))))
        else:
            np.testing.assert_array_equal(v, r)
    print(f"compressed-tensors NVFP4: max relative difference {worst:.2e}")
    assert worst <= 2.0 ** -23


@pytest.mark.parametrize("kind", ["fp8_block", "fp8_tensor", "ct_fp8_channel_split", "ct_int8_split"])
def test_fp8_and_int8_exact_in_f32(ckpts, tmp_path, kind):
    _, tensors, _, _ = _convert(ckpts[kind], tmp_path / "out.gguf", "f32")
    ref = qc.dequantized(ckpts[kind])
    for h, v in _values(tensors).items():
        np.testing.assert_array_equal(v, ref[h].reshape(v.shape), err_msg=h)


# Q8_0 stores round(x / d) * d16 per block of 32 with d = max|x| / 127 rounded to f16: |error| <= d/2 + 127 *
# |d - d16| <= (0.5 + 127 * 2^-11) * d, i.e. at most 0.57 * max|x| / 127 (0.45% of the block's largest value).
Q8_0_BOUND = 0.5 + 127 * 2.0 ** -11


@pytest.mark.parametrize("kind", ["fp8_block", "fp8_tensor", "ct_fp8_channel_split", "ct_int8_split"])
def test_fp8_and_int8_default_to_q8_0_within_the_stated_bound(ckpts, tmp_path, kind):
    _, tensors, _, _ = _convert(ckpts[kind], tmp_path / "out.gguf")
    ref = qc.dequantized(ckpts[kind])
    ours = _values(tensors)
    n_q8 = 0
    for g, rt in tensors.items():
        h = hf_name(g) if g.endswith(".weight") else None
        if h is None or not h.endswith(qc.QUANTIZED):
            continue
        v, r = ours[h], ref[h].reshape(ours[h].shape)
        if rt.tensor_type.name == "Q8_0":
            n_q8 += 1
            blocks_r = r.reshape(-1, 32).astype(np.float64)
            d = np.max(np.abs(blocks_r), axis=1, keepdims=True) / 127
            assert np.all(np.abs(v.reshape(-1, 32) - blocks_r) <= Q8_0_BOUND * d + 1e-12), g
        else:  # a row of 40 or 12 values does not split into 32-blocks: f16, as for any checkpoint
            assert rt.tensor_type.name == "F16", g
            np.testing.assert_allclose(v, r, rtol=2.0 ** -11, atol=2.0 ** -24)
    assert n_q8 > 10


def test_bf16_on_request(ckpts, tmp_path):
    _, tensors, _, _ = _convert(ckpts["fp8_block"], tmp_path / "out.gguf", "bf16")
    ref = qc.dequantized(ckpts["fp8_block"])
    v = dequant(tensors["blk.0.attn_q.weight"])
    r = torch.from_numpy(ref["model.decoder.layers.0.self_attn.q_proj.weight"]).to(torch.bfloat16).float().numpy()
    np.testing.assert_array_equal(v, r)


# ---------------------------------------------------------------------------------------------------------------
# Refused: unknown formats and damaged scales, each by name, with no output written
# ---------------------------------------------------------------------------------------------------------------

def _damaged(src, out, edit_state=None, edit_config=None):
    qc._write(src, out, {}, None)  # copies config, tokenizer, generation config
    state = load_file(str(src / "model.safetensors"))
    if edit_state:
        edit_state(state)
    save_file(state, str(out / "model.safetensors"))
    if edit_config:
        cfg = json.loads((out / "config.json").read_text())
        edit_config(cfg)
        (out / "config.json").write_text(json.dumps(cfg))
        (out / "hf_quant_config.json").unlink(missing_ok=True)
    return out


STEM = "model.decoder.layers.1.self_attn.q_proj."


def _nan_block_scale(state):
    s = state[STEM + "weight_scale"].view(torch.uint8).clone()
    s[3, 2] = 0x7F
    state[STEM + "weight_scale"] = s.view(torch.float8_e4m3fn)


def _set(name, value):
    def edit(state):
        state[name] = value
    return edit


def _drop(name):
    def edit(state):
        del state[name]
    return edit


CASES = {
    "unknown quant_method": ("nvfp4_fused", None, lambda c: c.update(quantization_config={"quant_method": "awq"}),
                             UnsupportedTypeError, ["quant_method 'awq'"]),
    "unknown modelopt algorithm": ("nvfp4_fused", None,
                                   lambda c: c["quantization_config"].update(quant_algo="W4A8_AWQ"),
                                   UnsupportedTypeError, ["modelopt", "'W4A8_AWQ'"]),
    "compressed-tensors int4 packing": ("ct_int8_split", None, lambda c: c["quantization_config"]["config_groups"]
                                        ["group_0"].update(format="pack-quantized"),
                                        UnsupportedTypeError, ["'pack-quantized'", "group_0"]),
    "missing second-level scale": ("nvfp4_fused", _drop(STEM + "weight_scale_2"), None, UnsupportedModelError,
                                   [STEM + "weight", "second-level", STEM + "weight_scale_2"]),
    "missing block scale": ("nvfp4_split", _drop(STEM + "weight_scale"), None, UnsupportedModelError,
                            [STEM + "weight", "block scale"]),
    "block scale of the wrong shape": ("nvfp4_fused", _set(STEM + "weight_scale",
                                                           torch.ones(64, 8).to(torch.float8_e4m3fn)), None,
                                       UnsupportedModelError, [STEM + "weight_scale", "[64, 8]", "[256, 16]"]),
    "NaN block scale": ("nvfp4_fused", _nan_block_scale, None, ModelLoadError,
                        [STEM + "weight_scale", "NaN", "row 3, block 2"]),
    "NaN second-level scale": ("nvfp4_split", _set(STEM + "weight_scale_2", torch.tensor(float("nan"))), None,
                               ModelLoadError, [STEM + "weight_scale_2", "nan"]),
    "zero second-level scale": ("nvfp4_split", _set(STEM + "weight_scale_2", torch.tensor(0.0)), None,
                                ModelLoadError, [STEM + "weight_scale_2", "non-positive"]),
    "fp8 scale of the wrong shape": ("fp8_block", _set(STEM + "weight_scale_inv", torch.ones(3, 3)), None,
                                     UnsupportedModelError, [STEM + "weight_scale_inv", "[3, 3]", "[8, 4]"]),
    "NaN fp8 block scale": ("fp8_block", _set(STEM + "weight_scale_inv", torch.full((8, 4), float("nan"))), None,
                            ModelLoadError, [STEM + "weight_scale_inv", "nan"]),
    "missing int8 scale of one expert": ("ct_int8_split", _drop("model.decoder.layers.2.experts.3.up_proj.weight_scale"),
                                         None, UnsupportedModelError,
                                         ["model.decoder.layers.2.experts.3.up_proj.weight", "scale"]),
    "quantized weights without a quantization_config": ("fp8_block", None, lambda c: c.pop("quantization_config"),
                                                        UnsupportedTypeError, ["F8_E4M3", "quantization_config"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_or_unknown_format_is_refused_with_no_output(ckpts, tmp_path, case):
    kind, edit_state, edit_config, error, words = CASES[case]
    src = _damaged(ckpts[kind], tmp_path / "ckpt", edit_state, edit_config)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(error) as e:
        convert_checkpoint(src, out / "model.gguf", "auto", progress=False, quiet=True)
    msg = str(e.value)
    print(f"{case}: {msg}")
    for w in words:
        assert w in msg, f"{case}: {w!r} not in {msg!r}"
    assert list(out.iterdir()) == [], "a failed conversion must leave nothing behind"
