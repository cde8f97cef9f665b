"""The CUDA sampler kernels (csrc/cuda/sampler.cu) against the NumPy float64 reference and the host twin
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

from sampler_reference import hf_soft_probs, read_results, reference, safe_uniform, stress_canvas, write_cases

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
V_REAL = 262144
INV_TEMP = 1.0 / 0.8


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
                    str(REPO / "tests" / "gpu" / "sampler_cuda_driver.cu"), str(REPO / "csrc" / "cuda" / "sampler.cu"),
                    str(REPO / "csrc" / "sampler_math.cpp"), "-o", str(exe)], check=True)
    probe = subprocess.run([str(exe), "--probe"], capture_output=True, text=True)
    if probe.returncode == 77:
        pytest.skip("no usable CUDA device")
    assert probe.returncode == 0, probe.stderr
    print(probe.stdout.strip())
    return exe


def run_rows(driver, tmp_path, logits, uniforms, probs_type="bf16", pad=0, inv_temp=INV_TEMP):
    logits = np.asarray(logits, dtype=np.float32)
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    write_cases(src, logits, inv_temp, np.asarray(uniforms, dtype=np.float32))
    subprocess.run([str(driver), str(src), str(dst), probs_type, str(pad)], check=True)
    return read_results(dst, *logits.shape)


def check(res, logits, uniforms, probs_type, inv_temp=INV_TEMP):
    # f16 has 11 significant bits, bf16 8: relative rounding 2^-11 and 2^-8. Below 2^-14 (6.1e-5) f16 is
    # subnormal with a fixed step of 2^-24, so there the rounding error is up to half that step (atol), which
    # is 3% of a probability of 1e-6 (and p < 3e-8 becomes 0).
    rtol, atol, floor = (1e-3, 2.0 ** -25, 1e-7) if probs_type == "f16" else (8e-3, 0.0, 1e-30)
    for r, (row, u) in enumerate(zip(logits, uniforms)):
        ref = reference(row, inv_temp, u)
        assert res.ok[r] == 1, f"row {r} rejected"
        assert res.argmax[r] == ref.argmax, f"row {r}: argmax"
        assert res.sampled[r] == ref.sampled, f"row {r}: sampled id for u={u}"
        assert res.log_z[r] == pytest.approx(ref.log_z, rel=1e-6, abs=1e-6), f"row {r}: log_z"
        # abs: the device may keep terms below exp(-87) that the host drops (< 1e-30 nats, see sampler_cuda.h).
        assert res.entropy[r] == pytest.approx(ref.entropy, rel=1e-4, abs=1e-29), f"row {r}: entropy"
        if probs_type == "skip-probs":
            continue
        p_ref = np.exp(ref.x.astype(np.float64) - ref.log_z)
        big = p_ref > floor
        np.testing.assert_allclose(res.probs[r][big], p_ref[big], rtol=rtol, atol=atol, err_msg=f"row {r}: probs")


@pytest.mark.parametrize("probs_type,pad", [("bf16", 0), ("f16", 0), ("bf16", 1)])
def test_kernel_matches_reference_on_full_vocab(driver, tmp_path, probs_type, pad):
    """pad=1 makes rows misaligned, which takes the scalar (non-float4) path."""
    rng = np.random.default_rng(11)
    logits, uniforms = stress_canvas(rng, V_REAL, INV_TEMP)
    res = run_rows(driver, tmp_path, logits, uniforms, probs_type, pad)
    check(res, logits, uniforms, probs_type)
    assert res.argmax[2] == 5 and res.sampled[3] == V_REAL // 21 and res.sampled[4] % 2 == 1
    assert res.sampled[7] == V_REAL // 300


def test_probs_of_bf16_rounded_logits_follow_the_hf_numerics(driver, tmp_path):
    """DG_CUDA_PROBS_BF16_OF_BF16_LOGITS: bf16(softmax(bf16(x))), each row normalised by its own log Z; the
    value is the bf16 nearest the exact probability, so at most one bf16 step (2^-8 relative) away."""
    rng = np.random.default_rng(12)
    logits, uniforms = stress_canvas(rng, V_REAL, INV_TEMP)
    res = run_rows(driver, tmp_path, logits, uniforms, "bf16x")
    for r, row in enumerate(logits):
        ref = hf_soft_probs(row, INV_TEMP)
        big = ref > 1e-30
        np.testing.assert_allclose(res.probs[r][big], ref[big], rtol=2 ** -7, err_msg=f"row {r}")
        assert res.probs[r].sum(dtype=np.float64) == pytest.approx(1.0, abs=0.02)
        exact = np.mean(res.probs[r][big] == ref[big])
        assert exact > 0.99, f"row {r}: only {exact:.3f} of the probabilities are the reference's bf16 value"


@pytest.mark.parametrize("vocab", [1, 3, 17, 2047, 2048, 2049, 5000])
def test_ragged_vocab_sizes(driver, tmp_path, vocab):
    rng = np.random.default_rng(vocab)
    logits = rng.normal(0.0, 3.0, size=(5, vocab)).astype(np.float32)
    uniforms = [safe_uniform(row, INV_TEMP, rng) for row in logits]
    check(run_rows(driver, tmp_path, logits, uniforms), logits, uniforms, "bf16")


def test_edge_rows_match_the_host_rules(driver, tmp_path):
    """Rows the host tests pin (tests/test_sampler_math.py): -FLT_MAX masks spanning more than the float range
    (no NaN entropy clamped to 0), and u = 0 over terms below the host's exp floor (the same first possible id)."""
    rng = np.random.default_rng(21)
    fmax = np.finfo(np.float32).max
    logits = rng.normal(0.0, 3.0, size=(4, 4096)).astype(np.float32)
    logits[0, :2048] = -fmax
    logits[1, ::3] = -fmax
    logits[2:, :] = 0.0
    logits[2:, :40] = np.linspace(-100.0, -87.5, 40, dtype=np.float32)
    logits[2:, 40] = -80.0
    logits[3, 41:] = -np.inf
    logits[3, 2000] = 0.0
    uniforms = [safe_uniform(logits[0], 1.0, rng), safe_uniform(logits[1], 1.0, rng), 0.0, 0.0]
    res = run_rows(driver, tmp_path, logits, uniforms, inv_temp=1.0)
    check(res, logits, uniforms, "bf16", inv_temp=1.0)
    assert res.entropy[0] > 1.0 and res.entropy[1] > 1.0 and list(res.sampled[2:]) == [40, 40]


def test_rows_without_a_distribution(driver, tmp_path):
    logits = np.zeros((3, 3000), dtype=np.float32)
    logits[0, 1500] = np.nan
    logits[1, 2999] = np.inf
    logits[2, :] = -np.inf
    res = run_rows(driver, tmp_path, logits, [0.5] * 3)
    assert list(res.argmax) == [-1] * 3 and list(res.sampled) == [-1] * 3
    assert np.all(np.isnan(res.entropy)) and np.all(res.probs == 0.0)


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
                    str(REPO / "csrc" / "cuda" / "sampler_ggml.cu"), str(REPO / "csrc" / "cuda" / "sampler.cu"),
                    str(REPO / "csrc" / "sampler_math.cpp"), str(REPO / "csrc" / "errors.cpp"),
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
        check(res, logits, uniforms, "skip-probs")
    else:
        check(res, logits, uniforms, mode)
