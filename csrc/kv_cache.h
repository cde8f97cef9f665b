// The encoder's KV cache: per layer, K (k_norm'd, RoPE'd) and V (v_norm'd) of every clean token.
//
// Layout per layer: [head_dim, n_kv_head, n_ctx] so a range of positions is one contiguous view.
// Sliding layers are only ever read over their last n_swa-1 positions (spec 4.3); they are stored at full
// length for now, which keeps chunked encoding simple.
#pragma once

#include "hparams.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <vector>

namespace dg {

class KvCache {
  public:
    KvCache() = default;
    KvCache(const KvCache &) = delete;
    KvCache & operator=(const KvCache &) = delete;
    ~KvCache();

    // Allocates n_ctx positions of every layer in `type` (F32 or F16). Throws dg::Error.
    void init(const HParams & hp, int32_t n_ctx, ggml_type type, ggml_backend_buffer_type_t buft);

    int32_t n_ctx() const { return n_ctx_; }
    ggml_type type() const { return type_; }
    size_t bytes() const;

    // Views of positions [begin, end) of layer il: [head_dim, n_kv_head, end-begin].
    ggml_tensor * k_view(ggml_context * ctx, int il, int32_t begin, int32_t end) const;
    ggml_tensor * v_view(ggml_context * ctx, int il, int32_t begin, int32_t end) const;

  private:
    static ggml_tensor * view(ggml_context * ctx, ggml_tensor * t, int32_t begin, int32_t end);
    ggml_context * ctx_ = nullptr;
    ggml_backend_buffer_t buf_ = nullptr;
    std::vector<ggml_tensor *> k_, v_;
    int32_t n_ctx_ = 0;
    ggml_type type_ = GGML_TYPE_F32;
};

}  // namespace dg
