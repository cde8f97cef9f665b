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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFileError, UnsupportedTypeError

# safetensors dtype -> (bytes per element, numpy dtype of the stored value). bf16 is read as raw uint16.
_DTYPES = {
    "F32": (4, np.dtype("<f4")),
    "F16": (2, np.dtype("<f2")),
    "BF16": (2, np.dtype("<u2")),
}
SUPPORTED_DTYPES = tuple(_DTYPES)
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
        n = 1
        for d in self.shape[:-1]:
            n *= d
        return n


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    """Widen bf16 stored as uint16 to float32 exactly (bf16 is the top half of an f32)."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path}: not a safetensors file (only {size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > _MAX_HEADER or 8 + n > size:
            raise ModelFileError(f"{path}: not a safetensors file or truncated (header length {n}, file {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{path}: corrupt safetensors header (not a JSON object)")
    return header, 8 + n


class Checkpoint:
    """All tensors of a HF checkpoint directory (`model.safetensors`, or shards listed by an index)."""

    def __init__(self, directory):
        self.directory = Path(directory)
        self.entries: dict[str, TensorEntry] = {}
        self._fds: dict[Path, int] = {}
        for shard in self._shard_files():
            self._add_shard(shard)
        if not self.entries:
            raise ModelFileError(f"{self.directory}: the safetensors files hold no tensors")

    def _shard_files(self) -> list[Path]:
        index = self.directory / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ModelFileError(f"{index}: unreadable safetensors index ({exc})") from None
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (self.directory / f).is_file()]
            if missing:
                raise ModelFileError(f"{index} lists shard(s) that are not in the directory: {', '.join(missing)}")
            return [self.directory / f for f in files]
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
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (begin, end) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ModelFileError(f"{path}: corrupt header entry for tensor {name!r}") from None
            if data_start + end > size or begin > end:
                raise ModelFileError(f"{path}: tensor {name!r} lies past the end of the file (truncated download?)")
            if name in self.entries:
                raise ModelFileError(f"tensor {name!r} appears in both {self.entries[name].path.name} and {path.name}")
            self.entries[name] = TensorEntry(name, dtype, shape, path, data_start + begin, end - begin)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def names(self) -> list[str]:
        return list(self.entries)

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def check_dtype(self, entry: TensorEntry) -> None:
        if entry.dtype not in _DTYPES:
            raise UnsupportedTypeError(f"tensor {entry.name} has dtype {entry.dtype}; the converter reads "
                                       f"{', '.join(SUPPORTED_DTYPES)} (dequantize the checkpoint first)")
        elem = _DTYPES[entry.dtype][0]
        count = 1
        for d in entry.shape:
            count *= d
        if count * elem != entry.nbytes:
            raise ModelFileError(f"tensor {entry.name}: header says shape {list(entry.shape)} {entry.dtype} "
                                 f"({count * elem} bytes) but its data range holds {entry.nbytes} bytes")

    def read_raw(self, entry: TensorEntry, row_start: int, n_rows: int) -> np.ndarray:
        """Rows [row_start, row_start+n_rows) of the tensor viewed as 2-D, in the stored dtype (bf16 as uint16)."""
        elem, dtype = _DTYPES[entry.dtype]
        row_bytes = entry.row_len * elem
        want = n_rows * row_bytes
        buf = np.empty(n_rows * entry.row_len, dtype=dtype)
        view = memoryview(buf).cast("B")
        fd, pos, done = self._fd(entry.path), entry.offset + row_start * row_bytes, 0
        while done < want:
            got = os.preadv(fd, [view[done:]], pos + done)
            if got <= 0:
                raise ModelFileError(f"{entry.path}: unexpected end of file while reading {entry.name}")
            done += got
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
