"""Builds the C++ drivers of tests/c/. They call dg:: internals, which libdiffgemma does not export, so each is
compiled from the library's sources with the flags CMakeLists.txt gives those sources (Release is -O3)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
# CMakeLists.txt's flags for sampler_math.cpp: the summation order is the arithmetic's contract.
SAMPLER_FLAGS = ("-O3", "-ffp-contract=off", "-fno-trapping-math")


class Unavailable(Exception):
    """No C++ compiler, or a libggml-python without headers: the caller skips (tests) or exits (benches)."""


def ggml_dirs() -> tuple[Path, Path]:
    """(include, lib) of the installed libggml-python."""
    try:
        import libggml
    except ImportError:
        raise Unavailable("libggml-python is not installed") from None
    root = Path(libggml.__file__).resolve().parent
    lib = next((d for d in (root / "lib64", root / "lib") if (d / "libggml-base.so").exists()), None)
    if lib is None or not (root / "include" / "ggml.h").exists():
        raise Unavailable("libggml-python has no headers or libggml-base.so")
    return root / "include", lib


def build(exe: Path, driver: str, sources, flags=("-O3",), ggml_libs=()) -> Path:
    """Compiles tests/c/DRIVER with csrc/SOURCES (paths from csrc/, e.g. "core/errors.cpp") into EXE; ggml_libs (e.g. "ggml-base") links the installed ggml."""
    cxx = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if cxx is None:
        raise Unavailable("no C++ compiler on PATH")
    link = []
    if ggml_libs:
        include, lib = ggml_dirs()
        link = ["-I", str(include), "-L", str(lib), *(f"-l{name}" for name in ggml_libs), f"-Wl,-rpath,{lib}"]
    subprocess.run([cxx, "-std=gnu++17", *flags, "-Wall", "-Wextra", "-I", str(CSRC), "-I", str(CSRC / "include"),
                    str(REPO / "tests" / "c" / driver), *(str(CSRC / s) for s in sources), *link, "-pthread",
                    "-o", str(exe)], check=True)
    return exe


def build_sampler_driver(out_dir: Path) -> Path:
    """tests/c/test_sampler_math.cpp over csrc/kernels/sampler_math.cpp (tests, the emulated GPU checks, the bench)."""
    return build(out_dir / "test_sampler_math", "test_sampler_math.cpp", ["kernels/sampler_math.cpp"],
                 (*SAMPLER_FLAGS, "-Werror"))


def build_or_skip(*args, **kwargs) -> Path:
    """build() for a pytest fixture: a missing compiler or ggml is a skip with the reason."""
    import pytest

    try:
        return build(*args, **kwargs)
    except Unavailable as exc:
        pytest.skip(str(exc))
