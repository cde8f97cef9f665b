"""The compiled cffi module, and the one place where C status codes become Python exceptions."""
import logging

import numpy as np

from . import errors
from ._diffgemma_cffi import ffi, lib

_logger = logging.getLogger("diffgemma_cpp")

_LOG_LEVELS = {
    lib.DIFFGEMMA_LOG_DEBUG: logging.DEBUG,
    lib.DIFFGEMMA_LOG_INFO: logging.INFO,
    lib.DIFFGEMMA_LOG_WARN: logging.WARNING,
    lib.DIFFGEMMA_LOG_ERROR: logging.ERROR,
}


def last_error() -> str:
    return ffi.string(lib.diffgemma_last_error()).decode("utf-8", "replace")


def check(status: int) -> int:
    """Raise the exception that matches a C status code, with the C library's reason; return it if OK."""
    if status == lib.DIFFGEMMA_OK:
        return status
    name = ffi.string(lib.diffgemma_status_name(status)).decode()
    cls = errors.STATUS_EXCEPTIONS.get(name, errors.InternalError)
    exc = cls(last_error() or name)
    exc.status = status
    raise exc


@ffi.def_extern()
def _dg_py_log_callback(level, text, user_data):
    # Runs on whatever thread logs; never let an exception escape into C.
    try:
        _logger.log(_LOG_LEVELS.get(level, logging.INFO), "%s", ffi.string(text).decode("utf-8", "replace").rstrip("\n"))
    except Exception:  # pragma: no cover - logging must not break the caller
        pass


def route_logs_to_python() -> None:
    """Send the C library's and ggml's log lines to the `diffgemma_cpp` logger."""
    lib.diffgemma_log_set(lib._dg_py_log_callback, ffi.NULL)


def string(ptr) -> str:
    return ffi.string(ptr).decode("utf-8", "replace") if ptr != ffi.NULL else ""


def type_name(ggml_type: int):
    """ggml's name of a tensor type id ("q4_K"), or None for an unknown id."""
    return None if lib.diffgemma_type_name(ggml_type) == ffi.NULL else string(lib.diffgemma_type_name(ggml_type))


def type_row_size(ggml_type: int, n_per_row: int) -> int:
    return int(lib.diffgemma_type_row_size(ggml_type, n_per_row))


def quantize_rows(ggml_type: int, rows: np.ndarray) -> np.ndarray:
    """Quantize a 2-D float32 array row by row with ggml's own quantizer; returns the raw bytes (uint8)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.ndim != 2:
        raise errors.InvalidArgumentError(f"quantize_rows expects a 2-D array, got shape {rows.shape}")
    n_rows, n_per_row = rows.shape
    row_bytes = type_row_size(ggml_type, n_per_row)
    out = np.empty(max(row_bytes * n_rows, 1), dtype=np.uint8)
    written = ffi.new("size_t *")
    check(lib.diffgemma_quantize_rows(ggml_type, ffi.from_buffer("float[]", rows), ffi.from_buffer(out),
                                      n_rows, n_per_row, out.nbytes, written))
    return out[: written[0]]


route_logs_to_python()
