"""dg::row_stats / dg::row_probs (csrc/kernels/sampler_math.cpp), the host sampler statistics, against a NumPy float64
reference: argmax (first index on ties), log-sum-exp, entropy, inverse-CDF sample from a given uniform, and the
softmax probabilities for self-conditioning.

The C++ is compiled here into a small driver (tests/c/test_sampler_math.cpp) with the library's flags, because
the dg:: namespace is not exported from libdiffgemma. Uniforms are chosen so that u*Z lies at least
sampler_reference.BOUNDARY_GAP (1e-5 of Z) from every CDF boundary: within that gap the sampled id depends
on the order of float additions, which differs between any two implementations."""
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sampler_reference import assert_row_statistics, read_results, reference, safe_uniform, stress_canvas, write_cases
import c_driver

REPO = Path(__file__).resolve().parents[1]
V_REAL = 262144  # DiffusionGemma's vocabulary
INV_TEMP = 1.0 / 0.8  # the first denoising step's temperature


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    try:
        return c_driver.build_sampler_driver(tmp_path_factory.mktemp("sampler"))
    except c_driver.Unavailable as exc:
        pytest.skip(str(exc))


def run_rows(driver, tmp_path, logits, uniforms, inv_temp=INV_TEMP, emulate_device=False):
    logits = np.asarray(logits, dtype=np.float32)
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    write_cases(src, logits, inv_temp, np.asarray(uniforms, dtype=np.float32))
    subprocess.run([str(driver), *(["--emulate-device"] if emulate_device else []), str(src), str(dst)], check=True)
    return read_results(dst, *logits.shape)


def check_against_reference(res, logits, uniforms, inv_temp=INV_TEMP, entropy_abs=0.0):
    for r, (row, u) in enumerate(zip(logits, uniforms)):
        ref = reference(row, inv_temp, u)
        assert_row_statistics(res, r, ref, u, entropy_abs)
        # Probabilities: exp(x - log_z) to a few float ulps wherever they are not negligible.
        p_ref = np.exp(ref.x.astype(np.float64) - np.float64(np.float32(res.log_z[r])))
        big = p_ref > 1e-30
        np.testing.assert_allclose(res.probs[r][big], p_ref[big], rtol=2e-5, err_msg=f"row {r}: probs")
        assert np.all(res.probs[r][~big] <= 1e-29)
        assert res.probs[r].sum(dtype=np.float64) == pytest.approx(1.0, rel=1e-5)


def test_random_rows_full_vocab(driver, tmp_path):
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 4.0, size=(3, V_REAL)).astype(np.float32)
    logits[1] *= 6.0  # sharper: mass concentrated on a few ids
    uniforms = [safe_uniform(row, INV_TEMP, rng) for row in logits]
    check_against_reference(run_rows(driver, tmp_path, logits, uniforms), logits, uniforms)


def test_ties_take_the_first_index_across_chunks_and_lanes(driver, tmp_path):
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 1.0, size=(3, V_REAL)).astype(np.float32)
    logits[0, [70000, 5, 513, V_REAL - 1]] = 30.0   # first max at 5
    logits[1, [V_REAL - 1, 131072]] = 30.0          # first max in a later chunk than the other
    logits[2, :] = 1.0                              # all equal: uniform distribution, H = log V
    # Row 2's boundaries are 1/V = 3.8e-6 apart, closer than BOUNDARY_GAP; its terms are all exactly 1, so
    # every partial sum is an exact integer in any order and a smaller gap is safe.
    uniforms = [safe_uniform(logits[0], INV_TEMP, rng), safe_uniform(logits[1], INV_TEMP, rng),
                safe_uniform(logits[2], INV_TEMP, rng, gap=1e-6)]
    res = run_rows(driver, tmp_path, logits, uniforms)
    check_against_reference(res, logits, uniforms)
    assert list(res.argmax) == [5, 131072, 0]
    assert res.entropy[2] == pytest.approx(np.log(V_REAL), rel=1e-6)
    assert res.sampled[2] == int(np.float64(uniforms[2]) * V_REAL)


def test_minus_inf_entries_are_never_sampled(driver, tmp_path):
    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 2.0, size=(4, V_REAL)).astype(np.float32)
    logits[0, ::2] = -np.inf                         # every other id impossible
    logits[1, : V_REAL - 7] = -np.inf                # only the last 7 ids possible
    logits[2, 1000:] = -np.inf                       # a -inf tail: u near 1 must not clamp into it
    logits[3, :700] = -np.inf                        # a -inf head: u = 0 takes the first possible id
    logits[3, 700] = 8.0
    logits[2, 999] = 8.0
    uniforms = [safe_uniform(logits[0], INV_TEMP, rng), safe_uniform(logits[1], INV_TEMP, rng),
                safe_uniform(logits[2], INV_TEMP, rng, near=float(np.nextafter(np.float32(1), np.float32(0)))), 0.0]
    res = run_rows(driver, tmp_path, logits, uniforms)
    check_against_reference(res, logits, uniforms)
    assert res.sampled[0] % 2 == 1
    assert res.sampled[1] >= V_REAL - 7
    assert res.sampled[2] == 999
    assert res.sampled[3] == 700


def test_very_peaked_rows_keep_relative_entropy_precision(driver, tmp_path):
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 1.0, size=(3, V_REAL)).astype(np.float32)
    logits[0, 12345] = 40.0   # H ~ 1e-16: a naive log(1 + tiny) would give exactly 0
    logits[1, 200000] = 20.0  # H ~ 1e-5
    logits[2, 7] = 72.0       # H ~ 5e-33: the other terms sit near the exp floor (-87)
    uniforms = [0.5, safe_uniform(logits[1], INV_TEMP, rng, near=0.999), 0.25]
    res = run_rows(driver, tmp_path, logits, uniforms)
    check_against_reference(res, logits, uniforms)
    assert list(res.sampled) == [12345, 200000, 7]
    assert 0 < res.entropy[0] < 1e-10 and 0 < res.entropy[1] < 1e-3 and 0 < res.entropy[2] < 1e-30


@pytest.mark.parametrize("vocab", [1, 3, 17, 511, 512, 513, 1000])
def test_small_and_ragged_vocab_sizes(driver, tmp_path, vocab):
    rng = np.random.default_rng(vocab)
    logits = rng.normal(0.0, 3.0, size=(4, vocab)).astype(np.float32)
    uniforms = [safe_uniform(row, INV_TEMP, rng) for row in logits]
    check_against_reference(run_rows(driver, tmp_path, logits, uniforms), logits, uniforms)


def test_uniforms_sweep_the_whole_cdf(driver, tmp_path):
    """Many uniforms on one small row: every id is reached in order, exactly where the reference puts it."""
    rng = np.random.default_rng(5)
    row = rng.normal(0.0, 1.0, size=40).astype(np.float32)
    uniforms = [safe_uniform(row, 1.0, rng, near=q) for q in np.linspace(0.0, 0.9999, 200)]
    logits = np.repeat(row[None, :], len(uniforms), axis=0)
    res = run_rows(driver, tmp_path, logits, uniforms, inv_temp=1.0)
    check_against_reference(res, logits, uniforms, inv_temp=1.0)
    assert np.all(np.diff(res.sampled) >= 0)
    assert len(set(res.sampled.tolist())) >= 30


@pytest.mark.parametrize("vocab", [V_REAL, V_REAL - 1, 1, 3, 2049])
def test_device_reduction_tree_emulated_on_host(driver, tmp_path, vocab):
    """The CUDA kernel's partial-reduction arithmetic (csrc/offload/cuda/sampler_partial.h, shared with the kernel)
    replayed on the host through the kernel's thread / warp-butterfly / cross-warp tree: argmax, log Z and
    entropy must match the reference. vocab % 4 != 0 takes the kernel's scalar-load path. The entropy gets
    an absolute slack of 1e-29 nats: per-thread partials keep terms below exp(-87) that the host drops."""
    rng = np.random.default_rng(vocab)
    if vocab >= 1000:
        logits, uniforms = stress_canvas(rng, vocab, INV_TEMP)
    else:
        logits = rng.normal(0.0, 3.0, size=(4, vocab)).astype(np.float32)
        uniforms = [safe_uniform(row, INV_TEMP, rng) for row in logits]
    res = run_rows(driver, tmp_path, logits, uniforms, emulate_device=True)
    check_against_reference(res, logits, uniforms, entropy_abs=1e-29)


@pytest.mark.parametrize("emulate_device", [False, True], ids=["host", "emulated-device"])
def test_rows_spanning_more_than_float_max(driver, tmp_path, emulate_device):
    """-FLT_MAX as a mask (torch.finfo(float32).min, the usual masked_fill value) next to positive logits: x - max
    overflows to -inf and d * sum to -inf, where the device's partial merge once computed 0 * -inf = NaN, which
    partial_entropy's clamp turned into entropy 0 (a confident position). Both sides must give the real entropy."""
    rng = np.random.default_rng(8)
    fmax = np.finfo(np.float32).max
    logits = rng.normal(0.0, 3.0, size=(3, 4096)).astype(np.float32)
    logits[0, :2048] = -fmax                           # whole threads' and warps' slices at -FLT_MAX
    logits[1, ::3] = -fmax                             # mixed into every slice
    logits[2, 100] = fmax / 2                          # a huge max: the rest is ~FLT_MAX below it
    logits[2, 101:] = -fmax
    uniforms = [safe_uniform(logits[0], 1.0, rng), safe_uniform(logits[1], 1.0, rng), 0.5]
    res = run_rows(driver, tmp_path, logits, uniforms, inv_temp=1.0, emulate_device=emulate_device)
    check_against_reference(res, logits, uniforms, inv_temp=1.0, entropy_abs=1e-29)
    assert res.entropy[0] > 1.0 and res.entropy[1] > 1.0 and res.entropy[2] == 0.0 and res.sampled[2] == 100


@pytest.mark.parametrize("emulate_device", [False, True], ids=["host", "emulated-device"])
def test_terms_below_the_exp_floor_are_never_sampled(driver, tmp_path, emulate_device):
    """Ids with x - max(x) < -87 have p = 0 on the host (exp(-87) ~ 1.6e-38); float exp still gives denormals
    down to -103. The device's CDF walk uses the host's floor, so u = 0 takes the same first possible id."""
    logits = np.zeros((2, 3000), dtype=np.float32)
    logits[:, :40] = np.linspace(-100.0, -87.5, 40, dtype=np.float32)  # denormal terms: p = 0 for both sides
    logits[:, 40] = -80.0                                              # the first id with p > 0
    logits[1, 41:] = -np.inf
    logits[1, 2000] = 0.0
    res = run_rows(driver, tmp_path, logits, [0.0, 0.0], inv_temp=1.0, emulate_device=emulate_device)
    check_against_reference(res, logits, [0.0, 0.0], inv_temp=1.0, entropy_abs=1e-29)
    assert list(res.sampled) == [40, 40]


def test_emulated_device_walk_disagrees_only_by_rounding(driver):
    """The kernel's CDF walk (emulated, float sums in tile and block-scan order) against the host twin on random
    full-vocabulary rows and uniforms, as the GPU bench draws them. With 262k boundaries a few draws per thousand
    land within float rounding of one and may pick the neighbouring id; any other disagreement is a bug."""
    out = subprocess.run([str(driver), "--walk-agreement", str(V_REAL), "12", "24"], check=True, capture_output=True,
                         text=True).stdout
    print(out.strip())
    fields = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split())
    assert int(fields["draws"]) == 12 * 24
    assert int(fields["unexplained"]) == 0
    assert int(fields["disagree"]) <= 0.05 * int(fields["draws"])


def test_rows_without_a_distribution_are_rejected(driver, tmp_path):
    logits = np.zeros((4, 600), dtype=np.float32)
    logits[0, 300] = np.nan
    logits[1, 599] = np.inf
    logits[2, :] = -np.inf
    logits[3, 0] = np.nan                  # NaN in a chunk before any finite value
    logits[3, 1:512] = -np.inf
    res = run_rows(driver, tmp_path, logits, [0.5] * 4)
    assert list(res.ok) == [0, 0, 0, 0]
    assert list(res.argmax) == [-1] * 4 and list(res.sampled) == [-1] * 4
    assert np.all(np.isnan(res.entropy)) and np.all(np.isnan(res.log_z))
    assert np.all(res.probs == 0.0)


def test_bad_arguments_are_rejected(driver, tmp_path):
    logits = np.zeros((1, 8), dtype=np.float32)
    assert run_rows(driver, tmp_path, logits, [1.0]).ok[0] == 0    # u outside [0,1)
    assert run_rows(driver, tmp_path, logits, [-0.1]).ok[0] == 0
    assert run_rows(driver, tmp_path, logits, [0.5], inv_temp=0.0).ok[0] == 0
    assert run_rows(driver, tmp_path, logits, [0.5], inv_temp=float("inf")).ok[0] == 0
