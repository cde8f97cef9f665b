// Row dequantizers (to f32, and for q4_K / q8_0 straight to bf16 for the experts' row tiles) for the GEMM, for the types where ggml's to_float is the
// bottleneck: the libggml wheel's base library is built for generic x86-64, where its f16 conversion and
// q6_K unpacking run at ~0.5-0.75 ns per value, as much as the bf16 multiply-adds of a 32-token expert panel
// (q4_K's was 11% of a 1-thread Q4_K_M step in perf).
// Same results as ggml's, value for value (tests/test_gemm.py checks them bit for bit).
#pragma once

#include "ggml.h"

#include <cstdint>

namespace dg {

// Our AVX-512 dequantizer for w's type where we have one and the CPU runs it, else ggml's to_float.
ggml_to_float_t fast_to_float(ggml_type type);

// Dequantizes n values (whole blocks) of a row to bf16, rounded to nearest even: bf16(to_float(x)) bit for bit.
using to_bf16_t = void (*)(const void * src, uint16_t * dst, int64_t n);

// Our direct bf16 dequantizer for the type (q4_K, q8_0: the MoE experts of a Q4_K_M file) where the CPU has
// AVX512_BF16, else nullptr (dequantize with fast_to_float and round).
to_bf16_t fast_to_bf16(ggml_type type);

}  // namespace dg
