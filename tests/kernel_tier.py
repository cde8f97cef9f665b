"""Which of our CPU kernels run in this process (csrc/core/cpu_isa.h), for tests whose bounds depend on it."""
import os
from pathlib import Path


def cpu_flags() -> str:
    """The flags line(s) of /proc/cpuinfo ("" where there is none)."""
    info = Path("/proc/cpuinfo")
    return info.read_text() if info.exists() else ""


def kernel_tier() -> str:
    """"avx512" (all our kernels), "avx2" (the f32 GEMM for f32, f16, bf16 and NVFP4 weights; other quantized
    weights use ggml's int8 kernels) or "none", after the DIFFGEMMA_NO_GEMM / DIFFGEMMA_CPU_ISA switches."""
    flags = cpu_flags()
    if os.environ.get("DIFFGEMMA_NO_GEMM", "0") not in ("", "0"):
        return "none"
    if " avx512f" in flags and os.environ.get("DIFFGEMMA_CPU_ISA") != "avx2":
        return "avx512"
    return "avx2" if " avx2" in flags and " fma" in flags else "none"
