// See cpu_isa.h.
#include "kernels/cpu_isa.h"

#include <cstdlib>
#include <cstring>

namespace dg {

bool env_flag(const char * name) {
    const char * v = std::getenv(name);
    return v != nullptr && v[0] != '\0' && v[0] != '0';
}

namespace {

// What the CPU can run, detected once.
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

}  // namespace

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
    return has;
#else
    return false;
#endif
}

CpuIsa kernel_isa() {
    // The switches are read on every call (a getenv per graph node): tests and benchmarks flip them between
    // passes of one process.
    if (env_flag("DIFFGEMMA_NO_GEMM")) {
        return CpuIsa::kNone;
    }
    const char * cap = std::getenv("DIFFGEMMA_CPU_ISA");
    const CpuIsa tier = cpu_tier();
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && tier == CpuIsa::kAvx512) {
        return CpuIsa::kAvx2;
    }
    return tier;
}

const char * kernel_tier_description() {
    switch (kernel_isa()) {
        case CpuIsa::kAvx512:
            return cpu_has_avx512_bf16() && !env_flag("DIFFGEMMA_NO_BF16")
                       ? "AVX-512 BF16 (every weight type; quantized and bf16 weights through VDPBF16PS)"
                       : "AVX-512 (every weight type, f32 products)";
        case CpuIsa::kAvx2:
            return "AVX2 (f32/f16/bf16 and NVFP4 weights; other quantized weights and attention use ggml's kernels)";
        case CpuIsa::kNone:
            break;
    }
    return "none (ggml's kernels only)";
}

}  // namespace dg
