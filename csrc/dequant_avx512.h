// Row dequantizers (to f32) for the GEMM's weight packer, for the types where ggml's to_float is the
// bottleneck: the libggml wheel's base library is built for generic x86-64, where its f16 conversion and
// q6_K unpacking run at ~0.5-0.75 ns per value, as much as the bf16 multiply-adds of a 32-token expert panel
// (q4_K's was 11% of a 1-thread Q4_K_M step in perf).
// Same results as ggml's, value for value (tests/test_gemm.py checks them bit for bit).
#pragma once

#include "ggml.h"

namespace dg {

// Our AVX-512 dequantizer for w's type where we have one and the CPU runs it, else ggml's to_float.
ggml_to_float_t fast_to_float(ggml_type type);

}  // namespace dg
