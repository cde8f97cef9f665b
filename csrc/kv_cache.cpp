#include "kv_cache.h"

#include "errors.h"

namespace dg {

KvCache::~KvCache() {
    if (buf_ != nullptr) {
        ggml_backend_buffer_free(buf_);
    }
    if (ctx_ != nullptr) {
        ggml_free(ctx_);
    }
}

void KvCache::init(const HParams & hp, int32_t n_ctx, ggml_type type, ggml_backend_buffer_type_t buft) {
    n_ctx_ = n_ctx;
    type_ = type;
    ggml_init_params params = {ggml_tensor_overhead() * static_cast<size_t>(2 * hp.n_layer + 2), nullptr, true};
    ctx_ = ggml_init(params);
    if (ctx_ == nullptr) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot create the KV cache context");
    }
    for (int il = 0; il < hp.n_layer; ++il) {
        const int64_t D = hp.head_dim(il);
        const int64_t kv = hp.n_head_kv[il];
        k_.push_back(ggml_new_tensor_3d(ctx_, type, D, kv, n_ctx));
        v_.push_back(ggml_new_tensor_3d(ctx_, type, D, kv, n_ctx));
        ggml_format_name(k_.back(), "cache_k_l%d", il);
        ggml_format_name(v_.back(), "cache_v_l%d", il);
    }
    size_t need = 0;
    for (int il = 0; il < hp.n_layer; ++il) {
        need += ggml_nbytes(k_[il]) + ggml_nbytes(v_[il]);
    }
    {
        // A failed allocation is reported once, by the error below; ggml's own three log lines about it would
        // only repeat it on stderr (a log callback still receives them).
        GgmlErrorCapture quiet_ggml;
        buf_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_, buft);
    }
    if (buf_ == nullptr) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY,
              "cannot allocate the KV cache: %.1f MiB for n_ctx=%d (hint: a smaller n_ctx or an f16 cache)",
              need / 1048576.0, n_ctx);
    }
    ggml_backend_buffer_set_usage(buf_, GGML_BACKEND_BUFFER_USAGE_COMPUTE);
}

size_t KvCache::bytes() const { return buf_ ? ggml_backend_buffer_get_size(buf_) : 0; }

ggml_tensor * KvCache::view(ggml_context * ctx, ggml_tensor * t, int32_t begin, int32_t end) {
    return ggml_view_3d(ctx, t, t->ne[0], t->ne[1], end - begin, t->nb[1], t->nb[2], static_cast<size_t>(begin) * t->nb[2]);
}

ggml_tensor * KvCache::k_view(ggml_context * ctx, int il, int32_t begin, int32_t end) const {
    return view(ctx, k_[static_cast<size_t>(il)], begin, end);
}

ggml_tensor * KvCache::v_view(ggml_context * ctx, int il, int32_t begin, int32_t end) const {
    return view(ctx, v_[static_cast<size_t>(il)], begin, end);
}

}  // namespace dg
