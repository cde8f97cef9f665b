"""Weights of quantized checkpoints (fp8 e4m3, int8, NVFP4) read row by row: dequantized to float32, or for NVFP4
repacked bit for bit into ggml's NVFP4 blocks.

A Matrix is one output weight viewed as 2-D rows (a 3-D expert stack is [experts * rows, cols]); ConcatRows
stacks several (experts stored one per tensor, re-fused here). Everything is read in row chunks from the
checkpoint, so memory stays bounded by the writer's chunk size; only the small scale tensors (per tensor,
per channel, per 128x128 block) are read whole when the plan is made, and checked then.

Exactness (QUANTIZED_FORMATS.md has the derivations):
  - fp8 / int8: value = code * scale with the code and the scale widened exactly to float32, one rounding.
  - NVFP4: e2m1 * e4m3 is exact in float32 (at most 6 significant bits); ggml's NVFP4 block decodes to exactly
    that product (its table holds 2 * e2m1 and its UE4M3 decoder halves the scale). The per-tensor second-level
    scale (FP32) cannot live in the block, so it becomes a per-row F32 vector the graph multiplies the product's
    output by ("<weight>.out_scale"); dequantized value = fl32(e2m1 * e4m3 * scale_2), the checkpoint's.
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as Q

from ..errors import ModelLoadError, UnsupportedModelError
from .checkpoint import Checkpoint, TensorEntry
from .quant_formats import IGNORED_SUFFIXES, QuantScheme

E2M1 = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def _e4m3fn_table() -> np.ndarray:
    """float32 value of every e4m3fn byte (OCP FP8: bias 7, no infinities, S.1111.111 is NaN)."""
    out = np.empty(256, dtype=np.float32)
    for b in range(256):
        sign = -1.0 if b & 0x80 else 1.0
        exp, man = (b >> 3) & 0xF, b & 0x7
        if exp == 0xF and man == 0x7:
            out[b] = np.nan
        elif exp == 0:
            out[b] = sign * man * 2.0 ** -9
        else:
            out[b] = sign * (1 + man / 8) * 2.0 ** (exp - 7)
    return out


E4M3 = _e4m3fn_table()
NVFP4_BLOCK = 64        # ggml's NVFP4 block: 4 sub-blocks of 16, 4 scale bytes then 32 bytes of nibbles
NVFP4_BLOCK_BYTES = 36


def nvfp4_repack(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Checkpoint NVFP4 rows -> ggml NVFP4 blocks, as uint8 [rows, cols/64*36].

    codes: uint8 [rows, cols/2], element 2k in the low nibble of byte k and 2k+1 in the high one (ModelOpt and
    compressed-tensors agree); scales: e4m3 bytes [rows, cols/16], already checked non-negative and not NaN.
    ggml's sub-block of 16 keeps element j in the low nibble of byte j and element j+8 in its high nibble; its
    scale byte is read as unsigned e4m3 (bit 7 ignored), so the checkpoint byte is copied with 0x80 (-0) -> 0."""
    rows, half = codes.shape
    cols = half * 2
    nib = np.empty((rows, cols), dtype=np.uint8)
    nib[:, 0::2] = codes & 0x0F
    nib[:, 1::2] = codes >> 4
    sub = nib.reshape(rows, cols // 16, 16)
    qs = (sub[:, :, :8] | (sub[:, :, 8:] << 4)).reshape(rows, cols // NVFP4_BLOCK, 32)
    d = (scales & 0x7F).reshape(rows, cols // NVFP4_BLOCK, 4)
    return np.concatenate([d, qs], axis=2).reshape(rows, cols // NVFP4_BLOCK * NVFP4_BLOCK_BYTES)


class Matrix:
    """Rows of one weight. rows(): float32 dequantized; blocks(): ggml bytes of `raw_type` (or None)."""
    n_rows: int
    row_len: int
    dtype: str                       # the stored type's name, for --dry-run and error messages
    native: int | None = None        # the ggml type that keeps it exactly / as the format intends (auto)
    raw_type: int | None = None      # ggml type of blocks()' bytes

    def rows(self, start: int, count: int) -> np.ndarray:
        raise NotImplementedError

    def blocks(self, start: int, count: int) -> np.ndarray:
        raise NotImplementedError

    def row_scale(self) -> np.ndarray | None:
        """Per-row factor the graph multiplies the product by (NVFP4's second-level scale), or None."""
        return None


class PlainMatrix(Matrix):
    """An unquantized (F32 / F16 / BF16) tensor."""

    def __init__(self, ckpt: Checkpoint, entry: TensorEntry):
        raw = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}
        self.ckpt, self.entry = ckpt, entry
        self.n_rows, self.row_len, self.dtype = entry.n_rows, entry.row_len, entry.dtype
        self.raw_type = raw[entry.dtype]

    def rows(self, start, count):
        return self.ckpt.read_f32(self.entry, start, count)

    def blocks(self, start, count):
        return self.ckpt.read_raw(self.entry, start, count)


def _per_row(values: np.ndarray, n_rows: int, per: int) -> np.ndarray:
    """A scale given per tensor ([1]) or per expert ([E]) -> one value per row (experts hold `per` rows)."""
    return np.repeat(values.reshape(-1), per)[:n_rows] if values.size > 1 else np.full(n_rows, values.reshape(-1)[0],
                                                                                         dtype=np.float32)


class ScaledMatrix(Matrix):
    """fp8 e4m3 or int8 codes times a float scale per tensor, per channel (row), per group or per block."""

    def __init__(self, ckpt, entry: TensorEntry, scale: np.ndarray, layout: str, rows_per_expert: int,
                 block: tuple | None = None, group: int = 0):
        self.ckpt, self.entry, self.scale, self.layout = ckpt, entry, scale, layout
        self.n_rows, self.row_len, self.dtype = entry.n_rows, entry.row_len, entry.dtype
        self.per, self.block, self.group = rows_per_expert, block, group
        self.native = Q.Q8_0
        if layout in ("tensor", "channel"):
            self.scale = _per_row(scale, self.n_rows, rows_per_expert) if layout == "tensor" else scale.reshape(-1)

    def _codes(self, start, count) -> np.ndarray:
        raw = self.ckpt.read_raw(self.entry, start, count)
        return E4M3[raw] if self.entry.dtype == "F8_E4M3" else raw.astype(np.float32)

    def _scales(self, start, count) -> np.ndarray:
        if self.layout in ("tensor", "channel"):
            return self.scale[start:start + count, None]
        r = np.arange(start, start + count)
        if self.layout == "group":
            return np.repeat(self.scale[r], self.group, axis=1)
        bo, bi = self.block  # block: scale [experts, ceil(rows/bo), ceil(cols/bi)]
        s = self.scale[r // self.per, (r % self.per) // bo]
        return np.repeat(s, bi, axis=1)[:, :self.row_len]

    def rows(self, start, count):
        return self._codes(start, count) * self._scales(start, count)


class Nvfp4Matrix(Matrix):
    """Packed e2m1 codes, e4m3 scales per 16 values, and a float32 second-level scale per tensor (per expert)."""
    dtype = "NVFP4"

    def __init__(self, ckpt, codes: TensorEntry, scales: TensorEntry, scale2_rows: np.ndarray):
        self.ckpt, self.codes, self.scales, self.s2 = ckpt, codes, scales, scale2_rows
        self.n_rows, self.row_len = codes.n_rows, codes.row_len * 2
        self.native = Q.NVFP4 if self.row_len % NVFP4_BLOCK == 0 else Q.F32
        self.raw_type = Q.NVFP4 if self.row_len % NVFP4_BLOCK == 0 else None

    def _read(self, start, count):
        codes = self.ckpt.read_raw(self.codes, start, count)
        scales = self.ckpt.read_raw(self.scales, start, count)
        bad = ((scales & 0x7F) == 0x7F) | ((scales & 0x80) != 0) & (scales != 0x80)
        if bad.any():
            r, c = (int(i) for i in np.argwhere(bad)[0])
            what = "NaN" if (scales[r, c] & 0x7F) == 0x7F else f"negative ({float(E4M3[scales[r, c]])})"
            raise ModelLoadError(f"tensor {self.scales.name}: block scale at row {start + r}, block {c} is {what} "
                                 f"(byte 0x{int(scales[r, c]):02x}); {int(bad.sum())} such scale(s) in rows "
                                 f"{start}..{start + count - 1}. NVFP4 block scales are positive e4m3 values: the "
                                 "checkpoint is corrupt; no GGUF written")
        return codes, scales

    def rows(self, start, count):
        codes, scales = self._read(start, count)
        vals = np.empty((count, self.row_len), dtype=np.float32)
        vals[:, 0::2] = E2M1[codes & 0x0F]
        vals[:, 1::2] = E2M1[codes >> 4]
        vals = vals.reshape(count, -1, 16) * E4M3[scales & 0x7F][:, :, None]   # exact in float32
        return vals.reshape(count, self.row_len) * self.s2[start:start + count, None]

    def blocks(self, start, count):
        return nvfp4_repack(*self._read(start, count))

    def row_scale(self):
        return self.s2


class ConcatRows(Matrix):
    """Several matrices of one row length stacked: experts stored one tensor per expert (and per projection)."""

    def __init__(self, parts: list):
        self.parts = parts
        self.row_len = parts[0].row_len
        self.n_rows = sum(p.n_rows for p in parts)
        self.dtype = parts[0].dtype if len({p.dtype for p in parts}) == 1 else "mixed"
        natives = {p.native for p in parts}
        raws = {p.raw_type for p in parts}
        self.native = natives.pop() if len(natives) == 1 else None
        self.raw_type = raws.pop() if len(raws) == 1 else None
        self.starts = np.cumsum([0] + [p.n_rows for p in parts])

    def _gather(self, start, count, fn):
        out, end = [], start + count
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        for i in range(first, len(self.parts)):
            lo, hi = int(self.starts[i]), int(self.starts[i + 1])
            if lo >= end:
                break
            a, b = max(start, lo), min(end, hi)
            if b > a:
                out.append(fn(self.parts[i], a - lo, b - a))
        return out[0] if len(out) == 1 else np.concatenate(out, axis=0)

    def rows(self, start, count):
        return self._gather(start, count, lambda p, s, c: p.rows(s, c))

    def blocks(self, start, count):
        return self._gather(start, count, lambda p, s, c: p.blocks(s, c))

    def row_scale(self):
        scales = [p.row_scale() for p in self.parts]
        return None if any(s is None for s in scales) else np.concatenate(scales)


# ---------------------------------------------------------------------------------------------------------------
# Finding a weight's codes and scales in a checkpoint
# ---------------------------------------------------------------------------------------------------------------

def _companion(base: str, suffix: str) -> list[str]:
    """Candidate names of the tensor `suffix` belonging to weight `base`: "X.weight" -> "X.<suffix>"; a fused
    expert parameter "...experts.gate_up_proj" -> "..._<suffix>" (ModelOpt) or, without the "weight_", the
    transformers spelling ("gate_up_proj_scale_inv")."""
    if base.endswith(".weight"):
        return [base[:-len("weight")] + suffix]
    names = [f"{base}_{suffix}"]
    if suffix.startswith("weight_"):
        names.append(f"{base}_{suffix[len('weight_'):]}")
    return names


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class WeightFinder:
    """Opens weights by their HF name under a scheme (None: unquantized) and records every tensor it reads."""

    def __init__(self, ckpt: Checkpoint, scheme: QuantScheme | None):
        self.ckpt, self.scheme = ckpt, scheme
        self.used: set[str] = set()

    def _find(self, names: list[str]) -> TensorEntry | None:
        for n in names:
            if n in self.ckpt:
                self.used.add(n)
                return self.ckpt.entries[n]
        return None

    def codes_name(self, base: str) -> str:
        s = self.scheme
        if s is None or s.codes == "weight":
            return base
        return _companion(base, s.codes)[0]

    def exists(self, base: str) -> bool:
        return base in self.ckpt or self.codes_name(base) in self.ckpt

    def open(self, base: str, shape: tuple) -> tuple[Matrix | None, str | None]:
        """(matrix, None), or (None, why) for a missing / misshapen tensor (the resolver lists them all)."""
        entry = self._find([base, self.codes_name(base)])
        if entry is None:
            return None, None
        if entry.dtype in ("F32", "F16", "BF16") or self.scheme is None:
            if tuple(entry.shape) != tuple(shape):
                return None, f"{entry.name}: expected {list(shape)}, found {list(entry.shape)}"
            self.ckpt.check_dtype(entry)
            return PlainMatrix(self.ckpt, entry), None
        s = self.scheme
        want = {"fp8": ("F8_E4M3",), "int8": ("I8",), "nvfp4": ("U8", "I8")}[s.kind]
        if entry.dtype not in want:
            raise UnsupportedModelError(f"tensor {entry.name} is {entry.dtype}, but {s.describe()} stores "
                                        f"{s.kind} weights as {' or '.join(want)}")
        if s.kind == "nvfp4":
            return self._open_nvfp4(base, entry, shape)
        return self._open_scaled(base, entry, shape)

    def _scale_entry(self, base: str, entry: TensorEntry, suffix: str, what: str) -> TensorEntry:
        names = _companion(base, suffix)
        found = self._find(names)
        if found is None:
            raise UnsupportedModelError(f"tensor {entry.name} ({self.scheme.describe()}) has no {what} "
                                        f"(looked for {' / '.join(names)}): the checkpoint is incomplete or not in "
                                        "the format its config.json declares")
        return found

    def _read_scale(self, e: TensorEntry, positive: bool = False) -> np.ndarray:
        """A whole scale tensor as float32, refused if it holds NaN / Inf (or, with `positive`, a value <= 0:
        NVFP4's second-level scale, which compressed-tensors also stores inverted)."""
        if e.dtype == "F8_E4M3":
            values = E4M3[self.ckpt.read_raw(e, 0, e.n_rows)].reshape(e.shape)
        else:
            self.ckpt.check_dtype(e)
            values = self.ckpt.read_f32(e, 0, e.n_rows).reshape(e.shape)
        bad = ~np.isfinite(values) | ((values <= 0) if positive else False)
        if np.any(bad):
            i = tuple(int(v) for v in np.argwhere(bad)[0])
            kind = "non-finite or non-positive" if positive else "NaN/Inf"
            raise ModelLoadError(f"tensor {e.name} ({self.scheme.describe()} scale) holds {values[i]} at index "
                                 f"{list(i)} ({int(np.sum(bad))} {kind} value(s)): the checkpoint is corrupt; no GGUF "
                                 "written")
        return values

    def _bad_shape(self, e: TensorEntry, expected: list) -> UnsupportedModelError:
        return UnsupportedModelError(f"tensor {e.name} ({self.scheme.describe()} scale) has shape {list(e.shape)}; "
                                     "for its weight expected " + " or ".join(str(list(x)) for x in expected))

    def _open_scaled(self, base, entry, shape):
        s = self.scheme
        if tuple(entry.shape) != tuple(shape):
            return None, f"{entry.name}: expected {list(shape)}, found {list(entry.shape)}"
        lead, rows, cols = tuple(shape[:-2]), shape[-2], shape[-1]
        if s.zero_point:
            zp = self._find(_companion(base, s.zero_point))
            if zp is not None and np.any(self.ckpt.read_raw(zp, 0, zp.n_rows)):
                raise UnsupportedModelError(f"tensor {zp.name}: non-zero int8 zero points (asymmetric "
                                            f"{s.describe()}) are not supported")
        g_idx = _companion(base, "weight_g_idx")[0]
        if g_idx in self.ckpt:  # GPTQ activation order: columns permuted into groups, not read here
            raise UnsupportedModelError(f"tensor {g_idx}: activation-ordered groups ({s.describe()} with "
                                        "weight_g_idx) are not supported")
        se = self._scale_entry(base, entry, s.scale, "scale")
        scale = self._read_scale(se)
        n_lead = int(np.prod(lead)) if lead else 1
        per_tensor = [[], [1], [1, 1]] + ([list(lead) + [1] * k for k in (0, 1, 2)] if lead else [])
        if s.block is not None:
            bo, bi = s.block
            expected = [list(lead) + [_ceil_div(rows, bo), _ceil_div(cols, bi)]]
            if list(se.shape) in expected:
                return ScaledMatrix(self.ckpt, entry, scale.reshape(n_lead, *expected[0][-2:]), "block", rows,
                                    block=(bo, bi)), None
        if s.group:
            expected = [list(lead) + [rows, cols // s.group]]
            if cols % s.group == 0 and list(se.shape) in expected:
                return ScaledMatrix(self.ckpt, entry, scale.reshape(-1, cols // s.group), "group", rows,
                                    group=s.group), None
            raise self._bad_shape(se, expected)
        channel = [list(lead) + [rows, 1], list(lead) + [rows]]
        if list(se.shape) in channel:
            return ScaledMatrix(self.ckpt, entry, scale, "channel", rows), None
        if list(se.shape) in per_tensor:
            return ScaledMatrix(self.ckpt, entry, scale, "tensor", rows), None
        raise self._bad_shape(se, (expected if s.block is not None else []) + per_tensor + channel)

    def _open_nvfp4(self, base, entry, shape):
        s = self.scheme
        lead, rows, cols = tuple(shape[:-2]), shape[-2], shape[-1]
        if cols % 16 or tuple(entry.shape) != lead + (rows, cols // 2):
            return None, (f"{entry.name}: expected packed NVFP4 {list(lead + (rows, cols // 2))} for "
                          f"{list(shape)}, found {list(entry.shape)}")
        se = self._scale_entry(base, entry, s.scale, "block scale")
        if se.dtype not in ("F8_E4M3", "U8"):
            raise UnsupportedModelError(f"tensor {se.name} is {se.dtype}; {s.describe()} block scales are F8_E4M3")
        if tuple(se.shape) != lead + (rows, cols // 16):
            raise self._bad_shape(se, [list(lead + (rows, cols // 16))])
        s2e = self._scale_entry(base, entry, s.scale2, "second-level (per-tensor) scale")
        s2 = self._read_scale(s2e, positive=True)
        n_lead = int(np.prod(lead)) if lead else 1
        if s2.size not in (1, n_lead):
            raise self._bad_shape(s2e, [[], [1]] + ([list(lead)] if lead else []))
        s2 = s2.astype(np.float32).reshape(-1)
        if s.scale2_is_divisor:  # compressed-tensors' weight_global_scale is 1 / scale_2
            s2 = (np.float32(1) / s2).astype(np.float32)
        return Nvfp4Matrix(self.ckpt, entry, se, _per_row(s2, n_lead * rows, rows)), None

    def mark_ignored(self) -> list[str]:
        """Activation / KV-cache scales: read past (the engine keeps activations unquantized)."""
        names = [n for n in self.ckpt.names() if n not in self.used
                 and (n.rsplit(".", 1)[-1] in IGNORED_SUFFIXES or n.endswith(tuple("_" + s for s in IGNORED_SUFFIXES)))]
        self.used.update(names)
        return names
