// Which of our CPU kernels may run: the instruction set of this CPU, capped by the A/B switches.
//
// DIFFGEMMA_NO_GEMM=1 turns all of them off (ggml's own kernels run); DIFFGEMMA_CPU_ISA=avx2 caps them at
// the AVX2 tier, so the AVX2 code is tested on AVX-512 machines too.
#pragma once

namespace dg {

enum class CpuIsa : int {
    kNone = 0,    // ggml's kernels only
    kAvx2 = 1,    // AVX2 + FMA: the f32 GEMM (f32, f16, bf16 and NVFP4 weights)
    kAvx512 = 2,  // AVX-512F: every kernel (GEMM of any type, attention op, bf16 path where AVX512_BF16)
};

// The CPU is probed once; the two environment switches are read on every call. Read it once per kernel
// call (not per panel): it is a getenv.
CpuIsa kernel_isa();

// True when the CPU runs AVX-512 F/BW/VL with AVX512_BF16: what the bf16 GEMM kernels and the bf16 dequantizers
// need (probed once; the switches above are for the caller to check with kernel_isa).
bool cpu_has_avx512_bf16();

// Which of our kernels run now, for `diffgemma-cpp info`: "AVX-512 BF16", "AVX-512", "AVX2" or "none", with
// what each covers.
const char * kernel_tier_description();

// True when the environment variable is set to something other than "" or "0" (our A/B switches).
bool env_flag(const char * name);

}  // namespace dg
