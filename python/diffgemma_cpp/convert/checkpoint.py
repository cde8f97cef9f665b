"""Lazy reader of (sharded) safetensors checkpoints: headers at open, tensor rows on demand.

Only the JSON headers are parsed up front. Tensor data is fetched with positioned reads (`os.pread`) of just the
rows asked for, straight into a numpy buffer, so memory use is bounded by the caller's chunk size whatever the
checkpoint size. (A memory map would also be lazy, but every page touched stays in the process's resident set
until the map is dropped, so a 50 GB conversion would look like 50 GB of RSS.) bf16 is widened to f32 with
integer shifts, so no torch is needed.
"""
from __future__ import annotations

import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, UnsupportedTypeError

# safetensors dtype -> (bytes per element, numpy dtype of the stored value). bf16 is read as raw uint16; the
# 8-bit dtypes are the stored codes of quantized checkpoints (fp8 e4m3 bytes, int8 values, packed fp4 pairs),
# which only quantized.py interprets.
_DTYPES = {
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, np.dtype("<u2")),
    "F8_E4M3": (1, np.dtype("u1")),
    "U8": (1, np.dtype("u1")),
    "I8": (1, np.dtype("i1")),
}
SUPPORTED_DTYPES = ("F32", "F16", "BF16")  # what read_f32 widens: the float dtypes
QUANTIZED_DTYPES = ("F8_E4M3", "U8", "I8")
# Element sizes of every safetensors dtype, so a header's shape can be checked against its byte range even for
# tensors the converter does not read (a bad entry anywhere means the file is damaged).
_ELEMENT_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2,
                  "U16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I8": 1, "U8": 1, "BOOL": 1}
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a checkpoint: where its bytes are and what they hold."""
    name: str
    dtype: str            # safetensors dtype string ("BF16", "F32", ...)
    shape: tuple          # PyTorch order, outermost first
    path: Path            # the shard file
    offset: int           # absolute byte offset of the first element in `path`
    nbytes: int

    @property
    def row_len(self) -> int:
        return self.shape[-1] if self.shape else 1

    @property
    def n_rows(self) -> int:
        return _count(self.shape[:-1])


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Widen bf16 stored as uint16 to float32 exactly (bf16 is the top half of an f32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs):
    """json object hook: a key twice (two tensors of one name) would silently keep only the last entry."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} appears twice")
        out[key] = value
    return out


def _read_header(path: Path) -> tuple[dict, int]:
    try:
        return _parse_header(path)
    except ModelFileError:
        raise
    except OSError as exc:  # unreadable (permissions, I/O error): name the file rather than leak an OSError
        raise ModelFileError(f"{path}: cannot read the safetensors file ({exc.strerror or exc})") from None


def _parse_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise ModelFileError(f"{path}: not a safetensors file or truncated (its first 8 bytes give a header "
                                 f"length of {n} bytes, the file holds {size} bytes)")
        try:
            header = json.loads(f.read(n), object_pairs_hook=_unique_keys)
        except (UnicodeDecodeError, json.JSONDecodeError, _DuplicateKey) as exc:
            raise ModelFileError(f"{path}: corrupt safetensors header ({exc})") from None
        except RecursionError:  # "[[[[..." a few thousand deep: json's recursive parser gives up
            raise ModelFileError(f"{path}: corrupt safetensors header (nested too deeply)") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n


_INDEX = "model.safetensors.index.json"


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_entry(path: Path, name: str, info) -> tuple:
    """(dtype, shape, begin, end) of one header entry, every field checked before any arithmetic uses it."""
    def bad(why: str) -> ModelFileError:
        return ModelFileError(f"{path}: corrupt safetensors header entry for tensor {name!r}: {why}")

    if not isinstance(info, dict):
        raise bad(f"expected an object, found {type(info).__name__}")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str):
        raise bad(f"dtype {dtype!r} is not a string")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)):
        raise bad(f"data_offsets {offsets!r} is not a pair of integers")
    begin, end = offsets
    if begin < 0 or end < begin:
        raise bad(f"data_offsets [{begin}, {end}] is not a valid byte range")
    return dtype, tuple(shape), begin, end


def _read_index(index: Path) -> dict:
    """The weight_map of a sharded checkpoint's index: tensor name -> shard file name (a plain file name in the
    same folder; a path could point the converter at any file on the machine)."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{index}: unreadable safetensors index ({exc})") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFileError(f"{index}: weight_map is not a non-empty object")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or not shard or shard != Path(shard).name or shard in (".", ".."):
            raise ModelFileError(f"{index}: tensor {name!r} maps to {shard!r}, not a shard file name in this folder")
    return weight_map


class Checkpoint:
    """All tensors of a HF checkpoint directory (`model.safetensors`, or shards listed by an index)."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.entries: dict[str, TensorEntry] = {}
        self._fds: dict[Path, int] = {}
        self._fd_lock = threading.Lock()
        self.weight_map: dict | None = None
        for shard in self._shard_files():
            self._add_shard(shard)
        if self.weight_map is not None:
            self.check_index(self.weight_map)
        if not self.entries:
            raise ModelFileError(f"{self.directory}: the safetensors files hold no tensors")

    def _shard_files(self) -> list[Path]:
        index = self.directory / _INDEX
        if index.is_file():
            weight_map = _read_index(index)
            self.weight_map = weight_map
            by_shard: dict[str, list] = {}
            for name, shard in weight_map.items():
                by_shard.setdefault(shard, []).append(name)
            missing = [f for f in sorted(by_shard) if not (self.directory / f).is_file()]
            if missing:
                detail = "; ".join(f"{f} (should hold {len(by_shard[f])} tensor(s): {', '.join(by_shard[f][:5])}"
                                   + (" ..." if len(by_shard[f]) > 5 else "") + ")" for f in missing)
                raise ModelFileError(f"{index} lists {len(missing)} shard(s) that are not in the directory "
                                     f"(incomplete download?): {detail}")
            return [self.directory / f for f in sorted(by_shard)]
        single = self.directory / "model.safetensors"
        if single.is_file():
            return [single]
        found = sorted(self.directory.glob("*.safetensors"))
        if not found:
            raise ModelFileError(f"{self.directory}: no model.safetensors, no model.safetensors.index.json and no "
                                 "*.safetensors file")
        return found

    def _add_shard(self, path: Path) -> None:
        header, data_start = _read_header(path)
        size = path.stat().st_size
        spans = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype, shape, begin, end = _parse_entry(path, name, info)
            if data_start + end > size:
                raise ModelFileError(f"{path}: tensor {name!r} has data_offsets [{begin}, {end}] but the file holds "
                                     f"only {size - data_start} data bytes (truncated download?)")
            elem = _ELEMENT_BYTES.get(dtype)
            if elem is not None and _count(shape) * elem != end - begin:
                raise ModelFileError(f"{path}: tensor {name!r} is {dtype} {list(shape)} ({_count(shape) * elem} "
                                     f"bytes) but its data_offsets [{begin}, {end}] span {end - begin} bytes")
            if name in self.entries:
                raise ModelFileError(f"tensor {name!r} appears in both {self.entries[name].path.name} and {path.name}")
            self.entries[name] = TensorEntry(name, dtype, shape, path, data_start + begin, end - begin)
            spans.append((begin, end, name))
        # Two tensors sharing bytes would silently alias each other's data: a damaged or hand-edited header.
        spans.sort()
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise ModelFileError(f"{path}: tensors {n0!r} (bytes [{b0}, {e0}]) and {n1!r} (bytes [{b1}, {e1}]) "
                                     "overlap: corrupt safetensors header")

    def check_index(self, weight_map: dict) -> None:
        """Every tensor the index names must be in the shard it names (else the index and shards disagree)."""
        wrong = []
        for name, shard in weight_map.items():
            entry = self.entries.get(name)
            if entry is None or entry.path.name != shard:
                where = f"found in {entry.path.name}" if entry is not None else "in no shard"
                wrong.append(f"{name} (index says {shard}, {where})")
        if wrong:
            raise ModelFileError(f"{self.directory / _INDEX}: {len(wrong)} tensor(s) are not where the index says: "
                                 + "; ".join(wrong[:10]) + (" ..." if len(wrong) > 10 else ""))

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def _fd(self, path: Path) -> int:
        with self._fd_lock:  # writer threads read concurrently: open each shard once, leak none
            fd = self._fds.get(path)
            if fd is None:
                fd = self._fds[path] = os.open(path, os.O_RDONLY)
            return fd

    def check_dtype(self, entry: TensorEntry) -> None:
        """Refuse a tensor the converter cannot read. (Its shape was checked against its byte range at open.)"""
        if entry.dtype in QUANTIZED_DTYPES:
            raise UnsupportedTypeError(f"tensor {entry.name} has dtype {entry.dtype} but config.json declares no "
                                       "quantization_config (and there is no hf_quant_config.json) that says how "
                                       "to read it")
        if entry.dtype not in SUPPORTED_DTYPES:
            raise UnsupportedTypeError(f"tensor {entry.name} has dtype {entry.dtype}; the converter reads "
                                       f"{', '.join(SUPPORTED_DTYPES)} and the quantized formats of "
                                       "QUANTIZED_FORMATS.md (dequantize the checkpoint first)")

    def read_raw(self, entry: TensorEntry, row_start: int, n_rows: int) -> np.ndarray:
        """Rows [row_start, row_start+n_rows) of the tensor viewed as 2-D, in the stored dtype (bf16 as uint16)."""
        elem, dtype = _DTYPES[entry.dtype]
        row_bytes = entry.row_len * elem
        want = n_rows * row_bytes
        buf = np.empty(n_rows * entry.row_len, dtype=dtype)
        view = memoryview(buf).cast("B")
        pos, done = entry.offset + row_start * row_bytes, 0
        try:
            fd = self._fd(entry.path)
            while done < want:
                got = os.preadv(fd, [view[done:]], pos + done)
                if got <= 0:
                    raise ModelFileError(f"{entry.path}: unexpected end of file while reading {entry.name} (the "
                                         "file shrank during the conversion?)")
                done += got
        except ModelFileError:
            raise
        except OSError as exc:
            raise ModelFileError(f"{entry.path}: read error in tensor {entry.name} at byte {pos + done} "
                                 f"({exc.strerror or exc})") from None
        return buf.reshape(n_rows, entry.row_len)

    def read_f32(self, entry: TensorEntry, row_start: int, n_rows: int) -> np.ndarray:
        raw = self.read_raw(entry, row_start, n_rows)
        if entry.dtype == "BF16":
            return bf16_to_f32(raw)
        return raw.astype(np.float32, copy=False)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
