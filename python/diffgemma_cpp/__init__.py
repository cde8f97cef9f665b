"""diffgemma_cpp: run Google's DiffusionGemma locally, on a C library built on ggml.

    import diffgemma_cpp
    print(diffgemma_cpp.system_info())
"""
from importlib.metadata import PackageNotFoundError, version as _dist_version
from pathlib import Path

from . import errors
from ._native import ffi as _ffi, lib as _lib
from .errors import DiffGemmaError

try:
    __version__ = _dist_version("diffgemma-cpp")
except PackageNotFoundError:  # pragma: no cover - only when imported from an unusual layout
    __version__ = _ffi.string(_lib.diffgemma_version()).decode()

API_VERSION = _lib.DIFFGEMMA_API_VERSION


def system_info() -> str:
    """One line: library and ggml versions, backends compiled in, what ggml's CPU backend was compiled for, which
    of our CPU kernels run here, the CPUs we may use and the default thread count."""
    return _ffi.string(_lib.diffgemma_system_info()).decode()


def gpus() -> list:
    """The devices this build can offload to (main_gpu indexes this list): its GPUs, then the devices of the RPC
    servers registered so far (Model(rpc_servers=...)), described with their free memory; empty on a CPU-only
    build or machine."""
    return [_ffi.string(_lib.diffgemma_gpu_description(i)).decode() for i in range(_lib.diffgemma_gpu_count())]


def rpc_available() -> bool:
    """True when the installed ggml has the RPC backend (Model(rpc_servers=...), `diffgemma-cpp rpc-server`)."""
    return bool(_lib.diffgemma_rpc_available())


def library_version() -> str:
    """Version of the loaded C library (equals __version__ unless the install is broken)."""
    return _ffi.string(_lib.diffgemma_version()).decode()


def get_include() -> str:
    """Directory holding diffgemma.h, for C/C++ programs that embed the library."""
    return str(Path(__file__).parent / "include")


def get_library_dir() -> str:
    """Directory holding libdiffgemma.so (link with -L<dir> -ldiffgemma -Wl,-rpath,<dir>)."""
    return str(Path(__file__).parent)


__all__ = ["__version__", "API_VERSION", "system_info", "gpus", "rpc_available", "library_version", "get_include", "get_library_dir",
           "errors", "DiffGemmaError"]

from .model import Block, Model  # noqa: E402  (after the bindings are loaded)

__all__ += ["Model", "Block"]
