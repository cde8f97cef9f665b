"""A CPU stand-in for tests/gpu/sampler_cuda_driver.cu's file mode (IN OUT [f16|bf16|bf16x] [PAD]), so the checks of
tests/gpu/test_sampler_cuda.py can run without a GPU (tests/test_gpu_sampler_checks_on_host.py):

* argmax / sampled / log_z / entropy come from the kernel emulated on the host (tests/c/test_sampler_math.cpp
  --emulate-device: the kernel's reduction arithmetic and its CDF walk);
* the probabilities are computed the way the kernels compute them (float exp(x - log_z), or the bf16-rounded
  logits normalised by their own log Z) and rounded to f16 / bf16 to nearest-even, as __float2half_rn and
  __float2bfloat16_rn do, then widened to float like the real driver.

A check that a correct kernel cannot pass therefore fails on the CPU, before a GPU session is spent on it.
Usage: python emulated_sampler_driver.py HOST_DRIVER IN OUT [f16|bf16|bf16x] [PAD] (PAD only moves device rows)."""
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sampler_reference import bf16_round, read_results  # noqa: E402


def kernel_probs(x: np.ndarray, log_z: float, mode: str) -> np.ndarray:
    """One row of what dg_cuda_sampler_write_probs writes, widened to float (zeros for a row without a distribution)."""
    with np.errstate(over="ignore", invalid="ignore"):
        if mode == "bf16x":
            xb = bf16_round(x)
            if np.isnan(xb).any() or (xb == np.inf).any() or (xb == -np.inf).all():
                return np.zeros_like(x)
            m = xb.max()
            lz = np.float32(m + np.log(np.exp(xb.astype(np.float64) - m).sum()))
            return bf16_round(np.exp((xb - lz).astype(np.float32)))
        if not np.isfinite(log_z):
            return np.zeros_like(x)
        p = np.exp((x - np.float32(log_z)).astype(np.float32)).astype(np.float32)
        return p.astype(np.float16).astype(np.float32) if mode == "f16" else bf16_round(p)


def main(host_driver: str, src: str, dst: str, mode: str = "bf16", pad: str = "0") -> int:
    del pad  # row padding changes device addresses only
    with tempfile.TemporaryDirectory() as tmp:
        stats_path = Path(tmp) / "stats.bin"
        subprocess.run([host_driver, "--emulate-device", src, str(stats_path)], check=True)
        raw = Path(src).read_bytes()
        n_rows, vocab, inv_temp = struct.unpack("<qqf", raw[:20])
        logits = np.frombuffer(raw[20 + 4 * n_rows:], dtype=np.float32).reshape(n_rows, vocab)
        res = read_results(stats_path, n_rows, vocab)
    x = (logits * np.float32(inv_temp)).astype(np.float32)
    with open(dst, "wb") as f:
        for r in range(n_rows):
            f.write(struct.pack("<iiiff", int(res.ok[r]), int(res.argmax[r]), int(res.sampled[r]), float(res.log_z[r]),
                                float(res.entropy[r])))
        for r in range(n_rows):
            f.write(kernel_probs(x[r], float(res.log_z[r]), mode).astype(np.float32).tobytes())
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
