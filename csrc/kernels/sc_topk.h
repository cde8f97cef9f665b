// Top-k approximation of the self-conditioning product (spec 6): per canvas row, keep only the k largest
// probabilities of softmax(sc_logits * scale) and sum those rows of the token embedding, instead of the
// full probs [C, V] @ E [V, n_embd] product (a GEMM over the whole vocabulary).
//
// The kept probabilities are the exact ones (normalised over the whole vocabulary); with `renormalize` they
// are rescaled to sum to 1. Opt-in through diffgemma_context_params.sc_top_k; exact is the default.
#pragma once

#include "ggml.h"

#include <cstdint>

namespace dg {

struct ScTopkParams {
    int32_t k = 0;             // probabilities kept per canvas row, 1 .. n_vocab (k >= n_vocab keeps all)
    bool renormalize = false;  // divide the kept probabilities by their sum
    float scale = 1.0f;        // softmax input scale (> 0), as ggml_soft_max_ext's
};

// Builds the node soft [n_embd, C] f32 = sum over each row's top-k of p_j * E[id_j], from
// sc_logits [n_vocab, C] f32 and tok_embd [n_embd, n_vocab] of any type ggml can convert to float.
// `params` must outlive the graph's compute. Throws dg::Error for a token embedding type without a
// float conversion.
ggml_tensor * sc_topk_soft_embedding(ggml_context * ctx, ggml_tensor * sc_logits, ggml_tensor * tok_embd,
                                     const ScTopkParams * params);

// The ggml custom-op kernel behind sc_topk_soft_embedding (threaded over canvas rows).
void sc_topk_kernel(ggml_tensor * dst, int ith, int nth, void * userdata);

}  // namespace dg
