"""NaN / Inf detection for the streaming writer: every chunk of every output tensor is checked before it is
encoded or copied, so a corrupt or diverged checkpoint is refused with the tensor, the first bad value and the
number of bad values, whatever the output type (ggml's quantizers would otherwise assert, and f32/f16/bf16
copies would carry the NaN into the GGUF, to surface only as NaN logits at run time).

Memory stays bounded: the check works on the chunk in hand; only after a bad chunk is found is the rest of that
tensor re-read, one chunk at a time, to count the bad values for the report.
"""
from __future__ import annotations

import re

import numpy as np
from gguf import GGMLQuantizationType as Q

from ..errors import ModelLoadError, UnsupportedTypeError

_RAW_VIEWS = {Q.F32: "<f4", Q.F16: "<f2"}


class NonFiniteChunk(Exception):
    """Internal: a worker found non-finite values in one chunk (turned into a ModelLoadError by the writer)."""

    def __init__(self, chunk_base: int, first: int, value: float, count: int):
        super().__init__(f"non-finite value at flat index {first}")
        self.chunk_base, self.first, self.value, self.count = chunk_base, first, value, count


def _bad_values(chunk: np.ndarray, raw_type):
    """(flat indices of the NaN/Inf values of `chunk`, their values as float). `raw_type` is the ggml type of
    `chunk`'s bytes, or None for float32 rows. Quantized bytes copied as they are cannot be checked cheaply and
    are passed (they came from a GGUF that was itself checked when written)."""
    flat = np.ascontiguousarray(chunk).reshape(-1)
    if raw_type is None:
        values = flat
    elif raw_type in _RAW_VIEWS:
        values = flat.view(np.uint8).view(_RAW_VIEWS[raw_type])
    elif raw_type == Q.BF16:  # exponent all ones = Inf or NaN; no widening needed to find them
        bits = flat.view(np.uint8).view("<u2")
        idx = np.flatnonzero((bits & 0x7F80) == 0x7F80)
        return idx, (bits[idx[:1]].astype(np.uint32) << 16).view(np.float32)
    else:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    mask = ~np.isfinite(values)
    if not mask.any():  # the common case: one vectorised pass, no index array
        return np.empty(0, dtype=np.int64), values[:0]
    idx = np.flatnonzero(mask)
    return idx, values[idx[:1]]


def _chunk_data(t, start: int, count: int):
    """What the writer encodes for this chunk: (array, ggml type of its bytes or None for float32 rows)."""
    src = t.source
    if src.read_raw is not None and src.raw_type == t.qtype:
        return src.read_raw(start, count), src.raw_type
    return src.read(start, count), None


def check_chunk(t, start: int, count: int):
    """Read rows [start, start+count) of output tensor `t`; raise NonFiniteChunk if any value is NaN or Inf.
    Returns (array, raw ggml type or None), ready for the writer to copy or encode."""
    data, raw_type = _chunk_data(t, start, count)
    idx, first_values = _bad_values(data, raw_type)
    if idx.size:
        base = start * t.source.row_len
        raise NonFiniteChunk(base, base + int(idx[0]), float(first_values[0]), int(idx.size))
    return data, raw_type


def non_finite_error(t, bad: NonFiniteChunk, chunks) -> ModelLoadError:
    """The report for tensor `t` whose first bad chunk is `bad`: counts the bad values of the later chunks."""
    total = bad.count
    for start, count in chunks:
        if start * t.source.row_len > bad.chunk_base:
            data, raw_type = _chunk_data(t, start, count)
            total += int(_bad_values(data, raw_type)[0].size)
    shape = tuple(reversed(t.ne))
    where = tuple(int(i) for i in np.unravel_index(bad.first, shape))
    origin = f" in {t.source.origin}" if getattr(t.source, "origin", None) else ""
    name = f"{t.hf_name}{origin} (GGUF {t.name})" if t.hf_name else f"{t.name}{origin}"
    n_elements = int(np.prod(shape))
    return ModelLoadError(
        f"tensor {name} holds {total} NaN/Inf value(s) out of {n_elements}; the first is {bad.value} at index "
        f"{list(where)} of shape {list(shape)} (flat index {bad.first}). The checkpoint is corrupt (or was saved "
        "from a diverged run); no GGUF written, as it would only give NaN logits")


F16_MAX = 65504.0


def check_f16_range(t, start: int, rows: np.ndarray, encoded: np.ndarray) -> None:
    """Finite f32/bf16 values beyond +-65504 become Inf when written as F16: refuse that too (the input was
    already checked, so any Inf in the encoded chunk is an overflow), naming the tensor and the first value."""
    halves = encoded.view("<f2")
    bad = ~np.isfinite(halves)
    if not bad.any():
        return
    idx = int(np.flatnonzero(bad)[0])
    first = start * t.source.row_len + idx
    shape = tuple(reversed(t.ne))
    where = [int(i) for i in np.unravel_index(first, shape)]
    n_big = int(np.count_nonzero(bad))
    raise UnsupportedTypeError(
        f"tensor {t.hf_name or t.name} (GGUF {t.name}): value {float(rows.reshape(-1)[idx])} at index {where} does "
        f"not fit in F16 (largest {F16_MAX:g}; {n_big} such value(s) in rows {start}..{start + rows.shape[0] - 1}); "
        f"convert with --outtype bf16 or f32, or keep it in f32 with --tensor-type '{re.escape(t.name)}=f32'")
