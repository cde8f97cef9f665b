// See kernel_config.h. The only getenv calls of the library are in this file.
#include "core/kernel_config.h"


#include <cstdlib>
#include <cstring>

namespace dg {

namespace {

// True when the switch is set to something other than "" or "0".
bool switch_on(const char * name) {
    const char * v = std::getenv(name);
    return v != nullptr && v[0] != '\0' && v[0] != '0';
}

}  // namespace

KernelConfig kernel_config_from_env() {
    KernelConfig k;
    k.isa = switch_on("DIFFGEMMA_NO_GEMM") ? CpuIsa::kNone : cpu_tier();
    const char * cap = std::getenv("DIFFGEMMA_CPU_ISA");
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && k.isa == CpuIsa::kAvx512) {
        k.isa = CpuIsa::kAvx2;
    }
    k.bf16 = k.isa == CpuIsa::kAvx512 && cpu_has_avx512_bf16() && !switch_on("DIFFGEMMA_NO_BF16");
    k.row_gemm = !switch_on("DIFFGEMMA_NO_ROW_GEMM");
    k.attention_op = k.isa == CpuIsa::kAvx512 && !switch_on("DIFFGEMMA_NO_ATTENTION_OP");
    k.device_sampler = !switch_on("DIFFGEMMA_HOST_SAMPLER");
    return k;
}

const GemmOp * gemm_op(const KernelConfig & kernels, GemmActivations activations) {
    // Every combination, made once: [isa][bf16][row_gemm][attention_op][activations].
    static GemmOp table[3][2][2][2][3] = {};
    static const bool filled = [] {
        for (int i = 0; i < 3; ++i) {
            for (int b = 0; b < 2; ++b) {
                for (int r = 0; r < 2; ++r) {
                    for (int a = 0; a < 2; ++a) {
                        for (int act = 0; act < 3; ++act) {
                            GemmOp & op = table[i][b][r][a][act];
                            op.kernels = {static_cast<CpuIsa>(i), b != 0, r != 0, a != 0};
                            op.activations = static_cast<GemmActivations>(act);
                        }
                    }
                }
            }
        }
        return true;
    }();
    (void) filled;
    return &table[static_cast<int>(kernels.isa)][kernels.bf16][kernels.row_gemm][kernels.attention_op]
                 [static_cast<int>(activations)];
}

const char * test_hook(const char * name) {
    const char * v = std::getenv(name);
    return v != nullptr && v[0] != '\0' ? v : nullptr;
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
