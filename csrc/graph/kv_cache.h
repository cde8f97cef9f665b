// The encoder's KV cache: per layer, K (k_norm'd, RoPE'd) and V (v_norm'd) of every clean token.
//
// Layout per layer: [head_dim, n_kv_head, n_slots]; position p lives in slot p % n_slots.
// Full layers have n_slots = n_ctx, so they never wrap. Sliding layers only ever read the last n_swa-1
// positions (spec 4.3), so they are a ring of n_swa-1+slack slots: the slack lets an encoder chunk of up to
// `slack` tokens be written while the window of its first query is still readable, and lets the cache be
// rewound by up to `slack` positions (prefix reuse, kv_truncate) without losing a window.
#pragma once

#include "loader/hparams.h"

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

    // Allocates every layer in `type` (F32 or F16): n_ctx slots for full layers, min(n_ctx, n_swa-1+slack)
    // for sliding layers. `slack` must be at least the longest encoder chunk. Layer il lives in buffer type
    // buft[il] (host memory, or the GPU its layer is offloaded to). Throws dg::Error.
    void init(const HParams & hp, int32_t n_ctx, int32_t slack, ggml_type type,
              const std::vector<ggml_backend_buffer_type_t> & buft);

    // Bytes of the cache that n_ctx = `n_ctx` with this slack takes in the layers `selected` (a layer mask).
    static size_t bytes_for(const HParams & hp, int32_t n_ctx, int32_t slack, ggml_type type,
                            const std::vector<uint8_t> & selected);

    int32_t n_ctx() const { return n_ctx_; }
    int32_t n_slots(int il) const { return n_slots_[static_cast<size_t>(il)]; }
    ggml_type type() const { return type_; }
    size_t bytes() const;

    // K (or V) of positions [begin, end) of layer il in position order, [head_dim, n_kv_head, end-begin]: a view,
    // or the concatenation of two views where the range wraps around a ring. The range must still be held.
    ggml_tensor * k_range(ggml_context * ctx, int il, int32_t begin, int32_t end) const;
    ggml_tensor * v_range(ggml_context * ctx, int il, int32_t begin, int32_t end) const;

    // Adds to gf the copies of `k` and `v` ([head_dim, n_kv_head, T]) into the slots of positions
    // [begin, begin+T) of layer il.
    void store(ggml_context * ctx, ggml_cgraph * gf, int il, int32_t begin, ggml_tensor * k, ggml_tensor * v) const;

    // Bookkeeping of what the rings still hold: positions [0, end) have been written (called after each
    // encoder pass), and everything was dropped (n_past = 0).
    void mark_written(int32_t end);
    void clear() { high_water_ = 0; }

    // True when, after dropping every position >= n_keep, each sliding layer still holds the window that a
    // query at n_keep reads (no later position has overwritten it).
    bool holds_window_at(const HParams & hp, int32_t n_keep) const;

  private:
    ggml_tensor * range(ggml_context * ctx, ggml_tensor * t, int il, int32_t begin, int32_t end) const;
    std::vector<ggml_context *> ctxs_;  // one per distinct buffer type
    std::vector<ggml_backend_buffer_t> bufs_;
    std::vector<ggml_tensor *> k_, v_;
    std::vector<int32_t> n_slots_;
    int32_t n_ctx_ = 0;
    int32_t high_water_ = 0;  // highest position written since the last clear(), plus one
    ggml_type type_ = GGML_TYPE_F32;
};

}  // namespace dg
