"""The checks of the CUDA sampler kernels (csrc/offload/cuda/sampler.cu), run by tests/gpu/test_sampler_cuda.py against the
real kernel and by tests/test_gpu_sampler_checks_on_host.py against its emulation: each takes the driver
executable (the file protocol of tests/gpu/sampler_cuda_driver.cu) and asserts."""
import subprocess

import numpy as np
import pytest

from sampler_reference import (assert_row_statistics, hf_soft_probs, read_results, reference, safe_uniform,
                               stress_canvas, write_cases)

V_REAL = 262144
INV_TEMP = 1.0 / 0.8


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
        # entropy abs: the device may keep terms below exp(-87) that the host drops (< 1e-30 nats, sampler_cuda.h).
        assert_row_statistics(res, r, ref, u, entropy_abs=1e-29)
        if probs_type == "skip-probs":
            continue
        p_ref = np.exp(ref.x.astype(np.float64) - ref.log_z)
        big = p_ref > floor
        np.testing.assert_allclose(res.probs[r][big], p_ref[big], rtol=rtol, atol=atol, err_msg=f"row {r}: probs")


def full_vocab(driver, tmp_path, probs_type, pad):
    """pad=1 makes rows misaligned, which takes the scalar (non-float4) path."""
    rng = np.random.default_rng(11)
    logits, uniforms = stress_canvas(rng, V_REAL, INV_TEMP)
    res = run_rows(driver, tmp_path, logits, uniforms, probs_type, pad)
    check(res, logits, uniforms, probs_type)
    assert res.argmax[2] == 5 and res.sampled[3] == V_REAL // 21 and res.sampled[4] % 2 == 1
    assert res.sampled[7] == V_REAL // 300


def probs_of_bf16_rounded_logits(driver, tmp_path):
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


def ragged_vocab(driver, tmp_path, vocab):
    rng = np.random.default_rng(vocab)
    logits = rng.normal(0.0, 3.0, size=(5, vocab)).astype(np.float32)
    uniforms = [safe_uniform(row, INV_TEMP, rng) for row in logits]
    check(run_rows(driver, tmp_path, logits, uniforms), logits, uniforms, "bf16")


def edge_rows(driver, tmp_path):
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


def rows_without_a_distribution(driver, tmp_path):
    logits = np.zeros((3, 3000), dtype=np.float32)
    logits[0, 1500] = np.nan
    logits[1, 2999] = np.inf
    logits[2, :] = -np.inf
    res = run_rows(driver, tmp_path, logits, [0.5] * 3)
    assert list(res.argmax) == [-1] * 3 and list(res.sampled) == [-1] * 3
    assert np.all(np.isnan(res.entropy)) and np.all(res.probs == 0.0)
