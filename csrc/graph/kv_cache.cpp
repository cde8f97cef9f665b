#include "graph/kv_cache.h"

#include "core/errors.h"
#include "core/host_memory.h"
#include "devices/rpc.h"

#include <algorithm>

namespace dg {

KvCache::~KvCache() {
    for (ggml_backend_buffer_t b : bufs_) {
        free_remote_quietly([b] { ggml_backend_buffer_free(b); });  // an RPC server may be gone (rpc.h)
    }
    for (ggml_context * c : ctxs_) {
        ggml_free(c);
    }
}

// Refuses a host KV cache larger than the memory left (host_memory.h): with overcommit the allocation itself
// would succeed and the process be killed later, when encoding touches the pages.
static void check_fits_in_host_memory(size_t need, size_t per_position, int32_t n_ctx, ggml_backend_buffer_type_t buft) {
    if (!ggml_backend_buft_is_host(buft)) {
        return;
    }
    const uint64_t available = available_host_memory();
    if (available == 0 || need <= available) {
        return;
    }
    const uint64_t fixed = need - per_position * static_cast<uint64_t>(n_ctx);
    const uint64_t fitting = per_position > 0 && available > fixed ? (available - fixed) / per_position : 0;
    raise(DIFFGEMMA_ERR_OUT_OF_MEMORY,
          "cannot allocate the KV cache: %.1f MiB for n_ctx=%d, but only %.1f MiB of memory is available "
          "(hint: n_ctx <= %llu fits; an f16 cache halves it)",
          need / 1048576.0, n_ctx, available / 1048576.0, static_cast<unsigned long long>(fitting));
}

namespace {

int32_t slots_of(const HParams & hp, int il, int32_t n_ctx, int32_t slack) {
    const int64_t ring = static_cast<int64_t>(hp.n_swa) - 1 + slack;
    return hp.is_swa[il] && hp.n_swa > 0 ? static_cast<int32_t>(std::min<int64_t>(n_ctx, ring)) : n_ctx;
}

}  // namespace

size_t KvCache::bytes_for(const HParams & hp, int32_t n_ctx, int32_t slack, ggml_type type, const std::vector<uint8_t> & selected) {
    size_t bytes = 0;
    for (int il = 0; il < hp.n_layer; ++il) {
        if (selected[static_cast<size_t>(il)]) {
            const size_t row = ggml_row_size(type, hp.head_dim(il)) * static_cast<size_t>(hp.n_head_kv[il]);
            bytes += 2 * row * static_cast<size_t>(slots_of(hp, il, n_ctx, slack));
        }
    }
    return bytes;
}

void KvCache::init(const HParams & hp, int32_t n_ctx, int32_t slack, ggml_type type,
                   const std::vector<ggml_backend_buffer_type_t> & buft) {
    n_ctx_ = n_ctx;
    type_ = type;
    k_.assign(static_cast<size_t>(hp.n_layer), nullptr);
    v_.assign(static_cast<size_t>(hp.n_layer), nullptr);
    for (int il = 0; il < hp.n_layer; ++il) {
        n_slots_.push_back(slots_of(hp, il, n_ctx, slack));
    }
    // One context and buffer per buffer type, holding the layers placed there.
    std::vector<ggml_backend_buffer_type_t> types;
    for (ggml_backend_buffer_type_t t : buft) {
        if (std::find(types.begin(), types.end(), t) == types.end()) {
            types.push_back(t);
        }
    }
    for (ggml_backend_buffer_type_t t : types) {
        ggml_init_params params = {ggml_tensor_overhead() * static_cast<size_t>(2 * hp.n_layer + 2), nullptr, true};
        ggml_context * ctx = ggml_init(params);
        if (ctx == nullptr) {
            raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot create the KV cache context");
        }
        ctxs_.push_back(ctx);
        std::vector<uint8_t> here(static_cast<size_t>(hp.n_layer), 0);
        size_t per_position = 0;  // bytes that grow with n_ctx: the layers whose slots are n_ctx
        for (int il = 0; il < hp.n_layer; ++il) {
            if (buft[static_cast<size_t>(il)] != t) {
                continue;
            }
            here[static_cast<size_t>(il)] = 1;
            const int64_t D = hp.head_dim(il);
            const int64_t kv = hp.n_head_kv[il];
            k_[il] = ggml_new_tensor_3d(ctx, type, D, kv, n_slots_[il]);
            v_[il] = ggml_new_tensor_3d(ctx, type, D, kv, n_slots_[il]);
            ggml_format_name(k_[il], "cache_k_l%d", il);
            ggml_format_name(v_[il], "cache_v_l%d", il);
            if (n_slots_[il] == n_ctx) {
                per_position += (ggml_nbytes(k_[il]) + ggml_nbytes(v_[il])) / static_cast<size_t>(n_ctx);
            }
        }
        const size_t need = bytes_for(hp, n_ctx, slack, type, here);
        check_fits_in_host_memory(need, per_position, n_ctx, t);
        ggml_backend_buffer_t buf;
        {
            // A failed allocation is reported once, by the error below; ggml's own three log lines about it would
            // only repeat it on stderr (a log callback still receives them).
            GgmlErrorCapture quiet_ggml;
            buf = ggml_backend_alloc_ctx_tensors_from_buft(ctx, t);
        }
        if (buf == nullptr) {
            raise(DIFFGEMMA_ERR_OUT_OF_MEMORY,
                  "cannot allocate the KV cache in %s: %.1f MiB for n_ctx=%d (hint: a smaller n_ctx or an f16 cache)",
                  ggml_backend_buft_name(t), need / 1048576.0, n_ctx);
        }
        ggml_backend_buffer_set_usage(buf, GGML_BACKEND_BUFFER_USAGE_COMPUTE);
        bufs_.push_back(buf);
    }
}

size_t KvCache::bytes() const {
    size_t total = 0;
    for (ggml_backend_buffer_t b : bufs_) {
        total += ggml_backend_buffer_get_size(b);
    }
    return total;
}

// Slots [first, first+n) of t as a [head_dim, n_kv_head, n] view.
static ggml_tensor * slot_view(ggml_context * ctx, ggml_tensor * t, int32_t first, int32_t n) {
    return ggml_view_3d(ctx, t, t->ne[0], t->ne[1], n, t->nb[1], t->nb[2], static_cast<size_t>(first) * t->nb[2]);
}

ggml_tensor * KvCache::range(ggml_context * ctx, ggml_tensor * t, int il, int32_t begin, int32_t end) const {
    const int32_t slots = n_slots(il);
    const int32_t first = begin % slots;
    const int32_t n = end - begin;
    if (first + n <= slots) {
        return slot_view(ctx, t, first, n);
    }
    const int32_t head = slots - first;  // up to the end of the ring, then from slot 0
    return ggml_concat(ctx, slot_view(ctx, t, first, head), slot_view(ctx, t, 0, n - head), 2);
}

ggml_tensor * KvCache::k_range(ggml_context * ctx, int il, int32_t begin, int32_t end) const {
    return range(ctx, k_[static_cast<size_t>(il)], il, begin, end);
}

ggml_tensor * KvCache::v_range(ggml_context * ctx, int il, int32_t begin, int32_t end) const {
    return range(ctx, v_[static_cast<size_t>(il)], il, begin, end);
}

void KvCache::store(ggml_context * ctx, ggml_cgraph * gf, int il, int32_t begin, ggml_tensor * k, ggml_tensor * v) const {
    const int32_t slots = n_slots(il);
    const int32_t T = static_cast<int32_t>(k->ne[2]);
    if (T > slots) {
        raise(DIFFGEMMA_ERR_INTERNAL, "an encoder chunk of %d tokens exceeds layer %d's %d cache slots", T, il, slots);
    }
    const int32_t first = begin % slots;
    const int32_t head = std::min(T, slots - first);  // tokens before the ring wraps
    for (auto [src, dst] : {std::pair{k, k_[static_cast<size_t>(il)]}, std::pair{v, v_[static_cast<size_t>(il)]}}) {
        ggml_build_forward_expand(gf, ggml_cpy(ctx, slot_view(ctx, src, 0, head), slot_view(ctx, dst, first, head)));
        if (head < T) {
            ggml_build_forward_expand(gf, ggml_cpy(ctx, slot_view(ctx, src, head, T - head), slot_view(ctx, dst, 0, T - head)));
        }
    }
}

void KvCache::mark_written(int32_t end) { high_water_ = std::max(high_water_, end); }

bool KvCache::holds_window_at(const HParams & hp, int32_t n_keep) const {
    for (size_t il = 0; il < n_slots_.size(); ++il) {
        if (!hp.is_swa[il] || n_slots_[il] >= n_ctx_) {
            continue;  // never wraps
        }
        // Writing position p overwrote position p - n_slots; the window of a query at n_keep starts at
        // n_keep - (n_swa - 1).
        const int64_t lost_below = static_cast<int64_t>(high_water_) - n_slots_[il];
        const int64_t window_begin = static_cast<int64_t>(n_keep) - (hp.n_swa - 1);
        if (window_begin < lost_below) {
            return false;
        }
    }
    return true;
}

}  // namespace dg
