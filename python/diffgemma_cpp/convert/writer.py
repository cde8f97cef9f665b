"""Streaming GGUF writer: header, metadata and tensor infos first, then each tensor's data in bounded chunks.

Memory stays bounded whatever the model size: a tensor is read, encoded and written a few MB at a time, with
at most `threads + 1` chunks in flight. Each chunk is checked for NaN/Inf before it is copied or encoded
(finite.py). Output goes to a hidden temporary folder next to the destination and
is renamed into place only when every byte is written, so a failure or an interruption never leaves a partial
GGUF under the requested name. Serialisation of keys and tensor infos is gguf-py's (`GGUFWriter`), including
its `-0000k-of-0000n` shard naming for `--split-max-size`.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFWriter

from .. import names
from ..errors import ModelFileError
from .encode import encode_rows, row_bytes
from .finite import NonFiniteChunk, check_chunk, check_f16_range, non_finite_error

logger = logging.getLogger("diffgemma_cpp.convert")

CHUNK_ELEMENTS = 4 * 1024 * 1024  # f32 elements per encoding job (16 MB), bounds memory per thread


def tensor_nbytes(t) -> int:
    return row_bytes(t.qtype, t.ne[0]) * t.source.n_rows


def _padding(n: int, align: int) -> int:
    return (align - n % align) % align


def _chunks(t):
    rows_per_chunk = max(1, CHUNK_ELEMENTS // max(1, t.ne[0]))
    for start in range(0, t.source.n_rows, rows_per_chunk):
        yield start, min(rows_per_chunk, t.source.n_rows - start)


def _encode_chunk(t, start: int, count: int) -> np.ndarray:
    """The bytes of rows [start, start+count) of `t`. Every chunk, copied or encoded, is checked for NaN/Inf
    first: this is the one place every weight of every output type passes through."""
    data, raw_type = check_chunk(t, start, count)
    if raw_type is not None:  # same type: copy the stored bytes
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    encoded = encode_rows(t.qtype, data)
    if t.qtype == Q.F16:
        check_f16_range(t, start, data, encoded)
    return encoded


def _disk_full(path: Path, need: int) -> ModelFileError:
    free = shutil.disk_usage(path).free
    return ModelFileError(f"disk full while writing {path}: the output needs {need / 1e9:.2f} GB, "
                          f"{free / 1e9:.2f} GB free; free some space or choose another --outfile")


class Staging:
    """Several outputs published together: each write_gguf given this staging leaves its finished file(s) in its
    hidden temporary folder; `publish` then renames them all into place (after every one was written), and
    `discard` removes whatever is left, so a failure in any output leaves none of them under its name."""

    def __init__(self):
        self.moves: list[tuple[Path, Path]] = []
        self.tmpdirs: list[Path] = []

    def publish(self) -> list:
        final = []
        for src, dest in self.moves:
            os.replace(src, dest)
            final.append(dest)
        self.moves.clear()
        return final

    def discard(self) -> None:
        self.moves.clear()
        for d in self.tmpdirs:
            shutil.rmtree(d, ignore_errors=True)
        self.tmpdirs.clear()


def write_gguf(outfile, kv, tensors, *, split_max_size: int = 0, threads: int | None = None,
               progress: bool = True, arch: str = names.ARCH, staging: Staging | None = None) -> list:
    """Write `kv` ((key, value, type, sub_type) in order) and `tensors` (OutTensor with qtype set) to `outfile`
    with general.architecture `arch`. Returns the paths written (several with split_max_size). With `staging`, the
    finished file(s) wait in their temporary folder for `staging.publish()` (the returned paths are where they
    will be) and the caller must end with `staging.discard()`."""
    own = staging is None
    staging = Staging() if own else staging
    try:
        final = _write_staged(outfile, kv, tensors, split_max_size, threads, progress, arch, staging)
        return staging.publish() if own else final
    finally:
        if own:
            staging.discard()


def _write_staged(outfile, kv, tensors, split_max_size, threads, progress, arch, staging: Staging) -> list:
    outfile = Path(outfile)
    outdir = outfile.parent if str(outfile.parent) else Path(".")
    if not outdir.is_dir():
        raise ModelFileError(f"output folder {outdir} does not exist")
    total = sum(tensor_nbytes(t) for t in tensors)
    free = shutil.disk_usage(outdir).free
    if total > free:
        raise ModelFileError(f"not enough disk space for {outfile}: the tensors alone need {total / 1e9:.2f} GB, "
                             f"{free / 1e9:.2f} GB free")

    tmpdir = outdir / f".{outfile.name}.partial-{os.getpid()}"
    shutil.rmtree(tmpdir, ignore_errors=True)
    tmpdir.mkdir()
    staging.tmpdirs.append(tmpdir)
    writer = GGUFWriter(tmpdir / outfile.name, arch=arch, split_max_size=split_max_size)
    try:
        for key, value, vtype, sub_type in kv:
            writer.add_key_value(key, value, vtype, sub_type=sub_type)
        shard_of = []
        for t in tensors:
            writer.add_tensor_info(t.name, tuple(reversed(t.ne)), np.dtype(np.float32), tensor_nbytes(t),
                                   raw_dtype=t.qtype)
            shard_of.append(len(writer.tensors) - 1)
        shard_paths = writer.format_shard_names(tmpdir / outfile.name)
        if len(shard_paths) > 1:
            logger.info("writing %d shards", len(shard_paths))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        align = writer.data_alignment
        for fout in writer.fout:
            fout.write(b"\0" * _padding(fout.tell(), align))
        _write_data(writer.fout, tensors, shard_of, total, threads, progress, align)
        for fout in writer.fout:
            fout.flush()
            os.fsync(fout.fileno())
        writer.close()
        final = []
        for p in shard_paths:
            dest = outdir / p.name
            staging.moves.append((p, dest))
            final.append(dest)
        return final
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _disk_full(outdir, total) from None
        raise
    finally:
        writer.close()


class _StopRequest:
    """A stop signal that arrives while the encoder threads run is only noted here; the main thread raises
    KeyboardInterrupt at the next chunk boundary. Raised from the signal handler itself it could land anywhere
    in concurrent.futures' lock handling (Python runs handlers between bytecodes) and leave a lock held that
    the executor's shutdown then waits on forever: a Ctrl-C that hangs instead of stopping."""
    threaded = False   # _write_data's pool is running
    requested = False


_STOP = _StopRequest()


def interrupt_now_or_soon() -> None:
    """For signal handlers (convert/cli.py): KeyboardInterrupt now, or at the writer's next safe point while its
    threads run."""
    if _STOP.threaded:
        _STOP.requested = True
    else:
        raise KeyboardInterrupt


def _check_stop(pending: deque) -> None:
    if _STOP.requested:
        for fut in pending:
            fut.cancel()
        raise KeyboardInterrupt


def _write_data(fouts, tensors, shard_of, total, threads, progress, align):
    from tqdm import tqdm

    threads = max(1, threads or min(32, os.cpu_count() or 1))
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="writing", disable=not progress,
               dynamic_ncols=True)
    _STOP.requested = False
    _STOP.threaded = True
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for t, shard in zip(tensors, shard_of):
                fout = fouts[shard]
                bar.set_postfix_str(t.name, refresh=False)
                written = 0
                pending: deque = deque()
                try:
                    for start, count in _chunks(t):
                        _check_stop(pending)
                        pending.append(pool.submit(_encode_chunk, t, start, count))
                        if len(pending) > threads:
                            written += _drain_one(pending, fout, bar)
                    while pending:
                        _check_stop(pending)
                        written += _drain_one(pending, fout, bar)
                except NonFiniteChunk as bad:
                    # Chunks drain in file order, so this is the tensor's first bad chunk. Stop the others, then
                    # count the rest of the tensor (one chunk at a time) for the report.
                    for fut in pending:
                        fut.cancel()
                    raise non_finite_error(t, bad, _chunks(t)) from None
                expected = tensor_nbytes(t)
                if written != expected:  # a bug, not a user error: never write a GGUF with a wrong size
                    raise RuntimeError(f"{t.name}: encoded {written} bytes, expected {expected}")
                fout.write(b"\0" * _padding(written, align))
    finally:
        _STOP.threaded = False
        bar.close()
    if _STOP.requested:  # arrived after the last chunk: still an interrupt, before the file is published
        raise KeyboardInterrupt


def _drain_one(pending: deque, fout, bar) -> int:
    data = pending.popleft().result()
    fout.write(memoryview(data))
    bar.update(data.nbytes)
    return data.nbytes
