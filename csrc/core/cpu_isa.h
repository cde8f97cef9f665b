// What this CPU can run, probed once (the kernel config, kernel_config.h, caps it by the A/B switches).
#pragma once


namespace dg {

enum class CpuIsa : int {
    kNone = 0,    // ggml's kernels only
    kAvx2 = 1,    // AVX2 + FMA: the f32 GEMM (f32, f16, bf16 and NVFP4 weights)
    kAvx512 = 2,  // AVX-512F: every kernel (GEMM of any type, attention op, bf16 path where AVX512_BF16)
};

// The highest tier of our kernels this CPU runs (probed once).
CpuIsa cpu_tier();

// True when the CPU runs AVX-512 F/BW/VL with AVX512_BF16: what the bf16 GEMM kernels and the bf16 dequantizers
// need (probed once).
bool cpu_has_avx512_bf16();

}  // namespace dg
