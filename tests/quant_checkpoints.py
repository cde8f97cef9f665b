"""Tiny quantized DiffusionGemma checkpoints, written the way the published formats lay them out, and their
own dequantization, computed here independently of the converter (torch's float8 decoding, the E2M1 code
arithmetic of the NVFP4 spec), for the converter and engine tests.

    src = tiny_hf.save_checkpoint("wide", tmp / "wide", dtype=torch.bfloat16)
    q = write_modelopt_nvfp4(src, tmp / "wide-nvfp4", split_experts=True)
    ref = dequantized(q)      # {unquantized HF name (experts fused): float32 array}

Formats (convert/QUANTIZED_FORMATS.md says where each field comes from):
  - write_fp8_block: quant_method "fp8", weight_block_size [bo, bi]; `X.weight` F8_E4M3, `X.weight_scale_inv`
    F32 [ceil(rows/bo), ceil(cols/bi)] (the multiplier, despite its name); fused experts as transformers spells
    them (`experts.gate_up_proj` + `experts.gate_up_proj_scale_inv`).
  - write_fp8_block(block=None): the same with weight_block_size null, one F32 scale per tensor (`[]`).
  - write_ct_fp8_channel: compressed-tensors float-quantized, fp8 per output channel (`X.weight_scale`
    [rows, 1]), experts split: the FP8-dynamic recipe.
  - write_ct_int8: compressed-tensors, format int-quantized, int8 symmetric per channel; `X.weight` I8,
    `X.weight_scale` [rows, 1] (BF16 here, the model's dtype); experts split one Linear per expert
    (`experts.<e>.gate_proj.weight` ...).
  - write_modelopt_nvfp4: Model Optimizer NVFP4 (hf_quant_config.json + quantization_config quant_method
    "modelopt"); `X.weight` U8 [rows, cols/2] (element 2k in the low nibble), `X.weight_scale` F8_E4M3
    [rows, cols/16], `X.weight_scale_2` F32 [] (= amax / (6 * 448)), `X.input_scale` F32 [] (ignored by us);
    experts fused (`experts.gate_up_proj` + `experts.gate_up_proj_weight_scale` / `_weight_scale_2`) or split.
  - write_ct_nvfp4: compressed-tensors nvfp4-pack-quantized: `X.weight_packed`, `X.weight_scale`,
    `X.weight_global_scale` (= 1 / scale_2).
Quantized: attention q/k/v/o, the dense MLP, the experts and the self-conditioning MLP; the embedding, router,
norms and scalars stay as they are, as the quantizers' default ignore lists leave them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

QUANTIZED = (".self_attn.q_proj.weight", ".self_attn.k_proj.weight", ".self_attn.v_proj.weight",
             ".self_attn.o_proj.weight", ".mlp.gate_proj.weight", ".mlp.up_proj.weight", ".mlp.down_proj.weight",
             ".experts.gate_up_proj", ".experts.down_proj", "self_conditioning.gate_proj.weight",
             "self_conditioning.up_proj.weight", "self_conditioning.down_proj.weight")
E4M3_MAX = 448.0
E2M1_MAGNITUDES = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=torch.float64)


def load_state(src) -> dict:
    out = {}
    for f in sorted(Path(src).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k)
    return out


def _is_quantized(name: str) -> bool:
    return name.startswith("model.decoder.") and name.endswith(QUANTIZED)


def _write(src, out, state: dict, quantization_config: dict | None, extra_files: dict | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in Path(src).iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json" and f.is_file():
            shutil.copy(f, out / f.name)
    cfg = json.loads((out / "config.json").read_text())
    if quantization_config is not None:
        cfg["quantization_config"] = quantization_config
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name, content in (extra_files or {}).items():
        (out / name).write_text(json.dumps(content, indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / "model.safetensors"))
    return out


def _split_experts(state: dict, name: str, quantize) -> dict:
    """experts.gate_up_proj [E, 2F, H] / experts.down_proj [E, H, F] -> one Linear per expert and projection."""
    w = state[name]
    stem = name.rsplit(".", 1)[0]
    out = {}
    for e in range(w.shape[0]):
        if name.endswith("gate_up_proj"):
            F = w.shape[1] // 2
            parts = {"gate_proj": w[e, :F], "up_proj": w[e, F:]}
        else:
            parts = {"down_proj": w[e]}
        for proj, m in parts.items():
            out.update(quantize(f"{stem}.{e}.{proj}.weight", m.float()))
    return out


# ---------------------------------------------------------------------------------------------------------------
# FP8 e4m3 with block scales (quant_method "fp8")
# ---------------------------------------------------------------------------------------------------------------

def _fp8_block(w: torch.Tensor, bo: int, bi: int):
    *lead, R, C = w.shape
    nr, nc = -(-R // bo), -(-C // bi)
    padded = torch.zeros(*lead, nr * bo, nc * bi, dtype=torch.float32)
    padded[..., :R, :C] = w.float()
    blocks = padded.reshape(*lead, nr, bo, nc, bi)
    amax = blocks.abs().amax(dim=(-3, -1))
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (blocks / scale[..., :, None, :, None]).reshape(*lead, nr * bo, nc * bi)[..., :R, :C]
    return q.to(torch.float8_e4m3fn), scale.float()


def _fp8_tensor(w: torch.Tensor):
    scale = (w.float().abs().max() / E4M3_MAX).reshape(())
    return (w.float() / scale).to(torch.float8_e4m3fn), scale.float()


def write_fp8_block(src, out, block=(16, 16)) -> Path:
    """quant_method "fp8" with weight_block_size [bo, bi]; block=None: one F32 scale per tensor (`[]`)."""
    state = load_state(src)
    new = {}
    for k, v in state.items():
        if not _is_quantized(k):
            new[k] = v
            continue
        q, s = _fp8_block(v, *block) if block else _fp8_tensor(v)
        new[k] = q
        new[k[:-len("weight")] + "weight_scale_inv" if k.endswith(".weight") else k + "_scale_inv"] = s
    qc = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
          "weight_block_size": list(block) if block else None,
          "modules_to_not_convert": ["embed_tokens", "router", "lm_head"]}
    return _write(src, out, new, qc)


def _fp8_channel(name: str, w: torch.Tensor) -> dict:
    amax = w.float().abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    return {name: (w.float() / scale).to(torch.float8_e4m3fn), name[:-len("weight")] + "weight_scale": scale}


def write_ct_fp8_channel(src, out) -> Path:
    """compressed-tensors float-quantized, fp8 per output channel (the FP8-dynamic recipe), experts split."""
    return _write_ct_w8a8(src, out, _fp8_channel, "float-quantized", "float", ["lm_head", "re:.*router.*"])


# ---------------------------------------------------------------------------------------------------------------
# compressed-tensors int8 per channel, experts split
# ---------------------------------------------------------------------------------------------------------------

def _int8_channel(name: str, w: torch.Tensor) -> dict:
    amax = w.float().abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax)).to(torch.bfloat16)
    q = torch.clamp(torch.round(w.float() / scale.float()), -128, 127).to(torch.int8)
    stem = name[:-len("weight")]
    return {name: q, stem + "weight_scale": scale}


def write_ct_int8(src, out) -> Path:
    return _write_ct_w8a8(src, out, _int8_channel, "int-quantized", "int",
                          ["lm_head", "re:.*router.*", "re:.*embed.*"])


def _write_ct_w8a8(src, out, quantize, fmt: str, typ: str, ignore: list) -> Path:
    """compressed-tensors W8A8: 8-bit weights per output channel, dynamic per-token activations, experts split."""
    state = load_state(src)
    new = {}
    for k, v in state.items():
        if not _is_quantized(k):
            new[k] = v
        elif ".experts." in k:
            new.update(_split_experts(state, k, quantize))
        else:
            new.update(quantize(k, v))
    args = {"num_bits": 8, "type": typ, "symmetric": True}
    qc = {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
          "config_groups": {"group_0": {"targets": ["Linear"], "format": fmt,
                                        "weights": dict(args, strategy="channel", dynamic=False),
                                        "input_activations": dict(args, strategy="token", dynamic=True)}},
          "ignore": ignore}
    return _write(src, out, new, qc)


# ---------------------------------------------------------------------------------------------------------------
# NVFP4 (Model Optimizer and compressed-tensors)
# ---------------------------------------------------------------------------------------------------------------

def _e2m1_codes(x: torch.Tensor) -> torch.Tensor:
    """Nearest E2M1 code (sign in bit 3, magnitude index in bits 0-2) of values already within [-6, 6]."""
    mag = x.double().abs().clamp(max=6.0)
    idx = torch.argmin((mag[..., None] - E2M1_MAGNITUDES).abs(), dim=-1).to(torch.uint8)
    return idx | ((x < 0).to(torch.uint8) << 3)


def nvfp4_quantize(w: torch.Tensor):
    """(packed uint8 [..., C/2], e4m3 block scales [..., C/16], float32 scale_2 []) of one weight."""
    w = w.float()
    amax = w.abs().max()
    s2 = (amax / (6.0 * E4M3_MAX)).reshape(())
    blocks = w.reshape(*w.shape[:-1], -1, 16)
    per_block = blocks.abs().amax(dim=-1) / (6.0 * s2)
    sb = torch.where(per_block > 0, per_block, torch.ones_like(per_block)).to(torch.float8_e4m3fn)
    codes = _e2m1_codes(blocks / (sb.float() * s2)[..., None]).reshape(w.shape)
    packed = codes[..., 0::2] | (codes[..., 1::2] << 4)
    return packed, sb, s2.float()


def _nvfp4_tensors(name: str, w: torch.Tensor, names: tuple) -> dict:
    """names: (codes, block scale, second-level scale) suffixes; compressed-tensors stores 1 / scale_2."""
    packed, sb, s2 = nvfp4_quantize(w)
    if name.endswith(".weight"):
        stem = name[:-len("weight")]
        key = lambda suffix: stem + suffix  # noqa: E731
    else:
        key = lambda suffix: f"{name}_{suffix}"  # noqa: E731
    codes_name = name if names[0] == "weight" else key(names[0])
    out = {codes_name: packed, key(names[1]): sb}
    out[key(names[2])] = (1.0 / s2) if names[2] == "weight_global_scale" else s2
    out[key("input_scale" if names[2] == "weight_scale_2" else "input_global_scale")] = torch.tensor(0.5)
    return out


MODELOPT_NAMES = ("weight", "weight_scale", "weight_scale_2")
CT_NVFP4_NAMES = ("weight_packed", "weight_scale", "weight_global_scale")


def _write_nvfp4(src, out, split_experts: bool, names: tuple, qc: dict, extra: dict | None) -> Path:
    state = load_state(src)
    new = {}
    quant = lambda n, m: _nvfp4_tensors(n, m, names)  # noqa: E731
    for k, v in state.items():
        if not _is_quantized(k):
            new[k] = v
        elif ".experts." in k and split_experts:
            new.update(_split_experts(state, k, quant))
        else:
            new.update(quant(k, v))
    return _write(src, out, new, qc, extra)


def write_modelopt_nvfp4(src, out, split_experts: bool = False) -> Path:
    hqc = {"producer": {"name": "modelopt", "version": "0.37.0"},
           "quantization": {"quant_algo": "NVFP4", "kv_cache_quant_algo": None, "group_size": 16,
                            "exclude_modules": ["lm_head", "*router*", "*embed*"]}}
    qc = dict(hqc["quantization"], quant_method="modelopt")
    return _write_nvfp4(src, out, split_experts, MODELOPT_NAMES, qc, {"hf_quant_config.json": hqc})


def write_ct_nvfp4(src, out, split_experts: bool = True) -> Path:
    qc = {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
          "config_groups": {"group_0": {"targets": ["Linear"], "format": "nvfp4-pack-quantized",
                                        "weights": {"num_bits": 4, "type": "float", "symmetric": True,
                                                    "strategy": "tensor_group", "group_size": 16}}},
          "ignore": ["lm_head"]}
    return _write_nvfp4(src, out, split_experts, CT_NVFP4_NAMES, qc, None)


# ---------------------------------------------------------------------------------------------------------------
# The checkpoints' own dequantization (independent of the converter)
# ---------------------------------------------------------------------------------------------------------------

def _e2m1_value(codes: torch.Tensor) -> torch.Tensor:
    """E2M1 (1 sign, 2 exponent bits with bias 1, 1 mantissa bit) decoded arithmetically, as float64."""
    c = codes.to(torch.int64)
    exp, man = (c >> 1) & 3, (c & 1).double()
    mag = torch.where(exp == 0, man * 0.5, (1.0 + man * 0.5) * torch.pow(2.0, (exp - 1).double()))
    return torch.where((c & 8) != 0, -mag, mag)


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    out = torch.empty(*packed.shape[:-1], packed.shape[-1] * 2, dtype=torch.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out


def nvfp4_dequantize(packed, sb, s2, divisor: bool = False) -> np.ndarray:
    """e2m1 * e4m3 * scale_2 as the exact product rounded once to float32 (the products of the first two are
    exact; the float64 product with scale_2 too, so casting rounds once). divisor: scale_2 given as 1 / it."""
    vals = _e2m1_value(_unpack(packed))
    vals = vals.reshape(*vals.shape[:-1], -1, 16) * sb.double()[..., None]
    s2 = s2.double()
    if s2.ndim == 1 and s2.numel() > 1:  # per expert
        s2 = s2.reshape(-1, *([1] * (vals.ndim - 1)))
    vals = vals / s2 if divisor else vals * s2
    return vals.reshape(*vals.shape[:-2], -1).float().numpy()


def dequantized(directory) -> dict:
    """{HF name of the unquantized model (experts fused): float32 values} of a checkpoint written above."""
    directory = Path(directory)
    state = load_state(directory)
    qc = json.loads((directory / "config.json").read_text())["quantization_config"]
    out: dict = {}
    split: dict = {}
    for k, v in state.items():
        if k.endswith(("scale_inv", "weight_scale", "weight_scale_2", "weight_global_scale", "input_scale",
                       "input_global_scale")):
            continue
        base = k.replace(".weight_packed", ".weight")
        if v.dtype == torch.float8_e4m3fn:
            stem = k[:-len("weight")] if k.endswith(".weight") else k + "_"
            s = state.get(stem + "weight_scale_inv", state.get(stem + "weight_scale", state.get(stem + "scale_inv")))
            channel = s.ndim >= 2 and s.shape[-2] == v.shape[-2] and s.shape[-1] == 1
            if s.numel() > 1 and not channel:  # blocks
                bo, bi = qc["weight_block_size"]
                s = s.repeat_interleave(bo, dim=-2).repeat_interleave(bi, dim=-1)[..., :v.shape[-2], :v.shape[-1]]
            value = (v.double() * s.double()).float().numpy()
        elif v.dtype == torch.int8:
            value = (v.double() * state[k[:-len("weight")] + "weight_scale"].double()).float().numpy()
        elif v.dtype == torch.uint8:
            divisor = k.endswith("weight_packed")
            key = (lambda sfx: k.rsplit(".", 1)[0] + "." + sfx) if k.endswith(("weight", "weight_packed")) \
                else (lambda sfx: f"{k}_{sfx}")
            value = nvfp4_dequantize(v, state[key("weight_scale")].float(),
                                     state[key("weight_global_scale" if divisor else "weight_scale_2")], divisor)
        else:
            value = v.float().numpy()
        if ".experts." in base and base.split(".experts.")[1][0].isdigit():
            layer, rest = base.split(".experts.")
            e, proj, _ = rest.split(".")
            split.setdefault((layer, proj), {})[int(e)] = value
        else:
            out[base] = value
    for (layer, proj), per_expert in split.items():
        stacked = np.stack([per_expert[e] for e in sorted(per_expert)])
        if proj == "down_proj":
            out[f"{layer}.experts.down_proj"] = stacked
        else:
            key = f"{layer}.experts.gate_up_proj"
            gate_up = out.setdefault(key, [None, None])
            gate_up[0 if proj == "gate_proj" else 1] = stacked
    for k, v in list(out.items()):
        if isinstance(v, list):
            out[k] = np.concatenate(v, axis=1)
    return out
