// Attention of one layer as a single ggml custom op on the CPU: softmax(Q K^T + mask) V per head, with GQA.
// ggml's CPU path multiplies the permuted Q/K/V views one dot product at a time and needs a transposed copy
// of V; here each head's K is transposed once into a scratch panel and both products run on AVX-512 register
// tiles (8 queries x 32 keys, then 8 queries x 32 dims), with the softmax in between.
#pragma once

#include "core/kernel_config.h"

#include "ggml.h"

namespace dg {

// True when attention_cpu can replace the mul_mat/soft_max/mul_mat chain: f32 q [D, H, T], k and v [D, Hkv, Nk]
// with H a multiple of Hkv, contiguous rows, an optional f32 mask [Nk, T], and kernels.attention_op (the AVX-512
// tier without DIFFGEMMA_NO_ATTENTION_OP).
bool attention_cpu_applies(const KernelConfig & kernels, const ggml_tensor * q, const ggml_tensor * k,
                           const ggml_tensor * v);

// ggml_custom_op_t: dst [D, H, T] f32 = attention(src[0]=q, src[1]=k, src[2]=v, src[3]=mask or absent) with
// scale 1 (q and k are normalised, spec 4.2). Query head h reads KV head h / (H / Hkv), as HF's repeat_kv.
// Threads split (head, query tile) pairs.
void attention_cpu_kernel(ggml_tensor * dst, int ith, int nth, void * userdata);

}  // namespace dg
