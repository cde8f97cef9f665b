"""The package skeleton: versions, system info, errors crossing from C to Python, the C header as C99,
the CLI, and the CUDA sources compiling with nvcc."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import diffgemma_cpp
from diffgemma_cpp import _native, errors

REPO = Path(__file__).resolve().parents[1]


def test_versions_agree():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", diffgemma_cpp.__version__)
    assert diffgemma_cpp.library_version() == diffgemma_cpp.__version__
    assert diffgemma_cpp.API_VERSION == _native.lib.diffgemma_api_version() >= 1


def test_system_info_names_pinned_ggml_and_cpu():
    info = diffgemma_cpp.system_info()
    assert "ggml 0.20.2 (8c63e70)" in info
    assert "backends: CPU" in info
    assert "ggml CPU backend compiled for:" in info
    assert "default threads: %d" % _native.lib.diffgemma_default_n_threads() in info


def test_system_info_names_the_kernel_tier_that_runs():
    """`info` must say which of our kernels run on this CPU, not only what ggml was compiled for."""
    from kernel_tier import cpu_flags, kernel_tier

    tier = kernel_tier()
    words = {"avx512": "AVX-512", "avx2": "AVX2 (", "none": "none ("}[tier]
    kernels = diffgemma_cpp.system_info().split("diffgemma CPU kernels: ")[1].split(" | ")[0]
    assert kernels.startswith(words), kernels
    if tier == "avx512":
        assert ("BF16" in kernels) == (" avx512_bf16" in cpu_flags()), kernels


def test_c_error_arrives_as_specific_python_exception():
    rows = np.ones((2, 64), dtype=np.float32)
    with pytest.raises(errors.UnsupportedTypeError, match="unknown ggml type id 12345"):
        _native.quantize_rows(12345, rows)
    with pytest.raises(errors.InvalidArgumentError, match="not a multiple of the block size 32"):
        _native.quantize_rows(8, np.ones((2, 40), dtype=np.float32))  # 8 = Q8_0
    with pytest.raises(errors.InvalidArgumentError, match="not finite"):
        _native.quantize_rows(8, np.full((1, 32), np.nan, dtype=np.float32))
    # The reason is also readable from the C side, and every status has a name.
    assert "not finite" in _native.last_error()
    assert _native.string(_native.lib.diffgemma_status_name(-4)) == "DIFFGEMMA_ERR_UNSUPPORTED_MODEL"


def test_quantize_rows_matches_q8_0_layout():
    rows = np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 64)
    out = _native.quantize_rows(8, rows)
    assert out.nbytes == 2 * 2 * 34  # 2 rows x 2 blocks x (f16 scale + 32 int8)
    assert _native.type_name(8) == "q8_0"
    assert _native.type_name(4) is None  # a removed type id has no name


def _compiler():
    for cc in ("cc", "gcc", "clang"):
        if shutil.which(cc):
            return cc
    pytest.skip("no C compiler on PATH")


def test_header_compiles_as_c99_and_links(tmp_path):
    exe = tmp_path / "test_header"
    libdir = diffgemma_cpp.get_library_dir()
    subprocess.run([_compiler(), "-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror",
                    "-I", diffgemma_cpp.get_include(), str(REPO / "tests" / "c" / "test_header.c"),
                    "-L", libdir, "-ldiffgemma", f"-Wl,-rpath,{libdir}", "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    assert f"version={diffgemma_cpp.__version__}" in out
    assert "error=DIFFGEMMA_ERR_UNSUPPORTED_TYPE: unknown ggml type id 9999" in out


def test_cli_version_and_info():
    out = subprocess.run([sys.executable, "-m", "diffgemma_cpp", "--version"], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == f"diffgemma-cpp {diffgemma_cpp.__version__}"
    script = shutil.which("diffgemma-cpp", path=os.path.dirname(sys.executable))
    assert script, "console script diffgemma-cpp not installed next to the interpreter"
    out = subprocess.run([script, "info"], check=True, capture_output=True, text=True)
    assert "ggml 0.20.2" in out.stdout


def test_cli_info_rejects_a_non_gguf_file(tmp_path):
    bogus = tmp_path / "not_a_model.gguf"
    bogus.write_bytes(b"this is not a gguf file at all")
    out = subprocess.run([sys.executable, "-m", "diffgemma_cpp", "info", "-m", str(bogus)], capture_output=True, text=True)
    assert out.returncode == 1
    assert "not a readable GGUF" in out.stderr
    assert "Traceback" not in out.stderr


def _nvcc():
    for candidate in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def test_cuda_sources_compile(tmp_path):
    """CUDA code must never rot silently: every csrc/offload/cuda/*.cu compiles with nvcc (no GPU needed)."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not installed on this machine")
    sources = sorted((REPO / "csrc" / "offload" / "cuda").glob("*.cu"))
    assert sources, "csrc/offload/cuda has no .cu sources"
    ggml_include = Path(diffgemma_cpp.get_include()).parent.parent / "libggml" / "include"
    for src in sources:
        obj = tmp_path / (src.stem + ".o")
        subprocess.run([nvcc, "-std=c++17", "-arch=sm_90", "-c", str(src), "-o", str(obj),
                        "-I", str(REPO / "csrc" / "include"), "-I", str(REPO / "csrc"), "-I", str(ggml_include)],
                       check=True)
        assert obj.stat().st_size > 0
