"""Our CPU GEMM (csrc/kernels/gemm_f32.cpp) and its bf16 dot-product path for quantized weights (csrc/kernels/gemm_bf16.cpp)
against NumPy, on random weights quantized by ggml, for the dense and the expert (mul_mat_id) kernels; and our
AVX-512 dequantizers (csrc/kernels/dequant_avx512.cpp) against ggml's to_float, bit for bit.

The C++ is compiled here into a small driver (tests/c/test_gemm.cpp) with the library's flags, because the
dg:: namespace is not exported from libdiffgemma. Shapes are chosen to hit every edge: a feature count that
is not a multiple of the 32-row panel, a K of several 256-wide blocks, token counts that leave a partial
6-token register tile."""
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from c_driver import build_or_skip
from kernel_tier import cpu_flags

REPO = Path(__file__).resolve().parents[1]

# Weight types whose products take the bf16 path on a CPU with AVX512_BF16 (f32 and f16 keep the f32 path).
BF16_PATH_TYPES = ["bf16", "q8_0", "q4_K", "q6_K", "q5_0", "nvfp4"]
F32_PATH_TYPES = ["f32", "f16"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    # The library's flags for these files (the ISA comes from target attributes, not -march; -ffp-contract=off
    # is dequant_avx512.cpp's, harmless for the others).
    sources = ["kernels/gemm_f32.cpp", "kernels/gemm_bf16.cpp", "kernels/gemm_bf16_rows.cpp", "kernels/dequant_avx512.cpp",
               "core/cpu_isa.cpp", "core/kernel_config.cpp"]
    # Under scripts/sanitize_tests.sh the driver is instrumented too: it gives each tensor an exact-size heap
    # block, so a kernel's read or write past a weight, activation or output row is a report there.
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g"] \
        if os.environ.get("DG_SANITIZED") == "1" else []
    return build_or_skip(tmp_path_factory.mktemp("gemm") / "test_gemm", "test_gemm.cpp", sources,
                         ("-O3", "-ffp-contract=off", "-Wno-unused-parameter", *sanitize), ggml_libs=("ggml-base",))


@pytest.fixture(scope="module")
def has_bf16(driver):
    return subprocess.run([str(driver), "has-bf16"], check=True, capture_output=True, text=True).stdout.strip() == "1"


def _run(driver, *args, env=None):
    res = subprocess.run([str(driver), *map(str, args)], capture_output=True, text=True,
                         env=None if env is None else {**os.environ, **env})
    if res.returncode == 3:
        pytest.skip(f"the GEMM does not run on this CPU: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr


def to_bf16(a):
    """float32 -> the bf16 value (as float64), rounded to nearest even like VCVTNE2PS2BF16 (no NaNs here)."""
    u = np.asarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return r.view(np.float32).astype(np.float64)


def nmse(a, b):
    return float(np.sum((np.asarray(a, np.float64) - b) ** 2) / np.sum(b ** 2))


def read_dense(path):
    raw = path.read_bytes()
    N, K, T = np.frombuffer(raw, np.int64, 3)
    f = np.frombuffer(raw, np.float32, offset=24)
    sizes = [N * K, T * K, T * N, T * N, T * N]
    parts = np.split(f, np.cumsum(sizes)[:-1])
    w, x, y, y_f32, y_split = parts
    return w.reshape(N, K), x.reshape(T, K), y.reshape(T, N), y_f32.reshape(T, N), y_split.reshape(T, N)


def check_product(y, w, x, bf16_path):
    """y against x @ w.T in float64: for the bf16 path against the same product of bf16-rounded operands,
    which only the f32 accumulation order separates from ours."""
    exact = x.astype(np.float64) @ w.astype(np.float64).T
    scale = np.sqrt(np.mean(exact ** 2))
    if bf16_path:
        emulated = to_bf16(x) @ to_bf16(w).T
        err = np.max(np.abs(y - emulated)) / scale
        assert err < 2e-5, f"bf16 path: max |y - bf16 emulation| = {err:.2e} of the rms"
        # The bf16 rounding is really there (else this would test the f32 path twice), and small.
        assert 1e-7 < nmse(y, exact) < 1e-4
    else:
        err = np.max(np.abs(y - exact)) / scale
        assert err < 2e-5, f"f32 path: max |y - exact| = {err:.2e} of the rms"


@pytest.mark.parametrize("wtype", F32_PATH_TYPES + BF16_PATH_TYPES)
# (16, 9216, 300): the bf16 path rounds the activations in K chunks of <= 2M values, two chunks here.
@pytest.mark.parametrize("N,K,T", [(80, 768, 13), (32, 256, 6), (40, 1536, 7), (48, 512, 17), (16, 9216, 300)])
def test_dense_gemm_matches_numpy(driver, has_bf16, tmp_path, wtype, N, K, T):
    out = tmp_path / "out.bin"
    _run(driver, "check", wtype, N, K, T, out)
    w, x, y, y_f32, y_split = read_dense(out)
    assert np.all(np.isfinite(y)), "some outputs were never written"
    check_product(y, w, x, bf16_path=has_bf16 and wtype in BF16_PATH_TYPES)
    check_product(y_f32, w, x, bf16_path=False)  # the driver's config without the bf16 path (DIFFGEMMA_NO_BF16=1)
    # Splitting the features between threads must not change a single value.
    np.testing.assert_array_equal(y_split, y)


@pytest.mark.skipif(not (" avx2" in cpu_flags() and " fma" in cpu_flags()), reason="the AVX2 tier needs AVX2 + FMA")
@pytest.mark.parametrize("wtype", ["f32", "f16", "bf16", "nvfp4"])
@pytest.mark.parametrize("N,K,T", [(80, 768, 13), (40, 1536, 7), (33, 256, 8)])
def test_avx2_tier_matches_numpy(driver, tmp_path, wtype, N, K, T):
    """CPUs without AVX-512 run the AVX2 register tile (csrc/kernels/gemm_f32.cpp) for f32/f16/bf16 and NVFP4 weights
    with f32 activations; DIFFGEMMA_CPU_ISA=avx2 selects it here. Partial last panels (N=33, 40, 80) and token counts
    that leave a partial 3-token tile."""
    out = tmp_path / "out.bin"
    _run(driver, "check", wtype, N, K, T, out, env={"DIFFGEMMA_CPU_ISA": "avx2"})
    w, x, y, y_f32, y_split = read_dense(out)
    assert np.all(np.isfinite(y)), "some outputs were never written"
    check_product(y, w, x, bf16_path=False)
    np.testing.assert_array_equal(y_split, y)


@pytest.mark.skipif(not (" avx2" in cpu_flags() and " fma" in cpu_flags()), reason="the AVX2 tier needs AVX2 + FMA")
@pytest.mark.parametrize("wtype,K", [("bf16", 70), ("nvfp4", 128)])
def test_avx2_tier_experts_stay_f32(driver, tmp_path, wtype, K):
    """Capped at the AVX2 tier, bf16 and NVFP4 experts (the bf16-path types that tier takes) keep f32 activations:
    neither the bf16 panels nor the row tiles (AVX512_BF16) run, so the default output is the f32 path's, bit
    for bit, and within f32 accuracy of NumPy."""
    out = tmp_path / "out.bin"
    _run(driver, "check-id", wtype, 37, K, 9, 8, 2, out, env={"DIFFGEMMA_CPU_ISA": "avx2"})
    _, w, x, ids, (y, y_f32, y_one, y_panels) = read_id(out)
    for v in (y, y_one, y_panels):
        np.testing.assert_array_equal(v, y_f32)
    for e in range(w.shape[0]):
        t_idx, j_idx = np.nonzero(ids == e)
        if len(t_idx):
            check_product(y[t_idx, j_idx], w[e], x[t_idx], bf16_path=False)


def read_id(path):
    raw = path.read_bytes()
    N, K, T, n_expert, n_used = (int(v) for v in np.frombuffer(raw, np.int64, 5))
    off = 40
    w = np.frombuffer(raw, np.float32, n_expert * N * K, off).reshape(n_expert, N, K)
    off += w.nbytes
    x = np.frombuffer(raw, np.float32, T * K, off).reshape(T, K)
    off += x.nbytes
    ids = np.frombuffer(raw, np.int32, T * n_used, off).reshape(T, n_used)
    off += ids.nbytes
    ys = []
    for _ in range(4):  # y (2 threads), y_f32, y_one (1 thread), y_panels
        ys.append(np.frombuffer(raw, np.float32, T * n_used * N, off).reshape(T, n_used, N))
        off += ys[-1].nbytes
    return (N, K, T, n_expert, n_used), w, x, ids, ys


def check_experts(driver, has_bf16, tmp_path, wtype, N, K, T, n_expert, n_used):
    out = tmp_path / "out.bin"
    _run(driver, "check-id", wtype, N, K, T, n_expert, n_used, out)
    head, w, x, ids, (y, y_f32, y_one, y_panels) = read_id(out)
    assert head == (N, K, T, n_expert, n_used)
    assert all(np.all(np.isfinite(v)) for v in (y, y_f32, y_one, y_panels)), "some outputs were never written"
    bf16_path = has_bf16 and wtype not in F32_PATH_TYPES
    counts = []
    for e in range(n_expert):
        t_idx, j_idx = np.nonzero(ids == e)
        counts.append(len(t_idx))
        if len(t_idx) == 0:
            continue
        check_product(y[t_idx, j_idx], w[e], x[t_idx], bf16_path)
        check_product(y_f32[t_idx, j_idx], w[e], x[t_idx], bf16_path=False)
        # The row tiles (few tokens) and the transposed panels multiply the same bf16 values: only the f32
        # summation order separates them.
        exact = x[t_idx].astype(np.float64) @ w[e].astype(np.float64).T
        err = np.max(np.abs(y[t_idx, j_idx] - y_panels[t_idx, j_idx])) / np.sqrt(np.mean(exact ** 2))
        assert err < 1e-5, f"expert {e}: row tiles vs panels differ by {err:.2e} of the rms"
    # Splitting the work items between threads must not change a single value.
    np.testing.assert_array_equal(y_one, y)
    return counts


@pytest.mark.parametrize("wtype", ["f32", "q4_K", "q6_K", "q8_0", "nvfp4"])
def test_expert_gemm_matches_numpy(driver, has_bf16, tmp_path, wtype):
    check_experts(driver, has_bf16, tmp_path, wtype, 80, 512, 23, 8, 3)


# Odd shapes for the few-token row tiles (csrc/kernels/gemm_bf16_rows.cpp): K not a multiple of the 32-value step
# (bf16: 70, 2 x 35; q8_0 / q5_0: 96, 3 blocks of 32), features not a multiple of the 4-row tile or the
# 32-row panel, experts with no token and with 1..28 tokens, and experts on both sides of the row tiles' limit
# (128 tokens; the last case routes 126, 119 and 135 tokens), above which the panels run.
@pytest.mark.parametrize("wtype,N,K,T,n_expert,n_used", [
    ("bf16", 37, 70, 9, 8, 2),
    ("q8_0", 45, 96, 20, 16, 3),
    ("q5_0", 6, 96, 5, 8, 1),
    ("q4_K", 33, 256, 40, 6, 3),
    ("q6_K", 1, 512, 13, 4, 4),
    ("q8_0", 24, 160, 190, 3, 2),
    # One expert with 1, 2, 3 tokens and 1..5 features (a lone partial 4-row group, partial 4-token tiles).
    ("bf16", 1, 2, 1, 1, 1),
    ("q8_0", 2, 32, 2, 1, 1),
    ("q4_K", 5, 256, 3, 1, 1),
    # Types that reach the row tiles through the fallback (ggml's to_float, then the rounding).
    ("q5_K", 7, 256, 9, 3, 2),
    ("q4_0", 7, 64, 9, 3, 2),
    ("mxfp4", 7, 64, 9, 3, 2),
    ("nvfp4", 7, 64, 9, 3, 2),
    ("iq4_nl", 7, 64, 9, 3, 2),
    # More slots than experts: the driver draws a token's experts with repetition (one expert twice).
    ("q4_K", 9, 256, 6, 2, 5),
    ("q8_0", 13, 96, 40, 3, 5),
])
def test_expert_row_tiles_odd_shapes(driver, has_bf16, tmp_path, wtype, N, K, T, n_expert, n_used):
    counts = check_experts(driver, has_bf16, tmp_path, wtype, N, K, T, n_expert, n_used)
    assert sum(counts) == T * n_used


@pytest.mark.parametrize("T", [128, 129])
def test_row_tiles_token_limit(driver, has_bf16, tmp_path, T):
    """Two experts, both on every token: each sees exactly T tokens, on either side of the row tiles' limit
    (gemm_bf16_rows_max_tokens, 128). Above it the default path is the panels, bit for bit; at it the row tiles
    run, whose other f32 summation order shows in the low bits."""
    if not has_bf16:
        pytest.skip("the row tiles need AVX512_BF16")
    assert check_experts(driver, has_bf16, tmp_path, "q8_0", 9, 96, T, 2, 2) == [T, T]
    *_, (y, _, _, y_panels) = read_id(tmp_path / "out.bin")
    if T > 128:
        np.testing.assert_array_equal(y, y_panels)
    else:
        assert np.any(y != y_panels), "128 tokens per expert did not take the row tiles"


@pytest.mark.parametrize("wtype", ["q4_K", "q6_K", "q8_0", "f16", "bf16"])
def test_fast_dequantizers_match_ggml(driver, wtype):
    _run(driver, "check-dequant", wtype)


@pytest.mark.parametrize("wtype", ["q4_K", "q8_0"])
def test_bf16_dequantizers_match_ggml(driver, wtype):
    """The experts' direct bf16 dequantizers (csrc/kernels/dequant_avx512.h) give bf16(ggml's value), bit for bit: the row
    tiles multiply exactly the values the panels do."""
    _run(driver, "check-dequant-bf16", wtype)
