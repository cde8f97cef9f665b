#include "offload/ggml_step_sampler.h"

#include "core/errors.h"
#include "devices/rpc.h"

#include <cmath>
#include <limits>

namespace dg {

namespace {

constexpr int kNodes = 64;  // the sampler graph has ~25

struct SamplerGraph {
    ggml_cgraph * gf = nullptr;
    ggml_tensor * in = nullptr;      // [1 + 2C] f32: T, then u - delta per position, then u + delta
    ggml_tensor * stats = nullptr;   // [5, C] f32 per position: entropy, log Z, count(cdf > u - delta),
                                     // count(cdf > u + delta), count(lg < max)
    ggml_tensor * argmax = nullptr;  // [C] i32
};

enum StatField { kEntropy, kLogZ, kAboveLo, kAboveHi, kBelowMax, kFields };

// The ops of the step (ggml_step_sampler.h lists them); `lg_store` receives logits / T.
SamplerGraph build(ggml_context * ctx, ggml_tensor * logits, ggml_tensor * lg_store) {
    const int64_t V = logits->ne[0];
    const int64_t C = logits->ne[1];
    SamplerGraph g;
    g.gf = ggml_new_graph_custom(ctx, kNodes, false);
    g.in = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 1 + 2 * C);
    ggml_set_input(g.in);
    const size_t f = sizeof(float);
    ggml_tensor * T = ggml_view_2d(ctx, g.in, 1, 1, f, 0);
    ggml_tensor * u_lo = ggml_view_2d(ctx, g.in, 1, C, f, f);
    ggml_tensor * u_hi = ggml_view_2d(ctx, g.in, 1, C, f, (1 + C) * f);
    ggml_tensor * lg = ggml_cpy(ctx, ggml_div(ctx, logits, T), lg_store);
    ggml_tensor * m = ggml_pool_1d(ctx, lg, GGML_OP_POOL_MAX, static_cast<int>(V), static_cast<int>(V), 0);  // [1, C]
    ggml_tensor * d = ggml_sub(ctx, lg, m);
    ggml_tensor * e = ggml_exp(ctx, d);
    ggml_tensor * s = ggml_sum_rows(ctx, e);
    ggml_tensor * t = ggml_sum_rows(ctx, ggml_mul(ctx, e, d));
    ggml_tensor * log_s = ggml_log(ctx, s);
    ggml_tensor * entropy = ggml_sub(ctx, log_s, ggml_div(ctx, t, s));
    ggml_tensor * log_z = ggml_add(ctx, m, log_s);
    ggml_tensor * cdf = ggml_cumsum(ctx, ggml_div(ctx, e, s));
    ggml_tensor * above_lo = ggml_sum_rows(ctx, ggml_step(ctx, ggml_sub(ctx, cdf, u_lo)));
    ggml_tensor * above_hi = ggml_sum_rows(ctx, ggml_step(ctx, ggml_sub(ctx, cdf, u_hi)));
    ggml_tensor * below_max = ggml_sum_rows(ctx, ggml_step(ctx, ggml_neg(ctx, d)));
    g.stats = ggml_concat(ctx, ggml_concat(ctx, ggml_concat(ctx, entropy, log_z, 0), ggml_concat(ctx, above_lo, above_hi, 0), 0),
                          below_max, 0);
    g.argmax = ggml_argmax(ctx, lg);
    ggml_set_output(g.stats);
    ggml_set_output(g.argmax);
    ggml_build_forward_expand(g.gf, g.stats);
    ggml_build_forward_expand(g.gf, g.argmax);
    return g;
}

}  // namespace

bool GgmlStepSampler::runs_on(const Gpu & head) {
    ggml_backend_t backend = gpu_backend_init(head);
    if (backend == nullptr) {
        return false;
    }
    std::vector<uint8_t> meta(ggml_tensor_overhead() * (kNodes + 2) + ggml_graph_overhead_custom(kNodes, false));
    ggml_init_params params = {meta.size(), meta.data(), true};
    ggml_context * ctx = ggml_init(params);
    ggml_tensor * logits = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 8, 4);  // the ops and types matter, not the size
    ggml_tensor * store = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, 8, 4);
    const SamplerGraph g = build(ctx, logits, store);
    bool ok = true;
    for (int i = 0; i < ggml_graph_n_nodes(g.gf) && ok; ++i) {
        ggml_tensor * node = ggml_graph_node(g.gf, i);
        if (!ggml_backend_supports_op(backend, node)) {
            log(DIFFGEMMA_LOG_WARN, "%s cannot run ggml's %s, which the device sampler needs: the host samples",
                head.name.c_str(), ggml_op_desc(node));
            ok = false;
        }
    }
    ggml_free(ctx);
    ggml_backend_free(backend);
    return ok;
}

GgmlStepSampler::GgmlStepSampler(const HParams & hp, const Gpu & head) : n_vocab_(hp.n_vocab) {
    const int64_t V = hp.n_vocab;
    const int64_t C = hp.canvas_length;
    meta_.resize(ggml_tensor_overhead() * kNodes + ggml_graph_overhead_custom(kNodes, false));
    backend_ = gpu_backend_init(head);
    if (backend_ == nullptr) {
        raise(DIFFGEMMA_ERR_BACKEND, "cannot start a backend on %s for the sampler", head.name.c_str());
    }
    ggml_init_params params = {ggml_tensor_overhead(), nullptr, true};
    lg_ctx_ = ggml_init(params);
    if (lg_ctx_ == nullptr) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot create the sampler's context");
    }
    lg_ = ggml_new_tensor_2d(lg_ctx_, GGML_TYPE_F32, V, C);
    ggml_set_name(lg_, "sc_lg");
    {
        GgmlErrorCapture quiet_ggml;
        lg_buf_ = ggml_backend_alloc_ctx_tensors_from_buft(lg_ctx_, gpu_buffer_type(head));
    }
    if (lg_buf_ == nullptr) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot allocate %.1f MiB on %s for the sampler's logits",
              ggml_nbytes(lg_) / 1048576.0, head.name.c_str());
    }
    // Marked as weights: ggml's scheduler then runs the decoder's softmax of lg where lg is, instead of copying
    // lg to wherever that node's neighbours run (a weights buffer pins the ops that read it).
    ggml_backend_buffer_set_usage(lg_buf_, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    galloc_ = ggml_gallocr_new(gpu_buffer_type(head));
    inputs_.resize(static_cast<size_t>(1 + 2 * C));
    stats_.resize(static_cast<size_t>(kFields * C));
    argmax_.resize(static_cast<size_t>(C));
    row_.resize(static_cast<size_t>(V));
}

GgmlStepSampler::~GgmlStepSampler() {
    // The buffers may be on a lost RPC server: a failing free is logged and skipped, never an abort().
    free_remote_quietly([this] {
        if (galloc_ != nullptr) {
            ggml_gallocr_t g = galloc_;
            galloc_ = nullptr;
            ggml_gallocr_free(g);
        }
    });
    free_remote_quietly([this] {
        if (lg_buf_ != nullptr) {
            ggml_backend_buffer_t b = lg_buf_;
            lg_buf_ = nullptr;
            ggml_backend_buffer_free(b);
        }
    });
    if (lg_ctx_ != nullptr) {
        ggml_free(lg_ctx_);
    }
    free_remote_quietly([this] {
        if (backend_ != nullptr) {
            ggml_backend_t b = backend_;
            backend_ = nullptr;
            ggml_backend_free(b);
        }
    });
}

void GgmlStepSampler::step(const ggml_tensor * logits, float temperature, const float * uniforms,
                           std::vector<RowStats> & out) {
    const int64_t V = logits->ne[0];
    const int64_t C = logits->ne[1];
    if (logits->type != GGML_TYPE_F32 || V != lg_->ne[0] || C != lg_->ne[1]) {
        raise(DIFFGEMMA_ERR_INTERNAL, "the device sampler got logits [%lld, %lld], it was made for [%lld, %lld] f32",
              static_cast<long long>(V), static_cast<long long>(C), static_cast<long long>(lg_->ne[0]),
              static_cast<long long>(lg_->ne[1]));
    }
    ggml_init_params params = {meta_.size(), meta_.data(), true};
    ggml_context * ctx = ggml_init(params);
    if (ctx == nullptr) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot create the sampler graph's context");
    }
    struct Free {
        ggml_context * c;
        ~Free() { ggml_free(c); }
    } free_ctx{ctx};
    // The logits as a leaf of this graph: the same memory, without the decoder graph's sources behind it.
    ggml_tensor * leaf = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, V, C);
    leaf->buffer = logits->buffer;
    leaf->data = logits->data;
    for (int i = 0; i < GGML_MAX_DIMS; ++i) {
        leaf->nb[i] = logits->nb[i];
    }
    const SamplerGraph g = build(ctx, leaf, lg_);
    if (!ggml_gallocr_alloc_graph(galloc_, g.gf)) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot allocate the device sampler's compute buffer");
    }
    // delta bounds |float cumsum - exact CDF| (ggml_step_sampler.h); the margin beyond V covers the softmax's
    // own rounding and the host's.
    const float delta = static_cast<float>(static_cast<double>(V + 64) / 16777216.0);
    inputs_[0] = temperature;
    for (int64_t j = 0; j < C; ++j) {
        const float u = uniforms[j];
        inputs_[static_cast<size_t>(1 + j)] = u - delta;
        inputs_[static_cast<size_t>(1 + C + j)] = u + delta;
    }
    ggml_backend_tensor_set(g.in, inputs_.data(), 0, ggml_nbytes(g.in));
    const ggml_status st = ggml_backend_graph_compute(backend_, g.gf);
    if (st != GGML_STATUS_SUCCESS) {
        raise(DIFFGEMMA_ERR_BACKEND, "the device sampler's graph failed (ggml status %d)", static_cast<int>(st));
    }
    ggml_backend_tensor_get(g.stats, stats_.data(), 0, ggml_nbytes(g.stats));
    ggml_backend_tensor_get(g.argmax, argmax_.data(), 0, ggml_nbytes(g.argmax));
    out.assign(static_cast<size_t>(C), RowStats{});
    for (int64_t j = 0; j < C; ++j) {
        const float * s = stats_.data() + j * kFields;
        RowStats & r = out[static_cast<size_t>(j)];
        const bool has_stats = std::isfinite(s[kEntropy]) && std::isfinite(s[kLogZ]) && s[kBelowMax] == static_cast<float>(V - 1);
        if (!has_stats) {
            // A tied maximum or no distribution: the host's exact statistics of this row.
            read_row_stats(j, uniforms[j], r);
            continue;
        }
        const float above = s[kAboveLo];
        r.argmax = argmax_[static_cast<size_t>(j)];
        r.sampled = above == s[kAboveHi] && above >= 1.0f ? static_cast<int32_t>(V - static_cast<int64_t>(above))
                                                          : kSampleUnresolved;
        r.log_z = s[kLogZ];
        r.entropy = s[kEntropy] > 0.0f ? s[kEntropy] : 0.0f;
    }
}

void GgmlStepSampler::resolve(const std::vector<bool> & accepted, const float * uniforms, std::vector<RowStats> & stats) {
    for (size_t j = 0; j < stats.size() && j < accepted.size(); ++j) {
        if (accepted[j] && stats[j].sampled == kSampleUnresolved) {
            RowStats exact;
            read_row_stats(static_cast<int64_t>(j), uniforms[j], exact);
            stats[j].sampled = exact.argmax < 0 ? exact.argmax : exact.sampled;
        }
    }
}

void GgmlStepSampler::read_row_stats(int64_t j, float u, RowStats & r) {
    const int64_t V = lg_->ne[0];
    ggml_backend_tensor_get(lg_, row_.data(), static_cast<size_t>(j) * lg_->nb[1], static_cast<size_t>(V) * sizeof(float));
    ++rows_read_back_;
    if (!row_stats(row_.data(), V, 1.0f, u, &r)) {
        r.argmax = -1;
    }
}

}  // namespace dg
