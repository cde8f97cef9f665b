// See sc_topk.h. Per canvas row: one pass for the maximum logit, one for the softmax normaliser over the
// whole vocabulary, one partial selection of the k largest logits (a k-entry heap, so no n_vocab scratch),
// then k rows of the embedding, converted to float, accumulated with their probabilities.
#include "kernels/sc_topk.h"

#include "core/errors.h"
#include "core/vec_math.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace dg {

namespace {

constexpr int kLanes = 16;  // independent partial results, so the reductions vectorise without -ffast-math

struct Candidate {
    float logit;
    int32_t id;
};

DG_VECTOR_CLONES
float row_max(const float * __restrict__ x, int64_t n) {
    float lane[kLanes];
    for (float & v : lane) {
        v = -std::numeric_limits<float>::infinity();
    }
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
            lane[l] = x[i + l] > lane[l] ? x[i + l] : lane[l];
        }
    }
    float m = -std::numeric_limits<float>::infinity();
    for (float v : lane) {
        m = v > m ? v : m;
    }
    for (; i < n; ++i) {
        m = x[i] > m ? x[i] : m;
    }
    return m;
}

// sum_i exp(x_i * scale - shift), with shift = max_i(x_i) * scale (the same order of operations as
// ggml_soft_max_ext: scale first, then subtract the scaled maximum).
DG_VECTOR_CLONES
float row_sum_exp(const float * __restrict__ x, int64_t n, float scale, float shift) {
    float lane[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        for (int l = 0; l < kLanes; ++l) {
            lane[l] += exp_nonpositive(x[i + l] * scale - shift);
        }
    }
    float sum = 0.0f;
    for (float v : lane) {
        sum += v;
    }
    for (; i < n; ++i) {
        sum += exp_nonpositive(x[i] * scale - shift);
    }
    return sum;
}

DG_VECTOR_CLONES
void axpy(float * __restrict__ y, const float * __restrict__ x, float a, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        y[i] += a * x[i];
    }
}

inline void prefetch_row(const char * row, size_t bytes) {
    for (size_t off = 0; off < bytes; off += 64) {
        __builtin_prefetch(row + off);
    }
}

// Heap order with the weakest kept candidate at the front: a lower logit, or on equal logits the higher id
// (ties go to the lower id, so the kept set does not depend on the thread count or the scan order).
bool ranks_higher(const Candidate & a, const Candidate & b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// The k largest logits of x[0..n), in ascending id order (the embedding rows are then read in file order).
void select_top_k(const float * x, int32_t n, int32_t k, std::vector<Candidate> & kept) {
    kept.clear();
    if (k >= n) {
        for (int32_t i = 0; i < n; ++i) {
            kept.push_back({x[i], i});
        }
        return;
    }
    for (int32_t i = 0; i < k; ++i) {
        kept.push_back({x[i], i});
    }
    std::make_heap(kept.begin(), kept.end(), ranks_higher);
    for (int32_t i = k; i < n; ++i) {
        // Ids grow during the scan, so an equal logit never outranks the front: '>' is the exact test.
        if (x[i] > kept.front().logit) {
            std::pop_heap(kept.begin(), kept.end(), ranks_higher);
            kept.back() = {x[i], i};
            std::push_heap(kept.begin(), kept.end(), ranks_higher);
        }
    }
    std::sort(kept.begin(), kept.end(), [](const Candidate & a, const Candidate & b) { return a.id < b.id; });
}

}  // namespace

ggml_tensor * sc_topk_soft_embedding(ggml_context * ctx, ggml_tensor * sc_logits, ggml_tensor * tok_embd,
                                     const ScTopkParams * params) {
    if (tok_embd->type != GGML_TYPE_F32 && ggml_get_type_traits(tok_embd->type)->to_float == nullptr) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_TYPE,
              "the top-k self-conditioning cannot read a token embedding of type %s (no float conversion); "
              "use sc_top_k = 0 (exact)", ggml_type_name(tok_embd->type));
    }
    ggml_tensor * args[2] = {sc_logits, tok_embd};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, tok_embd->ne[0], sc_logits->ne[1], 1, 1, args, 2, sc_topk_kernel,
                          GGML_N_TASKS_MAX, const_cast<ScTopkParams *>(params));
}

void sc_topk_kernel(ggml_tensor * dst, int ith, int nth, void * userdata) {
    const ScTopkParams & p = *static_cast<const ScTopkParams *>(userdata);
    const ggml_tensor * logits = dst->src[0];
    const ggml_tensor * embd = dst->src[1];
    const int64_t n_embd = embd->ne[0];
    const int32_t n_vocab = static_cast<int32_t>(logits->ne[0]);
    const int64_t n_rows = logits->ne[1];
    const ggml_to_float_t to_float = embd->type == GGML_TYPE_F32 ? nullptr : ggml_get_type_traits(embd->type)->to_float;

    // Per-thread scratch, kept across calls (ggml's worker threads live as long as the context).
    thread_local std::vector<Candidate> kept;
    thread_local std::vector<float> row_buf;
    thread_local std::vector<float> weights;
    row_buf.resize(static_cast<size_t>(n_embd));

    for (int64_t r = n_rows * ith / nth; r < n_rows * (ith + 1) / nth; ++r) {
        const auto * x = reinterpret_cast<const float *>(static_cast<const char *>(logits->data) + r * logits->nb[1]);
        auto * out = reinterpret_cast<float *>(static_cast<char *>(dst->data) + r * dst->nb[1]);
        const float shift = row_max(x, n_vocab) * p.scale;
        const float inv_z = 1.0f / row_sum_exp(x, n_vocab, p.scale, shift);
        select_top_k(x, n_vocab, p.k, kept);

        weights.resize(kept.size());
        float kept_mass = 0.0f;
        for (size_t j = 0; j < kept.size(); ++j) {
            weights[j] = exp_nonpositive(kept[j].logit * p.scale - shift) * inv_z;
            kept_mass += weights[j];
        }
        if (p.renormalize && kept_mass > 0.0f) {
            for (float & wj : weights) {
                wj /= kept_mass;
            }
        }

        std::memset(out, 0, sizeof(float) * static_cast<size_t>(n_embd));
        const auto row_of = [&](size_t j) {
            return static_cast<const char *>(embd->data) + static_cast<size_t>(kept[j].id) * embd->nb[1];
        };
        for (size_t j = 0; j < kept.size(); ++j) {
            const char * src = row_of(j);
            if (j + 1 < kept.size()) {
                prefetch_row(row_of(j + 1), embd->nb[1]);  // rows are scattered over the table: hide the latency
            }
            const float * row = reinterpret_cast<const float *>(src);
            if (to_float != nullptr) {
                to_float(src, row_buf.data(), n_embd);
                row = row_buf.data();
            }
            axpy(out, row, weights[j], n_embd);
        }
    }
}

}  // namespace dg
