"""Byte-level GGUF surgery for the hostile-file tests: parse a valid GGUF into its sections (remembering
where each begins and ends), change one thing, and write it back, deliberately without repairing what the
change breaks.

    g = Gguf.parse(path)
    g.boundaries()                      # [("header", 24), ("kv 0 'general.architecture'", 64), ...]
    g.set_kv("diffusion-gemma.block_count", VT.STRING, "four").to_bytes()
    g.to_bytes(n_tensors=2**62)         # a header that lies about its counts

Only what the tests need is here: GGUF v3, little endian. Nothing is validated on purpose.
"""
from __future__ import annotations

import copy
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32


class VT(IntEnum):
    """GGUF metadata value types (gguf.h's enum gguf_type)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR_FORMATS = {VT.UINT8: "<B", VT.INT8: "<b", VT.UINT16: "<H", VT.INT16: "<h", VT.UINT32: "<I", VT.INT32: "<i",
                   VT.FLOAT32: "<f", VT.BOOL: "<?", VT.UINT64: "<Q", VT.INT64: "<q", VT.FLOAT64: "<d"}


def gguf_string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def encode_value(vtype: VT, value, elem_type: VT | None = None) -> bytes:
    """The bytes after a KV's type field: a scalar, a string, or (elem type, count, elements)."""
    if vtype == VT.STRING:
        return gguf_string(value)
    if vtype == VT.ARRAY:
        assert elem_type is not None
        body = b"".join(encode_value(elem_type, v) for v in value)
        return struct.pack("<IQ", elem_type, len(value)) + body
    return struct.pack(_SCALAR_FORMATS[vtype], value)


def tensor_nbytes(dims, ggml_type: int) -> int:
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    n = 1
    for d in dims:
        n *= d
    return n // block * size


def pad_to(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


@dataclass
class KV:
    key: str
    vtype: int
    value: bytes        # encoded value (see encode_value), kept raw so wrong types round-trip
    start: int = -1     # byte range of the whole entry in the parsed file
    end: int = -1

    def to_bytes(self) -> bytes:
        return gguf_string(self.key) + struct.pack("<I", self.vtype) + self.value


@dataclass
class TensorInfo:
    name: str
    dims: list
    ggml_type: int
    offset: int         # relative to the data section
    start: int = -1
    end: int = -1

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dims, self.ggml_type)

    def to_bytes(self) -> bytes:
        return (gguf_string(self.name) + struct.pack("<I", len(self.dims)) +
                b"".join(struct.pack("<q", d) for d in self.dims) + struct.pack("<IQ", self.ggml_type, self.offset))


@dataclass
class Gguf:
    version: int
    kvs: list
    tensors: list
    data: bytearray                    # the data section (from its aligned start to the end of the file)
    alignment: int = DEFAULT_ALIGNMENT
    header_end: int = 24
    infos_end: int = -1
    data_start: int = -1
    raw: bytes = field(default=b"", repr=False)

    # ---- reading -------------------------------------------------------------------------------------
    @classmethod
    def parse(cls, path_or_bytes) -> "Gguf":
        raw = Path(path_or_bytes).read_bytes() if not isinstance(path_or_bytes, (bytes, bytearray)) else bytes(path_or_bytes)
        if raw[:4] != MAGIC:
            raise ValueError("not a GGUF")
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", raw, 4)
        pos = 24

        def read_str(p):
            (n,) = struct.unpack_from("<Q", raw, p)
            return raw[p + 8:p + 8 + n].decode(), p + 8 + n

        def skip_value(vtype, p):
            if vtype == VT.STRING:
                (n,) = struct.unpack_from("<Q", raw, p)
                return p + 8 + n
            if vtype == VT.ARRAY:
                et, n = struct.unpack_from("<IQ", raw, p)
                p += 12
                for _ in range(n):
                    p = skip_value(et, p)
                return p
            return p + struct.calcsize(_SCALAR_FORMATS[VT(vtype)])

        kvs = []
        for _ in range(n_kv):
            start = pos
            key, pos = read_str(pos)
            (vtype,) = struct.unpack_from("<I", raw, pos)
            vstart = pos + 4
            pos = skip_value(vtype, vstart)
            kvs.append(KV(key, vtype, raw[vstart:pos], start, pos))
        alignment = DEFAULT_ALIGNMENT
        for kv in kvs:
            if kv.key == "general.alignment":
                (alignment,) = struct.unpack("<I", kv.value)
        tensors = []
        for _ in range(n_tensors):
            start = pos
            name, pos = read_str(pos)
            (nd,) = struct.unpack_from("<I", raw, pos)
            dims = list(struct.unpack_from(f"<{nd}q", raw, pos + 4))
            pos += 4 + 8 * nd
            gtype, offset = struct.unpack_from("<IQ", raw, pos)
            pos += 12
            tensors.append(TensorInfo(name, dims, gtype, offset, start, pos))
        data_start = pad_to(pos, alignment)
        return cls(version, kvs, tensors, bytearray(raw[data_start:]), alignment, 24, pos, data_start, raw)

    def boundaries(self) -> list:
        """(label, byte offset) of every section boundary of the parsed file, in file order."""
        out = [("magic", 4), ("version", 8), ("n_tensors", 16), ("header", self.header_end)]
        for i, kv in enumerate(self.kvs):
            out.append((f"kv {i} '{kv.key}' key", kv.start + 8 + len(kv.key.encode())))
            out.append((f"kv {i} '{kv.key}'", kv.end))
        for i, t in enumerate(self.tensors):
            out.append((f"tensor info {i} '{t.name}' name", t.start + 8 + len(t.name.encode())))
            out.append((f"tensor info {i} '{t.name}'", t.end))
        if self.data_start > self.infos_end:
            out.append(("alignment padding", self.data_start))
        for t in self.tensors:
            out.append((f"data of '{t.name}'", self.data_start + t.offset + t.nbytes))
        return out

    def kv(self, key: str) -> KV:
        return next(kv for kv in self.kvs if kv.key == key)

    def tensor(self, name: str) -> TensorInfo:
        return next(t for t in self.tensors if t.name == name)

    def copy(self) -> "Gguf":
        return copy.deepcopy(self)

    # ---- changing (each returns self, so calls chain on a copy) -----------------------------------------
    def set_kv(self, key: str, vtype: VT, value, elem_type: VT | None = None) -> "Gguf":
        g = self.copy()
        g.kv(key).vtype = int(vtype)
        g.kv(key).value = encode_value(vtype, value, elem_type)
        return g

    def set_kv_raw(self, key: str, vtype: int, value_bytes: bytes) -> "Gguf":
        g = self.copy()
        g.kv(key).vtype = vtype
        g.kv(key).value = value_bytes
        return g

    def drop_kv(self, key: str) -> "Gguf":
        g = self.copy()
        g.kvs = [kv for kv in g.kvs if kv.key != key]
        return g

    def add_kv(self, key: str, vtype: VT, value, elem_type: VT | None = None) -> "Gguf":
        g = self.copy()
        g.kvs.append(KV(key, int(vtype), encode_value(vtype, value, elem_type)))
        return g

    def tensor_data(self, name: str) -> memoryview:
        t = self.tensor(name)
        return memoryview(self.data)[t.offset:t.offset + t.nbytes]

    def with_tensor_bytes(self, name: str, at: int, payload: bytes) -> "Gguf":
        g = self.copy()
        t = g.tensor(name)
        g.data[t.offset + at:t.offset + at + len(payload)] = payload
        return g

    def relayout(self, changed: dict | None = None, drop: set | None = None) -> "Gguf":
        """A consistent file again after tensors changed shape/type or were dropped: offsets recomputed,
        data of resized tensors zero-filled (or cut), dropped tensors removed. changed: name -> (dims, type)."""
        g = self.copy()
        changed, drop = changed or {}, drop or set()
        old = {t.name: bytes(self.tensor_data(t.name)) for t in self.tensors}
        data = bytearray()
        kept = []
        for t in g.tensors:
            if t.name in drop:
                continue
            if t.name in changed:
                t.dims, t.ggml_type = list(changed[t.name][0]), changed[t.name][1]
            blob = old[t.name][:t.nbytes].ljust(t.nbytes, b"\0")
            t.offset = len(data)
            data += blob + b"\0" * (pad_to(len(blob), g.alignment) - len(blob))
            kept.append(t)
        g.tensors, g.data = kept, data
        return g

    # ---- writing ----------------------------------------------------------------------------------
    def to_bytes(self, *, magic: bytes = MAGIC, version: int | None = None, n_tensors: int | None = None,
                 n_kv: int | None = None, pad: bool = True) -> bytes:
        head = bytearray(magic)
        head += struct.pack("<IQQ", self.version if version is None else version,
                            len(self.tensors) if n_tensors is None else n_tensors & (2**64 - 1),
                            len(self.kvs) if n_kv is None else n_kv & (2**64 - 1))
        for kv in self.kvs:
            head += kv.to_bytes()
        for t in self.tensors:
            head += t.to_bytes()
        if pad:
            head += b"\0" * (pad_to(len(head), self.alignment) - len(head))
        return bytes(head) + bytes(self.data)
