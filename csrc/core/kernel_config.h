// Which of our CPU kernels a context runs, settled once when the context is made: the CPU's features capped
// by the A/B switches of the environment. The graph builder reads it to choose each node's op, and the GEMM
// nodes carry it (with their rounding, GemmOp) as their custom op's userdata, so no kernel reads the
// environment, and a switch flipped after a context was made applies to the next context only.
//
// This file is also the one place that reads the environment at all: the A/B switches here, and the test
// hooks (test_hook) for gpu_devices.cpp, compute_threads.cpp and the stand-in GPU graph (tests/test_code_rules.py
// checks that no other C source calls getenv).
#pragma once

#include "core/cpu_isa.h"

#include <cstdint>

namespace dg {

struct KernelConfig {
    CpuIsa isa = CpuIsa::kNone;  // our GEMM's tier (DIFFGEMMA_NO_GEMM=1: kNone; DIFFGEMMA_CPU_ISA=avx2 caps it)
    bool bf16 = false;           // quantized and bf16 weights multiply bf16 activations (gemm_bf16.h): an AVX-512
                                 // CPU with AVX512_BF16, unless DIFFGEMMA_NO_BF16=1
    bool row_gemm = false;       // MoE experts with few tokens take the row tiles (gemm_bf16_rows.cpp), unless
                                 // DIFFGEMMA_NO_ROW_GEMM=1
    bool attention_op = false;   // our attention op (attention_cpu.h): the AVX-512 tier, unless
                                 // DIFFGEMMA_NO_ATTENTION_OP=1
    bool device_sampler = true;  // a head on a device without our CUDA kernels samples there with ggml ops
                                 // (ggml_step_sampler.h), unless DIFFGEMMA_HOST_SAMPLER=1 reads the logits back
};

// The CPU's tier and the A/B switches of the environment now (README: "A/B switches").
KernelConfig kernel_config_from_env();

// Which of our kernels a context with this config runs, for `diffgemma-cpp info`: "AVX-512 BF16", "AVX-512",
// "AVX2" or "none", with what each covers.
const char * kernel_tier_description(const KernelConfig & kernels);

// How a GEMM node may round its activations (gemm_f32.h).
enum class GemmActivations : int {
    kAuto,  // bf16 for quantized and bf16 weights (gemm_bf16.h); f32 for f32 and f16 weights
    kF32,   // never rounded: the products whose rounding the model amplifies (graph.cpp: attention q/k)
    kBf16,  // bf16 for f16 weights too: the SC product of a quantized file, whose f16 embedding copy holds
            // quantized values anyway
};

// The userdata of a GEMM node: the context's kernels and the node's rounding.
struct GemmOp {
    KernelConfig kernels;
    GemmActivations activations = GemmActivations::kAuto;
};

// A GemmOp with static storage for (kernels, activations): it outlives every graph that points at it.
const GemmOp * gemm_op(const KernelConfig & kernels, GemmActivations activations);

// The value of a test hook (never set in production), or nullptr when unset or empty: DIFFGEMMA_TEST_GPU_MIB,
// stand-in GPUs (gpu_devices.h); DIFFGEMMA_TEST_GPU_GRAPH, the real GPU's graph on the stand-in (model.h);
// DIFFGEMMA_TEST_OTHER_TASKS, a fixed machine load (compute_threads.h).
const char * test_hook(const char * name);

}  // namespace dg
