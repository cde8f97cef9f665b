"""The CUDA build path of CMakeLists.txt, checked without a GPU:

* asking for CUDA (-DDIFFGEMMA_CUDA=ON, what `CMAKE_ARGS="-DDIFFGEMMA_CUDA=ON" pip install .` passes) against the
  pinned CPU-only ggml stops at configure time with a message that says how to get a CUDA ggml;
* against a ggml that reports CUDA (here the real CPU package behind a wrapper config that claims the
  ggml-cuda backend), the CUDA sources compile through CMake with the project's flags (the library itself is
  not linked: that needs the real CUDA ggml and runs in bench/gpu_session.sh).

Both are configure runs of CMake in a temporary build directory, not pip installs."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cmake():
    try:
        import cmake  # the PyPI cmake package scikit-build-core uses
        # `python -m pytest` puts the repo root on sys.path, where our cmake/ folder shadows that package.
        exe = Path(cmake.CMAKE_BIN_DIR) / "cmake"
        if exe.exists():
            return str(exe)
    except (ImportError, AttributeError):
        pass
    exe = shutil.which("cmake")
    if exe is None:
        pytest.skip("cmake not installed")
    return exe


def _ggml_cmake_dir():
    import libggml
    root = Path(libggml.__file__).parent
    for lib in ("lib64", "lib"):
        d = root / lib / "cmake" / "ggml"
        if (d / "ggml-config.cmake").exists():
            return d
    pytest.skip("libggml-python ships no CMake package config")


def _nvcc():
    for candidate in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _configure(build_dir, ggml_dir, *extra):
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    return subprocess.run([_cmake(), "-S", str(REPO), "-B", str(build_dir), *generator, f"-Dggml_DIR={ggml_dir}",
                           f"-DPython_EXECUTABLE={sys.executable}", "-DCMAKE_BUILD_TYPE=Release", *extra],
                          capture_output=True, text=True)


def test_cuda_option_against_cpu_only_ggml_fails_with_a_clear_message(tmp_path):
    ggml_dir = _ggml_cmake_dir()
    backends = re.search(r'set\(GGML_AVAILABLE_BACKENDS "([^"]*)"\)', (ggml_dir / "ggml-config.cmake").read_text())
    if backends and "ggml-cuda" in backends.group(1):
        pytest.skip("the installed ggml was built with CUDA")
    res = _configure(tmp_path / "build", ggml_dir, "-DDIFFGEMMA_CUDA=ON")
    assert res.returncode != 0, "configure with DIFFGEMMA_CUDA=ON against a CPU-only ggml must fail"
    message = " ".join(res.stderr.split())  # CMake wraps long messages
    assert "DIFFGEMMA_CUDA=ON but the ggml found" in message and "was built without CUDA" in message
    assert "(its backends: ggml-cpu)" in message
    assert ('USE_CUDA=1 CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90" pip install --no-binary libggml-python '
            'libggml-python==0.20.2.post1') in message
    # pip's build isolation would fetch the CPU wheel again: the hint says how to build against the CUDA one.
    assert 'CMAKE_ARGS="-DDIFFGEMMA_CUDA=ON -DDIFFGEMMA_CUDA_ARCHITECTURES=90" pip install --no-build-isolation .' in message


def test_cuda_sources_compile_through_cmake(tmp_path):
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not installed")
    real = _ggml_cmake_dir()
    fake = tmp_path / "ggml-claims-cuda"
    fake.mkdir()
    (fake / "ggml-config.cmake").write_text(
        f'include("{real / "ggml-config.cmake"}")\n'
        'set(GGML_CUDA "ON")\nlist(APPEND GGML_AVAILABLE_BACKENDS ggml-cuda)\n')
    (fake / "ggml-config-version.cmake").write_text(f'include("{real / "ggml-config-version.cmake"}")\n')
    build = tmp_path / "build"
    res = _configure(build, fake, "-DDIFFGEMMA_CUDA=ON", "-DDIFFGEMMA_CUDA_ARCHITECTURES=90",
                     f"-DCMAKE_CUDA_COMPILER={nvcc}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "ggml-cuda" in res.stdout
    sources = sorted((REPO / "csrc" / "offload" / "cuda").glob("*.cu"))
    assert sources
    objects = [f"CMakeFiles/diffgemma.dir/csrc/offload/cuda/{src.name}.o" for src in sources]
    objects.append("CMakeFiles/diffgemma.dir/csrc/kernels/sampler_math.cpp.o")
    # The engine's CUDA-only code paths (DIFFGEMMA_WITH_CUDA): the device sampler behind the offloaded head.
    objects += [f"CMakeFiles/diffgemma.dir/csrc/{name}.cpp.o"
                for name in ("offload/gpu_step_sampler", "runtime/context", "runtime/denoise")]
    if not shutil.which("ninja"):
        pytest.skip("per-object build targets need the Ninja generator")
    res = subprocess.run([_cmake(), "--build", str(build), "--target", *objects, "--", "-v"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    assert "sm_90" in res.stdout or "compute_90" in res.stdout  # the architecture option reached nvcc
    for obj in objects:
        assert (build / obj).stat().st_size > 0


def test_sampler_launchers_reject_bad_arguments_without_a_gpu(tmp_path):
    """The CUDA launchers validate before touching the device, so their error paths run here: every invalid
    call returns cudaErrorInvalidValue (for the caller to map to a DIFFGEMMA_ERR_*), and none aborts."""
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not installed")
    exe = tmp_path / "sampler_cuda_driver"
    subprocess.run([nvcc, "-std=c++17", "-O2", "-arch=sm_90", "-I", str(REPO / "csrc"), "-I", str(REPO / "csrc" / "include"),
                    "-Xcompiler", "-ffp-contract=off,-fno-trapping-math", str(REPO / "tests" / "gpu" / "sampler_cuda_driver.cu"),
                    str(REPO / "csrc" / "offload" / "cuda" / "sampler.cu"), str(REPO / "csrc" / "kernels" / "sampler_math.cpp"), "-o", str(exe)],
                   check=True)
    res = subprocess.run([str(exe), "--check-args"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) >= 18 and all(line.startswith("ok") for line in lines)
