"""NumPy float64 reference of the per-position sampler statistics (csrc/kernels/sampler_math.h semantics), shared by
the CPU test (tests/test_sampler_math.py) and the CUDA test (tests/gpu/test_sampler_cuda.py), plus the file
format of the C drivers."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# p_i counts as 0 when x_i - max(x) is below this (both implementations: exp(-87) ~ 1.6e-38).
EXP_FLOOR = -87.0
# A uniform is "safe" when u*Z is at least this far (relative to Z) from every CDF boundary: float32
# accumulation over 262k terms in any order stays well inside it, so every implementation samples the same id.
BOUNDARY_GAP = 1e-5


@dataclass
class RefStats:
    argmax: int
    sampled: int
    log_z: float
    entropy: float
    cdf: np.ndarray      # float64 cumulative sum of exp(x - max), last entry = Z / exp(max)
    x: np.ndarray        # float32 scaled logits


def scaled(row: np.ndarray, inv_temp: float) -> np.ndarray:
    """x = logits * inv_temp rounded to float32, exactly as both implementations compute it."""
    return (np.asarray(row, dtype=np.float32) * np.float32(inv_temp)).astype(np.float32)


def reference(row: np.ndarray, inv_temp: float, u: float) -> RefStats:
    x = scaled(row, inv_temp)
    m = x.max()
    argmax = int(np.argmax(x))  # first index of the max, like torch.argmax
    d = x.astype(np.float64) - np.float64(m)
    live = d >= EXP_FLOOR
    e = np.where(live, np.exp(np.where(live, d, 0.0)), 0.0)
    # The max's own term is exactly 1; keeping it apart keeps peaked rows precise (log1p, no 1 + tiny - 1).
    rest = e.copy()
    rest[argmax] = 0.0
    s_rest = rest.sum()
    t = (e * np.where(live, d, 0.0)).sum()
    z_rel = 1.0 + s_rest
    entropy = np.log1p(s_rest) - t / z_rel
    cdf = np.cumsum(e)
    target = np.float64(np.float32(u)) * z_rel
    sampled = int(np.searchsorted(cdf, target, side="right"))
    if sampled >= len(cdf):
        sampled = int(np.flatnonzero(e > 0)[-1])
    return RefStats(argmax, sampled, float(m + np.log1p(s_rest)), float(max(entropy, 0.0)), cdf, x)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest bfloat16 (ties to even), returned as float32 (finite inputs and +-inf)."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.astype(np.uint32).view(np.float32)


def hf_soft_probs(row: np.ndarray, inv_temp: float) -> np.ndarray:
    """The HF reference's self-conditioning probabilities (model-spec 4.5): the processed logits cast to bf16
    before the softmax, the probabilities cast to bf16 after it. float64 softmax here, bf16 values out."""
    x = bf16_round(scaled(row, inv_temp)).astype(np.float64)
    m = x.max()
    e = np.exp(x - m)
    return bf16_round((e / e.sum()).astype(np.float32))


def boundary_gap(ref: RefStats, u: float) -> float:
    """Distance of u*Z to the nearest CDF boundary, relative to Z."""
    z = ref.cdf[-1]
    target = np.float64(np.float32(u)) * z
    i = int(np.searchsorted(ref.cdf, target, side="right"))
    below = target - (ref.cdf[i - 1] if i > 0 else 0.0)
    above = (ref.cdf[i] - target) if i < len(ref.cdf) else np.inf
    return float(min(below, above) / z)


def safe_uniform(row: np.ndarray, inv_temp: float, rng: np.random.Generator, near: float | None = None,
                 gap: float = BOUNDARY_GAP) -> float:
    """A float32 uniform in [0,1) whose u*Z is `gap` away from every CDF boundary (at or close to `near` when
    given), so the sampled id is defined independently of summation order."""
    ref = reference(row, inv_temp, 0.0)
    for attempt in range(1000):
        u = near if near is not None and attempt == 0 else (
            near + (rng.random() - 0.5) * 1e-3 * attempt if near is not None else rng.random())
        u = float(np.float32(min(max(u, 0.0), np.nextafter(np.float32(1), np.float32(0)))))
        if boundary_gap(ref, u) > gap:
            return u
    raise AssertionError("no boundary-safe uniform found; the test row is degenerate")


def stress_canvas(rng: np.random.Generator, vocab: int = 262144, inv_temp: float = 1.0 / 0.8):
    """Rows that exercise every rule, with boundary-safe uniforms (vocab >= 1000): (logits [8, vocab], uniforms).
    Row 2: ties (first index 5 wins); 3: very peaked (H ~ 1e-15); 4: every other id impossible (-inf);
    5: all equal (H = log V; its 1/V-spaced boundaries are exact integers in any order, so a 1e-6 gap is safe);
    6: H ~ 1e-33, terms at the exp floor; 7: a -inf head and u = 0."""
    logits = rng.normal(0.0, 4.0, size=(8, vocab)).astype(np.float32)
    logits[1] *= 6.0
    logits[2, [vocab * 4 // 15, 5, 513]] = 40.0
    logits[3, vocab // 21] = 40.0
    logits[4, ::2] = -np.inf
    logits[5, :] = 1.0
    logits[6, 7] = 72.0
    logits[7, : vocab // 300] = -np.inf
    uniforms = [safe_uniform(row, inv_temp, rng, gap=1e-6 if r == 5 else BOUNDARY_GAP) for r, row in enumerate(logits)]
    uniforms[3] = 0.5  # lands on the peak
    uniforms[7] = 0.0  # the first possible id, vocab // 300 (exact in any order: the first nonzero term)
    return logits, uniforms


def write_cases(path: Path, logits: np.ndarray, inv_temp: float, uniforms: np.ndarray) -> None:
    """IN file of tests/c/test_sampler_math.cpp and tests/gpu/sampler_cuda_driver.cu."""
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    n_rows, vocab = logits.shape
    with open(path, "wb") as f:
        f.write(struct.pack("<qqf", n_rows, vocab, inv_temp))
        f.write(np.ascontiguousarray(uniforms, dtype=np.float32).tobytes())
        f.write(logits.tobytes())


@dataclass
class DriverResult:
    ok: np.ndarray
    argmax: np.ndarray
    sampled: np.ndarray
    log_z: np.ndarray
    entropy: np.ndarray
    probs: np.ndarray  # [n_rows, V] float32 (the drivers widen f16/bf16 output to float32)


def read_results(path: Path, n_rows: int, vocab: int) -> DriverResult:
    raw = Path(path).read_bytes()
    head = np.frombuffer(raw[: n_rows * 20], dtype=np.dtype([("ok", "<i4"), ("argmax", "<i4"), ("sampled", "<i4"),
                                                            ("log_z", "<f4"), ("entropy", "<f4")]))
    probs = np.frombuffer(raw[n_rows * 20:], dtype=np.float32)
    assert probs.size == n_rows * vocab, f"driver wrote {probs.size} probabilities, expected {n_rows * vocab}"
    return DriverResult(head["ok"].copy(), head["argmax"].copy(), head["sampled"].copy(), head["log_z"].copy(),
                        head["entropy"].copy(), probs.reshape(n_rows, vocab))


def assert_row_statistics(res: DriverResult, r: int, ref: RefStats, u: float, entropy_abs: float) -> None:
    """What every sampler implementation must give for row r: accepted, the reference's argmax and sampled id,
    its log Z and entropy."""
    import pytest

    assert res.ok[r] == 1, f"row {r} rejected"
    assert res.argmax[r] == ref.argmax, f"row {r}: argmax"
    assert res.sampled[r] == ref.sampled, f"row {r}: sampled id for u={u}"
    assert res.log_z[r] == pytest.approx(ref.log_z, rel=1e-6, abs=1e-6), f"row {r}: log_z"
    assert res.entropy[r] == pytest.approx(ref.entropy, rel=1e-4, abs=entropy_abs), f"row {r}: entropy"
