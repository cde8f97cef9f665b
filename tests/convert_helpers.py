"""Shared pieces of the converter tests: tiny checkpoints built once per session, a GGUF reader that returns
keys in file order, dequantization, and an independent call into ggml's quantizer (ctypes, bypassing our
C library) to check the converter's bytes against."""
from __future__ import annotations

import ctypes
import glob
import os
from pathlib import Path

import numpy as np
import pytest

import tiny_hf

# Keys in the order PR #24423's converter writes them (gguf-format.md, "Observed" table), with ours inserted:
# diffusion.embed_scale, then the image keys (the tiny checkpoints have a vision tower) before
# general.quantization_version, and tokenizer.ggml.eos_token_ids after the eos id.
EXPECTED_KEYS = [
    ("general.architecture", "STRING"), ("general.type", "STRING"), ("general.name", "STRING"),
    ("general.size_label", "STRING"),
    ("diffusion-gemma.block_count", "UINT32"), ("diffusion-gemma.context_length", "UINT32"),
    ("diffusion-gemma.embedding_length", "UINT32"), ("diffusion-gemma.feed_forward_length", "UINT32"),
    ("diffusion-gemma.attention.head_count", "UINT32"), ("diffusion-gemma.attention.head_count_kv", "ARRAY[INT32]"),
    ("diffusion-gemma.rope.freq_base", "FLOAT32"), ("diffusion-gemma.rope.freq_base_swa", "FLOAT32"),
    ("diffusion-gemma.attention.layer_norm_rms_epsilon", "FLOAT32"), ("diffusion-gemma.expert_count", "UINT32"),
    ("diffusion-gemma.expert_used_count", "UINT32"), ("diffusion-gemma.attention.key_length", "UINT32"),
    ("diffusion-gemma.attention.value_length", "UINT32"), ("general.file_type", "UINT32"),
    ("diffusion-gemma.final_logit_softcapping", "FLOAT32"), ("diffusion-gemma.attention.sliding_window", "UINT32"),
    ("diffusion-gemma.attention.shared_kv_layers", "UINT32"),
    ("diffusion-gemma.embedding_length_per_layer_input", "UINT32"),
    ("diffusion-gemma.attention.sliding_window_pattern", "ARRAY[BOOL]"),
    ("diffusion-gemma.attention.key_length_swa", "UINT32"), ("diffusion-gemma.attention.value_length_swa", "UINT32"),
    ("diffusion-gemma.expert_feed_forward_length", "UINT32"), ("diffusion-gemma.rope.dimension_count", "UINT32"),
    ("diffusion-gemma.rope.dimension_count_swa", "UINT32"), ("diffusion-gemma.attention.causal", "BOOL"),
    ("diffusion.canvas_length", "UINT32"), ("diffusion.eb_max_steps", "UINT32"), ("diffusion.eb_t_min", "FLOAT32"),
    ("diffusion.eb_t_max", "FLOAT32"), ("diffusion.eb_entropy_bound", "FLOAT32"),
    ("diffusion.eb_stability_threshold", "UINT32"), ("diffusion.eb_confidence_threshold", "FLOAT32"),
    # No image keys: the tiny checkpoints' stub vision tower keeps HF's image_token_id (258880), outside their
    # vocabulary, so the converter leaves them out (test_convert_mmproj checks them on a real vision checkpoint).
    ("diffusion.embed_scale", "FLOAT32"),
    ("general.quantization_version", "UINT32"), ("tokenizer.ggml.model", "STRING"),
    ("tokenizer.ggml.tokens", "ARRAY[STRING]"), ("tokenizer.ggml.scores", "ARRAY[FLOAT32]"),
    ("tokenizer.ggml.token_type", "ARRAY[INT32]"), ("tokenizer.ggml.merges", "ARRAY[STRING]"),
    ("tokenizer.ggml.bos_token_id", "UINT32"), ("tokenizer.ggml.eos_token_id", "UINT32"),
    ("tokenizer.ggml.eos_token_ids", "ARRAY[UINT32]"),
    ("tokenizer.ggml.unknown_token_id", "UINT32"), ("tokenizer.ggml.padding_token_id", "UINT32"),
    ("tokenizer.ggml.mask_token_id", "UINT32"), ("tokenizer.ggml.add_bos_token", "BOOL"),
    ("tokenizer.chat_template", "STRING"), ("tokenizer.ggml.add_space_prefix", "BOOL"),
]

# Per-layer tensor order of the peer (gguf-format.md, "Observed"); attn_v only on sliding layers.
LAYER_ORDER = ["ffn_down_exps.weight", "ffn_gate_up_exps.weight", "attn_norm.weight", "layer_output_scale.weight",
               "ffn_down.weight", "ffn_gate.weight", "ffn_up.weight", "post_attention_norm.weight",
               "post_ffw_norm.weight", "post_ffw_norm_1.weight", "post_ffw_norm_2.weight", "ffn_norm.weight",
               "pre_ffw_norm_2.weight", "ffn_down_exps.scale", "ffn_gate_inp.weight", "ffn_gate_inp.scale",
               "attn_k_norm.weight", "attn_k.weight", "attn_output.weight", "attn_q_norm.weight", "attn_q.weight",
               "attn_v.weight", "enc_layer_output_scale.weight"]
GLOBAL_ORDER = ["rope_freqs.weight", "token_embd.weight", "output_norm.weight", "self_cond_down.weight",
                "self_cond_gate.weight", "self_cond_pre_norm.weight", "self_cond_up.weight"]

# GGUF name -> HF name (decoder unless noted), for value checks.
HF_GLOBAL = {"token_embd.weight": "model.decoder.embed_tokens.weight",
             "output_norm.weight": "model.decoder.norm.weight",
             "self_cond_pre_norm.weight": "model.decoder.self_conditioning.pre_norm.weight",
             "self_cond_gate.weight": "model.decoder.self_conditioning.gate_proj.weight",
             "self_cond_up.weight": "model.decoder.self_conditioning.up_proj.weight",
             "self_cond_down.weight": "model.decoder.self_conditioning.down_proj.weight"}
HF_LAYER = {"attn_norm.weight": "input_layernorm.weight", "attn_q.weight": "self_attn.q_proj.weight",
            "attn_k.weight": "self_attn.k_proj.weight", "attn_v.weight": "self_attn.v_proj.weight",
            "attn_output.weight": "self_attn.o_proj.weight", "attn_q_norm.weight": "self_attn.q_norm.weight",
            "attn_k_norm.weight": "self_attn.k_norm.weight",
            "post_attention_norm.weight": "post_attention_layernorm.weight",
            "ffn_norm.weight": "pre_feedforward_layernorm.weight", "ffn_gate.weight": "mlp.gate_proj.weight",
            "ffn_up.weight": "mlp.up_proj.weight", "ffn_down.weight": "mlp.down_proj.weight",
            "post_ffw_norm_1.weight": "post_feedforward_layernorm_1.weight",
            "pre_ffw_norm_2.weight": "pre_feedforward_layernorm_2.weight",
            "post_ffw_norm_2.weight": "post_feedforward_layernorm_2.weight",
            "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
            "ffn_gate_inp.weight": "router.proj.weight", "ffn_gate_inp.scale": "router.scale",
            "ffn_down_exps.scale": "router.per_expert_scale", "ffn_gate_up_exps.weight": "experts.gate_up_proj",
            "ffn_down_exps.weight": "experts.down_proj", "layer_output_scale.weight": "layer_scalar"}


def hf_name(gguf_name: str) -> str | None:
    if gguf_name in HF_GLOBAL:
        return HF_GLOBAL[gguf_name]
    if gguf_name.startswith("blk."):
        _, il, rest = gguf_name.split(".", 2)
        if rest == "enc_layer_output_scale.weight":
            return f"model.encoder.language_model.layers.{il}.layer_scalar"
        return f"model.decoder.layers.{il}.{HF_LAYER[rest]}"
    return None


def hf_tensors(directory) -> dict:
    """Every tensor of a checkpoint as float32 numpy, read with the safetensors library (torch for bf16)."""
    from safetensors import safe_open

    out = {}
    for f in sorted(glob.glob(os.path.join(directory, "*.safetensors"))):
        with safe_open(f, "pt") as st:
            for k in st.keys():
                out[k] = st.get_tensor(k).float().numpy()
    return out


def type_label(field) -> str:
    t = field.types[0].name
    return f"ARRAY[{field.types[-1].name}]" if t == "ARRAY" else t


def read_gguf(path):
    """(ordered [(key, type label, value)], {name: ReaderTensor}, [tensor names in file order])."""
    import gguf

    r = gguf.GGUFReader(path)
    kv = [(k, type_label(f), f.contents()) for k, f in r.fields.items() if not k.startswith("GGUF.")]
    return kv, {t.name: t for t in r.tensors}, [t.name for t in r.tensors], r


def dequant(rt) -> np.ndarray:
    """A tensor's values as float32 in numpy order (reversed ne)."""
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(rt.shape))
    t = Q(int(rt.tensor_type))
    if t == Q.F32:
        return np.asarray(rt.data, dtype=np.float32).reshape(shape)
    if t == Q.F16:
        return np.asarray(rt.data).view(np.float16).astype(np.float32).reshape(shape)
    return dequantize(np.asarray(rt.data), t).reshape(shape).astype(np.float32)


def _libggml():
    import libggml

    base = Path(libggml.__file__).parent / "lib64" / "libggml-base.so"
    lib = ctypes.CDLL(str(base))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return lib


def ggml_quantize(qtype: int, rows: np.ndarray) -> bytes:
    """ggml_quantize_chunk from the libggml-python package, called directly (not through our library)."""
    lib = _libggml()
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    n_rows, n_per_row = rows.shape
    out = np.zeros(lib.ggml_row_size(int(qtype), n_per_row) * n_rows, dtype=np.uint8)
    n = lib.ggml_quantize_chunk(int(qtype), rows.ctypes.data, out.ctypes.data, 0, n_rows, n_per_row, None)
    assert n == out.nbytes
    return out.tobytes()


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """name -> HF checkpoint dir, built once: the tiny_hf configs in f32, plus "wide_bf16" stored as bfloat16."""
    import torch

    root = tmp_path_factory.mktemp("hf")
    out = {name: tiny_hf.save_checkpoint(name, root / name, seed=i) for i, name in enumerate(tiny_hf.CONFIGS)}
    out["wide_bf16"] = tiny_hf.save_checkpoint("wide", root / "wide_bf16", seed=7, dtype=torch.bfloat16)
    return out
