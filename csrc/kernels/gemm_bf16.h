// The bf16 dot-product path of our CPU GEMM (gemm_f32.h) for quantized and bf16 weights. Such weights (q4_K,
// q6_K, q8_0, ...) hold 4-8 bit codes, so rounding their dequantized values to bf16 (8-bit significand) adds
// little to their own rounding error, while AVX512_BF16's VDPBF16PS does two
// multiply-adds per f32 lane: twice the f32 FMA rate. Accumulation stays f32. f32 and f16 weights never
// come here: they keep the f32 path (HF parity of the F32 and F16 files).
#pragma once

#include "core/kernel_config.h"

#include "ggml.h"

#include <cstdint>

namespace dg {

// True when the products of w should take the bf16 path: w is neither f32 nor (unless f16_too) f16,
// K is even, and the kernel config allows it (kernels.bf16: an AVX512_BF16 CPU without DIFFGEMMA_NO_BF16, the
// switch that forces the f32 path for A/B and parity checks).
bool gemm_bf16_wanted(const KernelConfig & kernels, const ggml_tensor * w, bool f16_too = false);

// c_rows[i][n] = sum_k w[n][k] * x_rows[i][k] for i < n_rows and the output features n of the 32-row
// panels p_first, p_first + p_step, ... < p_end. The caller has checked gemm_bf16_wanted(w) and that w's rows
// are contiguous blocks (gemm_f32.cpp's packable()).
void gemm_bf16_panels(const ggml_tensor * w, int64_t p_first, int64_t p_step, int64_t p_end, const float * const * x_rows,
                      float * const * c_rows, int64_t n_rows);

// The same products for few tokens (an MoE expert's ~16): each weight row dequantized to bf16 in K order, a
// 4-row x 4-token tile of dot products, no transposed panel (gemm_bf16_rows.cpp). Same panels, same inputs
// to the products as gemm_bf16_panels; only the f32 summation order differs. Holds the n_rows bf16 token rows
// in a per-thread buffer: meant for small n_rows (gemm_bf16_rows_max_tokens). As for the panels, the caller has
// checked gemm_bf16_wanted(w) (the kernel is AVX512_BF16 code) and packable().
void gemm_bf16_rows(const ggml_tensor * w, int64_t p_first, int64_t p_step, int64_t p_end, const float * const * x_rows,
                    float * const * c_rows, int64_t n_rows);

// The most tokens gemm_bf16_rows should multiply (128: up to there it beats or matches the panels at the
// released expert shapes, measured with tests/c/test_gemm.cpp bench-id); 0 in a build without the kernel. The
// caller skips the row tiles when its KernelConfig::row_gemm is off (DIFFGEMMA_NO_ROW_GEMM=1, the A/B switch).
int64_t gemm_bf16_rows_max_tokens();

// dst[0..n) = bf16(src[0..n)), round to nearest even (the activations' rounding of both bf16 kernels), n even.
void round_to_bf16(const float * src, int64_t n, uint16_t * dst);

}  // namespace dg
