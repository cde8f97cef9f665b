// A float32 matrix product for the CPU backend, run as a ggml custom op in place of ggml_mul_mat: ggml's own
// f32 path is a row-by-row dot product (two loads per FMA), which reaches a fraction of the FMA units'
// throughput. This one packs 32 weight rows per K block transposed (one 64-byte load serves 16 output
// features) and keeps a 6-token x 32-feature tile of accumulators in registers. Weights of other types
// (f16, q8_0, q4_K, ...) are dequantized while packing; f32 and f16 weights multiply f32 activations,
// quantized and bf16 weights take the bf16 dot-product path (gemm_bf16.h), unless the node says otherwise
// (GemmActivations). Which tier runs is the context's kernel config (kernel_config.h), passed in by the graph
// builder and, as a GemmOp, by the node's userdata.
#pragma once

#include "core/kernel_config.h"

#include "ggml.h"

namespace dg {

// True when dst = gemm_f32(w, x) can replace ggml_mul_mat(w, x): 2-D operands with contiguous rows, w of
// f32 or a type ggml dequantizes (blocks dividing 256), x f32,
// enough rows of x to fill the register tile, and a kernel tier (kernels.isa) that takes w's type.
bool gemm_f32_applies(const KernelConfig & kernels, const ggml_tensor * w, const ggml_tensor * x);

// ggml_custom_op_t: dst[t][n] = sum_k w[n][k] * x[t][k] with w = dst->src[0] [K, N], x = dst->src[1] [K, T],
// dst [N, T] contiguous (ggml_mul_mat's layout). Threads split the output features. userdata: a const GemmOp *
// (gemm_op(), never nullptr) whose kernels made gemm_f32_applies true.
void gemm_f32_kernel(ggml_tensor * dst, int ith, int nth, void * userdata);

// The same for ggml_mul_mat_id (MoE experts): as [K, N, n_expert] f32, b [K, 1 or n_used, T] f32,
// ids [n_used, T] i32 -> dst [N, n_used, T]; each expert's panels multiply the rows routed to it (on the bf16
// path, an expert with few rows takes gemm_bf16_rows' untransposed row tiles instead).
bool gemm_f32_id_applies(const KernelConfig & kernels, const ggml_tensor * as, const ggml_tensor * b,
                         const ggml_tensor * ids);
void gemm_f32_id_kernel(ggml_tensor * dst, int ith, int nth, void * userdata);

}  // namespace dg
