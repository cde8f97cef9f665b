// See cpu_isa.h.
#include "cpu_isa.h"

#include <cstdlib>
#include <cstring>

namespace dg {

namespace {

bool env_flag(const char * name) {
    const char * v = std::getenv(name);
    return v != nullptr && v[0] != '\0' && v[0] != '0';
}

CpuIsa detect() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (env_flag("DIFFGEMMA_NO_GEMM")) {
        return CpuIsa::kNone;
    }
    const char * cap = std::getenv("DIFFGEMMA_CPU_ISA");
    const bool cap_avx2 = cap != nullptr && std::strcmp(cap, "avx2") == 0;
    if (!cap_avx2 && __builtin_cpu_supports("avx512f")) {
        return CpuIsa::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return CpuIsa::kAvx2;
    }
#endif
    return CpuIsa::kNone;
}

}  // namespace

CpuIsa kernel_isa() {
    static const CpuIsa isa = detect();
    return isa;
}

}  // namespace dg
