// See cpu_isa.h.
#include "core/cpu_isa.h"

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

}  // namespace dg
