"""Float32 rows -> the bytes of a ggml type. The one place the converter turns numbers into a tensor type.

Everything but f32 goes through ggml's own routines (`diffgemma_quantize_rows` in our C library), so the bytes
are exactly what ggml / llama.cpp's quantizer would write for the same input.
"""
from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

from ..errors import UnsupportedTypeError


def row_bytes(qtype: int, row_len: int) -> int:
    block, size = GGML_QUANT_SIZES[Q(qtype)]
    if row_len % block:
        raise UnsupportedTypeError(f"{Q(qtype).name}: row length {row_len} is not a multiple of its block size {block}")
    return row_len // block * size


def encode_rows(qtype: int, rows: np.ndarray) -> np.ndarray:
    """Encode a float32 [n_rows, row_len] array as ggml type `qtype`; returns uint8 bytes, row after row."""
    if qtype == Q.F32:
        return np.ascontiguousarray(rows, dtype="<f4").reshape(-1).view(np.uint8)
    from .. import _native

    return _native.quantize_rows(int(qtype), rows)
