"""Which ggml type each output tensor gets, for an `--outtype` plus `--tensor-type REGEX=TYPE` overrides.

The recipes are llama.cpp's (`llama_tensor_get_type`), applied to this model's tensors; for q4_k_m they reproduce
the published unsloth Q4_K_M mix (gguf-format.md §8: f32 423, q4_K 194, q5_0 33, q8_0 28, q6_K 14 for the
30-layer model):
  - 1-D tensors (norms, layer scalars, router/expert scales, rope_freqs) and the router matrix stay F32;
  - the tied embedding doubles as the output head and gets q6_K in every quantized recipe except q8_0/mxfp4;
  - q4_k_m / q5_k_m give q6_K to attn_v and ffn_down(_exps) on llama.cpp's "more bits" layers;
  - a tensor whose rows do not split into whole blocks falls back: q4_K->q5_0, q5_K->q5_1, q6_K->q8_0, and
    anything still not fitting (or a 32-block type on a row not a multiple of 32) -> f16.
"""
from __future__ import annotations

import logging
import re
from collections import defaultdict
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q, LlamaFileType as FT

from ..errors import InvalidArgumentError


@dataclass(frozen=True)
class OutType:
    name: str
    default: Q            # the type of an ordinary weight matrix
    file_type: FT


OUTTYPES = {
    "f32": OutType("f32", Q.F32, FT.ALL_F32),
    "f16": OutType("f16", Q.F16, FT.MOSTLY_F16),
    "bf16": OutType("bf16", Q.BF16, FT.MOSTLY_BF16),
    "q8_0": OutType("q8_0", Q.Q8_0, FT.MOSTLY_Q8_0),
    "q4_0": OutType("q4_0", Q.Q4_0, FT.MOSTLY_Q4_0),
    "q5_0": OutType("q5_0", Q.Q5_0, FT.MOSTLY_Q5_0),
    "q6_k": OutType("q6_k", Q.Q6_K, FT.MOSTLY_Q6_K),
    "q5_k_m": OutType("q5_k_m", Q.Q5_K, FT.MOSTLY_Q5_K_M),
    "q4_k_m": OutType("q4_k_m", Q.Q4_K, FT.MOSTLY_Q4_K_M),
    "mxfp4": OutType("mxfp4", Q.MXFP4, FT.MOSTLY_MXFP4_MOE),
}
OUTTYPE_CHOICES = tuple(OUTTYPES) + ("auto",)
PROJECTOR_OUTTYPE_CHOICES = ("f32", "f16", "bf16", "q8_0")  # the vision projector's (mmproj.py) types
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
_ALWAYS_F32_ROLES = {"norm", "scalar", "scale", "rope_freqs", "router"}
_EXPERT_ROLES = {"ffn_gate_up_exps", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"}
_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0}
_SHOWN_PER_FALLBACK = 6  # tensor names listed per (asked, written) pair in the fallback warning

logger = logging.getLogger("diffgemma_cpp.convert")


def parse_outtype(name: str, source_dtypes=()) -> OutType:
    """`--outtype` value -> OutType. "auto" keeps 16-bit sources as they are (bf16 -> bf16, f16 -> f16) and
    stores f32 sources as f16, like llama.cpp's converter."""
    key = name.lower()
    if key == "auto":
        key = "bf16" if "BF16" in set(source_dtypes) else "f16"
    if key not in OUTTYPES:
        raise InvalidArgumentError(f"unknown output type {name!r}; choose one of {', '.join(OUTTYPE_CHOICES)}")
    return OUTTYPES[key]


def ggml_type_from_name(name: str) -> Q:
    try:
        return Q[name.upper()]
    except KeyError:
        raise InvalidArgumentError(f"unknown tensor type {name!r} (ggml type names such as f16, q8_0, q4_k, q6_k)") \
            from None


def parse_overrides(specs) -> list:
    """["REGEX=TYPE", ...] -> [(compiled regex, ggml type)]; the first matching override wins."""
    out = []
    for spec in specs or []:
        pattern, sep, tname = spec.rpartition("=")
        if not sep or not pattern:
            raise InvalidArgumentError(f"--tensor-type {spec!r}: expected REGEX=TYPE, e.g. 'ffn_down_exps=q8_0'")
        try:
            rx = re.compile(pattern)
        except re.error as exc:
            raise InvalidArgumentError(f"--tensor-type {spec!r}: bad regular expression ({exc})") from None
        out.append((rx, ggml_type_from_name(tname)))
    return out


def fits(qtype: Q, row_len: int) -> bool:
    return row_len % GGML_QUANT_SIZES[qtype][0] == 0


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, and every third between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _recipe_type(t, outtype: OutType, i_attn_v: int, n_attn_v: int, n_layer: int) -> Q:
    base = outtype.default
    if base in FLOAT_TYPES:
        return base
    if outtype.name == "mxfp4":
        return Q.MXFP4 if t.role in _EXPERT_ROLES else Q.Q8_0
    if t.role == "token_embd":
        return Q.Q8_0 if base == Q.Q8_0 else Q.Q6_K
    if outtype.name in ("q4_k_m", "q5_k_m"):
        if t.role == "attn_v" and use_more_bits(i_attn_v, n_attn_v):
            return Q.Q6_K
        if t.role in ("ffn_down", "ffn_down_exps") and t.layer is not None and use_more_bits(t.layer, n_layer):
            return Q.Q6_K
    return base


def _fallback(qtype: Q, row_len: int) -> Q:
    seen = 0
    while not fits(qtype, row_len) and seen < 4:
        qtype = _FALLBACK.get(qtype, Q.F16)
        seen += 1
    return qtype if fits(qtype, row_len) else Q.F32


def _native_type(t) -> Q | None:
    """`auto` on a quantized checkpoint: the type its quantized weights keep (NVFP4 as NVFP4, fp8 / int8 as
    Q8_0). The embedding and the router stay out of NVFP4 (read by get_rows / kept F32 by every recipe): exact
    F32 for them, as for an NVFP4 row ggml's 64-wide blocks cannot tile."""
    native = getattr(t.source, "native", None)
    if native is None or t.n_dims < 2 or t.role in _ALWAYS_F32_ROLES:
        return None
    native = Q(native)
    if native == Q.NVFP4 and (t.role == "token_embd" or not fits(native, t.ne[0])):
        return Q.F32
    return native


def assign_types(tensors, outtype: OutType, overrides=(), n_layer: int | None = None,
                 keep_native: bool = False) -> None:
    """Set `.qtype` on every OutTensor (in file order, which the attn_v counter depends on). keep_native: a
    quantized checkpoint converted with `auto` keeps its quantized weights' own types (_native_type)."""
    n_attn_v = sum(1 for t in tensors if t.role == "attn_v")
    if n_layer is None:
        n_layer = 1 + max((t.layer for t in tensors if t.layer is not None), default=0)
    i_attn_v = 0
    fell_back = defaultdict(list)  # (asked, written) -> names
    for t in tensors:
        if t.n_dims < 2 or t.role in _ALWAYS_F32_ROLES:
            qtype = Q.F32
        else:
            qtype = _recipe_type(t, outtype, i_attn_v, n_attn_v, n_layer)
            native = _native_type(t) if keep_native else None
            if native is not None:
                qtype = native
        if t.n_dims >= 2 and t.role not in ("scale",):
            for rx, forced in overrides:
                if rx.search(t.name):
                    qtype = forced
                    break
        t.qtype = _fallback(qtype, t.ne[0])
        if t.qtype != qtype:
            fell_back[(qtype, t.qtype)].append(f"{t.name} (rows of {t.ne[0]})")
        if t.role == "attn_v":
            i_attn_v += 1
    if fell_back:
        _warn_fallbacks(fell_back)


def _warn_fallbacks(fell_back: dict) -> None:
    """One warning naming the tensors written at another type than the recipe or --tensor-type asked for."""
    lines = []
    for (asked, written), names in fell_back.items():
        more = f", and {len(names) - _SHOWN_PER_FALLBACK} more" if len(names) > _SHOWN_PER_FALLBACK else ""
        lines.append(f"  {asked.name} -> {written.name}: {len(names)} tensor(s): "
                     f"{', '.join(names[:_SHOWN_PER_FALLBACK])}{more}")
    total = sum(len(v) for v in fell_back.values())
    logger.warning("%d tensor(s) written at another type than asked, as their rows do not split into whole blocks "
                   "of it:\n%s", total, "\n".join(lines))
