"""The host sampler's fused statistics pass (csrc/sampler_math.cpp row_stats: max, log-sum-exp, entropy, argmax
and an inverse-CDF sample in one pass) against a naive two-pass libm baseline (max, then sum of expf), on rows
of DiffusionGemma's 262,144-token vocabulary, one thread.

    python bench/sampler_pass.py [--rows 8] [-r 5]

Both sides run back to back in each repetition (tests/c/test_sampler_math.cpp --bench); the ratio is taken
within a repetition, then the median over repetitions, so other load on a shared machine moves both alike.
"""
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_bench import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
V_REAL = 262144


def build(out: Path) -> Path:
    """The driver with the flags CMakeLists.txt gives sampler_math.cpp."""
    cxx = next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if cxx is None:
        sys.exit("no C++ compiler on PATH")
    exe = out / "test_sampler_math"
    subprocess.run([cxx, "-std=gnu++17", "-O3", "-ffp-contract=off", "-fno-trapping-math", "-I", str(REPO / "csrc"),
                    str(REPO / "tests" / "c" / "test_sampler_math.cpp"), str(REPO / "csrc" / "sampler_math.cpp"),
                    "-o", str(exe)], check=True)
    return exe


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8, help="rows of 262,144 logits per repetition (default 8)")
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        exe = build(Path(tmp))
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
