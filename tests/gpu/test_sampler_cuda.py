"""The CUDA sampler kernels (csrc/offload/cuda/sampler.cu) against the NumPy float64 reference and the host twin
dg::row_stats: the same argmax, sampled id (for boundary-safe uniforms), entropy and log-sum-exp, and the
f16/bf16 softmax written for self-conditioning. Skips cleanly without a CUDA device or nvcc.

The kernels are compiled here with the driver tests/gpu/sampler_cuda_driver.cu (no ggml needed), for the
architecture in $DIFFGEMMA_CUDA_ARCH (default "native", i.e. the GPU present)."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import sampler_kernel_checks as checks
from sampler_kernel_checks import INV_TEMP, V_REAL
from sampler_reference import hf_soft_probs, read_results, stress_canvas, write_cases

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]

def _nvcc():
    for candidate in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    if not (Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi")):
        pytest.skip("no NVIDIA GPU on this machine")
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not installed")
    exe = tmp_path_factory.mktemp("cuda") / "sampler_cuda_driver"
    arch = os.environ.get("DIFFGEMMA_CUDA_ARCH", "native")
    subprocess.run([nvcc, "-std=c++17", "-O3", f"-arch={arch}", "-I", str(REPO / "csrc"), "-I", str(REPO / "csrc" / "include"),
                    "-Xcompiler", "-ffp-contract=off,-fno-trapping-math",
                    str(REPO / "tests" / "gpu" / "sampler_cuda_driver.cu"), str(REPO / "csrc" / "offload" / "cuda" / "sampler.cu"),
                    str(REPO / "csrc" / "kernels" / "sampler_math.cpp"), "-o", str(exe)], check=True)
    probe = subprocess.run([str(exe), "--probe"], capture_output=True, text=True)
    if probe.returncode == 77:
        pytest.skip("no usable CUDA device")
    assert probe.returncode == 0, probe.stderr
    print(probe.stdout.strip())
    return exe


@pytest.mark.parametrize("probs_type,pad", [("bf16", 0), ("f16", 0), ("bf16", 1)])
def test_kernel_matches_reference_on_full_vocab(driver, tmp_path, probs_type, pad):
    checks.full_vocab(driver, tmp_path, probs_type, pad)


def test_probs_of_bf16_rounded_logits_follow_the_hf_numerics(driver, tmp_path):
    checks.probs_of_bf16_rounded_logits(driver, tmp_path)


@pytest.mark.parametrize("vocab", [1, 3, 17, 2047, 2048, 2049, 5000])
def test_ragged_vocab_sizes(driver, tmp_path, vocab):
    checks.ragged_vocab(driver, tmp_path, vocab)


def test_edge_rows_match_the_host_rules(driver, tmp_path):
    checks.edge_rows(driver, tmp_path)


def test_rows_without_a_distribution(driver, tmp_path):
    checks.rows_without_a_distribution(driver, tmp_path)


def _compute_sanitizer():
    for candidate in (shutil.which("compute-sanitizer"), "/usr/local/cuda/bin/compute-sanitizer"):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.mark.parametrize("tool,mode", [("memcheck", "bf16"), ("memcheck", "bf16x"), ("racecheck", "bf16")])
def test_kernels_are_clean_under_compute_sanitizer(driver, tmp_path, tool, mode):
    """Out-of-bounds accesses (memcheck) and shared-memory hazards (racecheck: the block reduction, the CDF walk's
    scan storage and its `found` flag) on a small canvas: rows 1-3 of the padded layout are misaligned (scalar
    loads), rows 0 and 4 aligned (float4), and one row each has NaN, only -inf, and its sample in the last tile."""
    sanitizer = _compute_sanitizer()
    if sanitizer is None:
        pytest.skip("compute-sanitizer not installed")
    rng = np.random.default_rng(31)
    V = 4100  # a multiple of 4: the float4 path wherever the row is 16-byte aligned
    logits = rng.normal(0.0, 2.0, size=(6, V)).astype(np.float32)
    logits[2, 77] = np.nan
    logits[3, :] = -np.inf
    logits[5, :-3] = -np.inf
    uniforms = np.array([0.3, 0.9, 0.5, 0.5, 0.0, 0.99], dtype=np.float32)
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    write_cases(src, logits, INV_TEMP, uniforms)
    res = subprocess.run([sanitizer, "--tool", tool, "--error-exitcode", "9", str(driver), str(src), str(dst), mode, "1"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    out = read_results(dst, *logits.shape)
    assert list(out.argmax[2:4]) == [-1, -1] and out.sampled[5] >= V - 3


def test_cpu_and_gpu_agree_on_a_real_size_canvas(driver):
    """256 x 262144 random rows, random uniforms (not boundary-filtered): measured agreement and kernel time.
    With 262k CDF boundaries per row, about 0.4% of such draws land within float rounding of one (measured on the
    host with the emulated kernel: tests/test_sampler_math.py::test_emulated_device_walk_disagrees_only_by_rounding)
    and may pick the neighbouring id; the driver checks that every disagreement is such a tie."""
    res = subprocess.run([str(driver), "--bench", str(V_REAL), "256", "5"], check=True, capture_output=True, text=True)
    out = res.stdout
    print(out.strip(), res.stderr.strip())
    fields = dict(kv.split("=") for kv in out.split())
    assert fields["argmax_agree"] == "256/256"
    assert fields["sampled_unexplained"] == "0", res.stderr
    agree = int(fields["sampled_agree"].split("/")[0])
    assert agree >= 250, "more rounding ties than 0.4% of 256 draws makes plausible"
    assert float(fields["max_rel_entropy_diff"]) < 1e-4
    assert float(re.sub(r"[^\d.]", "", fields["stats_ms"])) > 0


# ---- dg::CudaSampler on ggml tensors (needs a ggml built with CUDA) ---------------------------------------------

@pytest.fixture(scope="module")
def ggml_driver(tmp_path_factory, driver):  # `driver` first: it skips without a GPU or nvcc
    libggml = pytest.importorskip("libggml")
    root = Path(libggml.__file__).parent
    libdir = next((root / d for d in ("lib64", "lib") if (root / d / "libggml.so").exists()), None)
    if libdir is None:
        pytest.skip("libggml-python ships no libggml.so")
    if not list(libdir.glob("libggml-cuda.so*")):
        pytest.skip(f"the installed ggml ({libdir}) was built without CUDA")
    exe = tmp_path_factory.mktemp("cuda_ggml") / "cuda_sampler_ggml_test"
    arch = os.environ.get("DIFFGEMMA_CUDA_ARCH", "native")
    subprocess.run([_nvcc(), "-std=c++17", "-O2", f"-arch={arch}", "-I", str(REPO / "csrc"), "-I", str(REPO / "csrc" / "include"),
                    "-I", str(root / "include"), str(REPO / "tests" / "gpu" / "cuda_sampler_ggml_test.cpp"),
                    str(REPO / "csrc" / "offload" / "cuda" / "sampler_ggml.cu"), str(REPO / "csrc" / "offload" / "cuda" / "sampler.cu"),
                    str(REPO / "csrc" / "kernels" / "sampler_math.cpp"), str(REPO / "csrc" / "core" / "errors.cpp"),
                    "-L", str(libdir), "-lggml", "-lggml-base", "-Xlinker", "-rpath", "-Xlinker", str(libdir), "-o", str(exe)],
                   check=True)
    return exe


def test_cuda_sampler_on_ggml_tensors_reports_errors_as_statuses(ggml_driver):
    res = subprocess.run([str(ggml_driver), "--check-errors"], capture_output=True, text=True)
    print(res.stdout)
    if res.returncode == 77:
        pytest.skip("ggml sees no CUDA device")
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("mode", ["bf16", "f16", "bf16x"])
def test_cuda_sampler_on_ggml_tensors_matches_reference(ggml_driver, tmp_path, mode):
    rng = np.random.default_rng(13)
    logits, uniforms = stress_canvas(rng, V_REAL, INV_TEMP)
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    write_cases(src, logits, INV_TEMP, np.asarray(uniforms, dtype=np.float32))
    run = subprocess.run([str(ggml_driver), str(src), str(dst), mode], capture_output=True, text=True)
    if run.returncode == 77:
        pytest.skip("ggml sees no CUDA device")
    assert run.returncode == 0, run.stderr
    res = read_results(dst, *logits.shape)
    if mode == "bf16x":
        for r, row in enumerate(logits):
            ref = hf_soft_probs(row, INV_TEMP)
            big = ref > 1e-30
            np.testing.assert_allclose(res.probs[r][big], ref[big], rtol=2 ** -7, err_msg=f"row {r}")
        res.probs[:] = np.nan  # the statistics are still checked below; the probabilities were checked here
        checks.check(res, logits, uniforms, "skip-probs")
    else:
        checks.check(res, logits, uniforms, mode)
