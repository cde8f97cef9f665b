"""HF tensor names and shapes -> GGUF tensor names and ggml shapes, checked against the config.

Every HF weight of this model is stored row-major with the input dimension last ([out, in] linears,
[experts, rows, in] expert stacks), which is exactly ggml's layout with the dimensions reversed, so no tensor is
transposed or permuted: a GGUF tensor is a prefix of rows of one HF tensor (the embedding is cut to the
tokenizer's size) or a synthesised one (`rope_freqs`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .. import names
from ..errors import UnsupportedModelError
from .checkpoint import Checkpoint, TensorEntry
from .hparams import HParams
from .quant_formats import QuantScheme
from .quantized import ConcatRows, Matrix, WeightFinder

DECODER = "model.decoder."
ENCODER = "model.encoder.language_model."


@dataclass
class RowSource:
    """Where the rows of one output tensor come from: `read(start, count)` gives float32 [count, row_len]."""
    n_rows: int
    row_len: int
    dtype: str                                   # source element type name ("BF16", "F32", "F16", ...)
    read: Callable[[int, int], np.ndarray]
    read_raw: Callable[[int, int], np.ndarray] | None = None   # stored bytes, for same-type copies
    raw_type: int | None = None                  # ggml type of read_raw's bytes
    origin: str | None = None                    # the file the rows are read from, for error messages
    native: int | None = None                    # quantized checkpoints: the ggml type `auto` keeps it in
    row_scale: Callable[[], np.ndarray] | None = None  # NVFP4: per-row second-level scale (see quantized.py)

    @property
    def n_elements(self) -> int:
        return self.n_rows * self.row_len


@dataclass
class OutTensor:
    """One tensor of the GGUF being written."""
    name: str
    ne: tuple                 # ggml order: ne[0] is the row length
    role: str                 # what the quantization rules key on (see quant_rules.py)
    layer: int | None
    source: RowSource
    hf_name: str | None = None
    qtype: int | None = None  # ggml type, set by the quantization rules

    @property
    def n_dims(self) -> int:
        return len(self.ne)


def array_source(values: np.ndarray) -> RowSource:
    a = np.ascontiguousarray(values, dtype=np.float32)
    a2 = a.reshape(-1, a.shape[-1]) if a.ndim > 1 else a.reshape(1, -1)
    return RowSource(a2.shape[0], a2.shape[1], "F32", lambda s, c: a2[s:s + c])


def matrix_source(m: Matrix, origin: str | None, n_rows: int | None = None) -> RowSource:
    """The RowSource of a checkpoint weight (plain, dequantized, or NVFP4 blocks copied as they are)."""
    return RowSource(n_rows=m.n_rows if n_rows is None else n_rows, row_len=m.row_len, dtype=m.dtype, read=m.rows,
                     read_raw=m.blocks if m.raw_type is not None else None, raw_type=m.raw_type, origin=origin,
                     native=m.native, row_scale=m.row_scale if m.row_scale() is not None else None)


def _source(found: Found, n_rows: int | None = None) -> RowSource:
    m = found.matrix
    origin = getattr(getattr(m, "entry", None) or getattr(m, "codes", None), "path", None)
    return matrix_source(m, origin.name if origin is not None else None, n_rows)


def rope_freqs(hp: HParams) -> np.ndarray:
    """Per-pair frequency divisors for the full-attention layers' proportional RoPE over head_dim_full dims:
    the first partial_rotary_factor*head_dim/2 pairs rotate (1.0, times the rope `factor`), the rest get 1e30,
    which makes their angle 0 (HF's inv_freq is 0 there)."""
    n_pairs = hp.head_dim_full // 2
    n_rot = int(hp.partial_rotary_full * hp.head_dim_full // 2)
    out = np.full(n_pairs, 1e30, dtype=np.float32)
    out[:n_rot] = hp.rope_factor_full
    return out


# What the quantization rules key on, per names-table id (norms, scalars and scales are all 1-D and stay F32).
ROLE_BY_ID = {
    "TOKEN_EMBD": "token_embd", "ROPE_FREQS": "rope_freqs", "OUTPUT_NORM": "norm", "SELF_COND_PRE_NORM": "norm",
    "SELF_COND_GATE": "self_cond_gate", "SELF_COND_UP": "self_cond_up", "SELF_COND_DOWN": "self_cond_down",
    "ATTN_NORM": "norm", "ATTN_Q_NORM": "norm", "ATTN_K_NORM": "norm", "POST_ATTENTION_NORM": "norm",
    "FFN_NORM": "norm", "POST_FFW_NORM": "norm", "POST_FFW_NORM_1": "norm", "POST_FFW_NORM_2": "norm",
    "PRE_FFW_NORM_2": "norm", "LAYER_OUTPUT_SCALE": "scalar", "ENC_LAYER_OUTPUT_SCALE": "scalar",
    "FFN_DOWN_EXPS_SCALE": "scale", "FFN_GATE_INP_SCALE": "scale", "FFN_GATE_INP": "router",
    "ATTN_Q": "attn_q", "ATTN_K": "attn_k", "ATTN_V": "attn_v", "ATTN_OUTPUT": "attn_output",
    "FFN_GATE": "ffn_gate", "FFN_UP": "ffn_up", "FFN_DOWN": "ffn_down",
    "FFN_GATE_UP_EXPS": "ffn_gate_up_exps", "FFN_GATE_EXPS": "ffn_gate_exps", "FFN_UP_EXPS": "ffn_up_exps",
    "FFN_DOWN_EXPS": "ffn_down_exps",
}
# NVFP4 weights carry their second-level scale in a sidecar F32 tensor "<ID>_OUT_SCALE" (names table).
ROLE_BY_ID.update({ident: "scale" for ident in list(names.TENSOR) + list(names.LAYER_TENSOR)
                   if ident.endswith("_OUT_SCALE")})


def out_scale_name(gguf_name: str) -> str | None:
    """The sidecar scale tensor's name of weight `gguf_name` (None if the names table has none for it)."""
    for ident, pattern in names.TENSOR.items():
        if pattern == gguf_name and ident + "_OUT_SCALE" in names.TENSOR:
            return names.TENSOR[ident + "_OUT_SCALE"]
    m = re.match(r"blk\.(\d+)\.", gguf_name)
    if m:
        for ident, pattern in names.LAYER_TENSOR.items():
            if pattern.replace("%d", m.group(1)) == gguf_name and ident + "_OUT_SCALE" in names.LAYER_TENSOR:
                return names.LAYER_TENSOR[ident + "_OUT_SCALE"].replace("%d", m.group(1))
    return None


def role_of(gguf_name: str) -> tuple:
    """(role, layer) of a GGUF tensor name from the names table; ("other", layer) for names it does not hold."""
    for ident, pattern in names.TENSOR.items():
        if pattern == gguf_name:
            return ROLE_BY_ID.get(ident, "other"), None
    m = re.match(r"blk\.(\d+)\.", gguf_name)
    if m:
        layer = int(m.group(1))
        for ident, pattern in names.LAYER_TENSOR.items():
            if pattern.replace("%d", m.group(1)) == gguf_name:
                return ROLE_BY_ID.get(ident, "other"), layer
        return "other", layer
    return "other", None


# Per-layer tensors in the order PR #24423's converter writes them: (GGUF id, HF suffix, HF shape).
def _layer_specs(hp: HParams, il: int):
    E, H, F, FE = hp.n_embd, hp.n_embd, hp.n_ff, hp.n_ff_exp
    d, nkv, nq = hp.head_dim[il], hp.n_head_kv[il], hp.n_head
    specs = [
        ("FFN_DOWN_EXPS", "experts.down_proj", (hp.n_expert, H, FE)),
        ("FFN_GATE_UP_EXPS", "experts.gate_up_proj", (hp.n_expert, 2 * FE, H)),
        ("ATTN_NORM", "input_layernorm.weight", (E,)),
        ("LAYER_OUTPUT_SCALE", "layer_scalar", (1,)),
        ("FFN_DOWN", "mlp.down_proj.weight", (H, F)),
        ("FFN_GATE", "mlp.gate_proj.weight", (F, H)),
        ("FFN_UP", "mlp.up_proj.weight", (F, H)),
        ("POST_ATTENTION_NORM", "post_attention_layernorm.weight", (E,)),
        ("POST_FFW_NORM", "post_feedforward_layernorm.weight", (E,)),
        ("POST_FFW_NORM_1", "post_feedforward_layernorm_1.weight", (E,)),
        ("POST_FFW_NORM_2", "post_feedforward_layernorm_2.weight", (E,)),
        ("FFN_NORM", "pre_feedforward_layernorm.weight", (E,)),
        ("PRE_FFW_NORM_2", "pre_feedforward_layernorm_2.weight", (E,)),
        ("FFN_DOWN_EXPS_SCALE", "router.per_expert_scale", (hp.n_expert,)),
        ("FFN_GATE_INP", "router.proj.weight", (hp.n_expert, H)),
        ("FFN_GATE_INP_SCALE", "router.scale", (H,)),
        ("ATTN_K_NORM", "self_attn.k_norm.weight", (d,)),
        ("ATTN_K", "self_attn.k_proj.weight", (nkv * d, H)),
        ("ATTN_OUTPUT", "self_attn.o_proj.weight", (H, nq * d)),
        ("ATTN_Q_NORM", "self_attn.q_norm.weight", (d,)),
        ("ATTN_Q", "self_attn.q_proj.weight", (nq * d, H)),
    ]
    if hp.is_sliding(il):  # full layers have no v_proj: V is the raw k_proj output
        specs.append(("ATTN_V", "self_attn.v_proj.weight", (nkv * d, H)))
    return specs


_GLOBAL_SPECS = [
    # (GGUF id, HF suffix under model.decoder., HF shape fn)
    ("OUTPUT_NORM", "norm.weight", lambda hp: (hp.n_embd,)),
    ("SELF_COND_DOWN", "self_conditioning.down_proj.weight", lambda hp: (hp.n_embd, hp.n_ff)),
    ("SELF_COND_GATE", "self_conditioning.gate_proj.weight", lambda hp: (hp.n_ff, hp.n_embd)),
    ("SELF_COND_PRE_NORM", "self_conditioning.pre_norm.weight", lambda hp: (hp.n_embd,)),
    ("SELF_COND_UP", "self_conditioning.up_proj.weight", lambda hp: (hp.n_ff, hp.n_embd)),
]


# Experts stored one tensor per expert and projection (vLLM's layout, what quantizers that work per nn.Linear
# write): HF suffix of the fused parameter -> the per-expert projections whose rows it stacks, in order.
_SPLIT_EXPERTS = {"experts.gate_up_proj": ("gate_proj", "up_proj"), "experts.down_proj": ("down_proj",)}


@dataclass
class Found:
    """A weight the resolver found: its name (the first tensor of a split stack) and its rows."""
    name: str
    matrix: Matrix

    @property
    def shape(self) -> tuple:
        return (self.matrix.n_rows, self.matrix.row_len)


class _Resolver:
    """Finds HF weights (decoder name, else the encoder.language_model fallback), plain or quantized, fused or
    split per expert, and checks their shapes."""

    def __init__(self, ckpt: Checkpoint, scheme: QuantScheme | None = None):
        self.ckpt = ckpt
        self.finder = WeightFinder(ckpt, scheme)
        self.missing: list[str] = []
        self.misshapen: list[str] = []

    @property
    def used(self) -> set:
        return self.finder.used

    def find(self, suffix: str, shape: tuple, prefixes=(DECODER, ENCODER)) -> Found | None:
        for prefix in prefixes:
            name = prefix + suffix
            if self.finder.exists(name):
                m, why = self.finder.open(name, shape)
                if m is None:
                    self.misshapen.append(why)
                    return None
                return Found(name, m)
        split = self._find_split(suffix, shape, prefixes)
        if split is not None:
            return split
        self.missing.append(f"{prefixes[0]}{suffix} {list(shape)}")
        return None

    def _find_split(self, suffix: str, shape: tuple, prefixes) -> Found | None:
        """experts.gate_up_proj / experts.down_proj from experts.<e>.<proj>.weight, re-fused (gate rows first)."""
        layer, _, param = suffix.rpartition(".experts.")
        projs = _SPLIT_EXPERTS.get("experts." + param)
        if projs is None:
            return None
        n_expert, rows, cols = shape
        per_proj = rows // len(projs)
        for prefix in prefixes:
            first = f"{prefix}{layer}.experts.0.{projs[0]}.weight"
            if not self.finder.exists(first):
                continue
            parts = []
            for e in range(n_expert):
                for proj in projs:
                    name = f"{prefix}{layer}.experts.{e}.{proj}.weight"
                    if not self.finder.exists(name):
                        self.missing.append(f"{name} [{per_proj}, {cols}] (experts stored one per tensor)")
                        return None
                    m, why = self.finder.open(name, (per_proj, cols))
                    if m is None:
                        self.misshapen.append(why)
                        return None
                    parts.append(m)
            return Found(first, ConcatRows(parts))
        return None


def raise_if_mismatched(res: "_Resolver", what: str) -> None:
    """Every missing and misshapen tensor the resolver met, in one UnsupportedModelError that starts with `what`."""
    problems = []
    if res.missing:
        problems.append(f"{len(res.missing)} missing tensor(s): " + "; ".join(res.missing[:20])
                        + (" ..." if len(res.missing) > 20 else ""))
    if res.misshapen:
        problems.append(f"{len(res.misshapen)} misshapen tensor(s): " + "; ".join(res.misshapen[:20]))
    if problems:
        raise UnsupportedModelError(f"{what}: " + " | ".join(problems))


def plan_tensors(hp: HParams, ckpt: Checkpoint, n_vocab_out: int, log=print, scheme: QuantScheme | None = None,
                 vision_converted: bool = False) -> list:
    """The output tensors in file order, each with its source. Raises UnsupportedModelError listing every missing
    or misshapen tensor at once."""
    res = _Resolver(ckpt, scheme)
    out: list[OutTensor] = [OutTensor(names.tensor("ROPE_FREQS"), (hp.head_dim_full // 2,), "rope_freqs", None,
                                      array_source(rope_freqs(hp)))]

    embd = res.find("embed_tokens.weight", (hp.n_vocab, hp.n_embd))
    if embd is not None:
        if n_vocab_out > hp.n_vocab:
            raise UnsupportedModelError(f"the tokenizer has {n_vocab_out} tokens but embed_tokens only "
                                        f"{hp.n_vocab} rows")
        if n_vocab_out < hp.n_vocab:
            log(f"trimming token_embd from {hp.n_vocab} to the tokenizer's {n_vocab_out} rows")
        out.append(OutTensor(names.tensor("TOKEN_EMBD"), (hp.n_embd, n_vocab_out), "token_embd", None,
                             _source(embd, n_rows=n_vocab_out), embd.name))

    for ident, suffix, shape_fn in _GLOBAL_SPECS:
        entry = res.find(suffix, shape_fn(hp))
        if entry is not None:
            out.append(OutTensor(names.tensor(ident), tuple(reversed(shape_fn(hp))), ROLE_BY_ID[ident], None,
                                 _source(entry), entry.name))

    for il in range(hp.n_layer):
        for ident, suffix, shape in _layer_specs(hp, il):
            entry = res.find(f"layers.{il}.{suffix}", shape)
            if entry is not None:
                out.append(OutTensor(names.layer_tensor(ident, il), tuple(reversed(shape)), ROLE_BY_ID[ident], il,
                                     _source(entry), entry.name))
        # The encoder's copy of the per-layer scalar: only the encoder prefix counts (no decoder fallback).
        entry = res.find(f"layers.{il}.layer_scalar", (1,), prefixes=(ENCODER,))
        if entry is not None:
            out.append(OutTensor(names.layer_tensor("ENC_LAYER_OUTPUT_SCALE", il), (1,), "scalar", il,
                                 _source(entry), entry.name))

    raise_if_mismatched(res, "checkpoint does not match its config.json")

    ignored = res.finder.mark_ignored()
    if ignored:
        log(f"ignoring {len(ignored)} activation / KV-cache scale tensor(s) (the engine keeps activations "
            "unquantized)")
    unused = [n for n in ckpt.names() if n not in res.used]
    vision = [n for n in unused if n.startswith("model.encoder.") and not n.startswith(ENCODER)]
    if vision and not vision_converted:
        log(f"dropping {len(vision)} vision-tower tensors (text-only conversion; --mmproj OUT writes them as a "
            "projector GGUF)")
    other = [n for n in unused if n not in vision]
    if other:
        log(f"ignoring {len(other)} tensor(s) the text model does not use: {', '.join(other[:8])}"
            + (" ..." if len(other) > 8 else ""))
    return out
