// See cpu_isa.h.
#include "cpu_isa.h"

namespace dg {

CpuIsa cpu_tier() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const CpuIsa tier = __builtin_cpu_supports("avx512f")                                      ? CpuIsa::kAvx512
                               : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? CpuIsa::kAvx2
                                                                                                  : CpuIsa::kNone;
    return tier;
#else
    return CpuIsa::kNone;
#endif
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
    return has;
#else
    return false;
#endif
}

const char * kernel_tier_description(const KernelConfig & kernels) {
    switch (kernels.isa) {
        case CpuIsa::kAvx512:
            return kernels.bf16 ? "AVX-512 BF16 (every weight type; quantized and bf16 weights through VDPBF16PS)"
                                : "AVX-512 (every weight type, f32 products)";
        case CpuIsa::kAvx2:
            return "AVX2 (f32/f16/bf16 and NVFP4 weights; other quantized weights and attention use ggml's kernels)";
        case CpuIsa::kNone:
            break;
    }
    return "none (ggml's kernels only)";
}

}  // namespace dg
