"""The host sampler's fused statistics pass (csrc/kernels/sampler_math.cpp row_stats: max, log-sum-exp, entropy, argmax
and an inverse-CDF sample in one pass) against a naive two-pass libm baseline (max, then sum of expf), on rows
of DiffusionGemma's 262,144-token vocabulary, one thread.

    python bench/sampler_pass.py [--rows 8] [-r 5]

Both sides run back to back in each repetition (tests/c/test_sampler_math.cpp --bench); the ratio is taken
within a repetition, then the median over repetitions, so other load on a shared machine moves both alike.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import c_driver  # noqa: E402
from run_bench import machine  # noqa: E402

V_REAL = 262144


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8, help="rows of 262,144 logits per repetition (default 8)")
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            exe = c_driver.build_sampler_driver(Path(tmp))
        except c_driver.Unavailable as exc:
            sys.exit(str(exc))
        fused, naive, ratio = [], [], []
        for _ in range(args.repetitions):
            out = subprocess.run([str(exe), "--bench", str(V_REAL), str(args.rows)], check=True, capture_output=True,
                                 text=True).stdout
            f = float(re.search(r" ns_per_element=([\d.]+)", out).group(1))
            n = float(re.search(r"naive_expf_ns_per_element=([\d.]+)", out).group(1))
            fused.append(f)
            naive.append(n)
            ratio.append(n / f)
    print(f"Machine: {machine()}")
    print(f"fused pass {statistics.median(fused):.2f} ns/element [{min(fused):.2f}..{max(fused):.2f}], "
          f"naive libm {statistics.median(naive):.2f} ns/element [{min(naive):.2f}..{max(naive):.2f}]; "
          f"fused is {statistics.median(ratio):.2f}x faster [{min(ratio):.2f}..{max(ratio):.2f}] "
          f"({args.repetitions} repetitions of {args.rows} rows of {V_REAL})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
