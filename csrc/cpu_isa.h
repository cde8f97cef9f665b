// What this CPU can run, probed once (the kernel config, kernel_config.h, caps it by the A/B switches).
#pragma once

#include "kernel_config.h"

namespace dg {

// The highest tier of our kernels this CPU runs (probed once).
CpuIsa cpu_tier();

// True when the CPU runs AVX-512 F/BW/VL with AVX512_BF16: what the bf16 GEMM kernels and the bf16 dequantizers
// need (probed once).
bool cpu_has_avx512_bf16();

// Which of our kernels a context with this config runs, for `diffgemma-cpp info`: "AVX-512 BF16", "AVX-512",
// "AVX2" or "none", with what each covers.
const char * kernel_tier_description(const KernelConfig & kernels);

}  // namespace dg
