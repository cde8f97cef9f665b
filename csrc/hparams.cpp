#include "hparams.h"

#include "errors.h"
#include "gguf_meta.h"

#include <cmath>
#include <cstring>

namespace dg {

namespace {

// HF multiplies embeddings by sqrt(hidden) cast to the weight dtype; the released checkpoint is bf16, so a
// file without an explicit scale gets sqrt(hidden) rounded to bf16 (53.0 for 2816, not 53.066).
float bf16_round(float x) {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    bits += 0x7fff + ((bits >> 16) & 1);  // round to nearest even
    bits &= 0xffff0000u;
    float out;
    std::memcpy(&out, &bits, sizeof out);
    return out;
}

void check_positive(const char * what, int64_t v) {
    if (v <= 0) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "hyper-parameter %s must be positive, got %lld", what, (long long) v);
    }
}

}  // namespace

HParams read_hparams(const gguf_context * ctx) {
    GgufMeta meta(ctx);
    const std::string arch = meta.str(Key::GENERAL_ARCHITECTURE);
    if (arch != arch_name()) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF architecture is '%s', but diffgemma_cpp runs only '%s' (DiffusionGemma)",
              arch.c_str(), arch_name());
    }
    HParams hp;
    hp.n_layer = static_cast<int32_t>(meta.u32(Key::BLOCK_COUNT));
    check_positive("block_count", hp.n_layer);
    if (hp.n_layer > 4096) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "block_count %d is implausible", hp.n_layer);
    }
    hp.n_embd = static_cast<int32_t>(meta.u32(Key::EMBEDDING_LENGTH));
    hp.n_ff = static_cast<int32_t>(meta.u32(Key::FEED_FORWARD_LENGTH));
    hp.n_head = static_cast<int32_t>(meta.u32(Key::HEAD_COUNT));
    hp.n_expert = static_cast<int32_t>(meta.u32(Key::EXPERT_COUNT));
    hp.n_expert_used = static_cast<int32_t>(meta.u32(Key::EXPERT_USED_COUNT));
    hp.n_ff_exp = static_cast<int32_t>(meta.u32(Key::EXPERT_FEED_FORWARD_LENGTH));
    hp.head_dim_full = static_cast<int32_t>(meta.u32(Key::KEY_LENGTH));
    hp.head_dim_swa = static_cast<int32_t>(meta.u32(Key::KEY_LENGTH_SWA));
    hp.n_ctx_train = static_cast<int32_t>(meta.u32(Key::CONTEXT_LENGTH, 262144));
    hp.n_swa = static_cast<int32_t>(meta.u32(Key::SLIDING_WINDOW));
    hp.canvas_length = static_cast<int32_t>(meta.u32(Key::CANVAS_LENGTH));
    hp.rms_eps = meta.f32(Key::RMS_EPS, 1e-6f);
    hp.rope_base_full = meta.f32(Key::ROPE_FREQ_BASE, 1e6f);
    hp.rope_base_swa = meta.f32(Key::ROPE_FREQ_BASE_SWA, 1e4f);
    hp.softcap = meta.f32(Key::FINAL_LOGIT_SOFTCAPPING, 30.0f);
    check_positive("embedding_length", hp.n_embd);
    check_positive("feed_forward_length", hp.n_ff);
    check_positive("attention.head_count", hp.n_head);
    check_positive("expert_count", hp.n_expert);
    check_positive("expert_used_count", hp.n_expert_used);
    check_positive("expert_feed_forward_length", hp.n_ff_exp);
    check_positive("attention.key_length", hp.head_dim_full);
    check_positive("attention.key_length_swa", hp.head_dim_swa);
    check_positive("attention.sliding_window", hp.n_swa);
    check_positive("diffusion.canvas_length", hp.canvas_length);
    if (hp.n_expert_used > hp.n_expert) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "expert_used_count %d exceeds expert_count %d", hp.n_expert_used, hp.n_expert);
    }
    if (meta.u32(Key::VALUE_LENGTH, hp.head_dim_full) != static_cast<uint32_t>(hp.head_dim_full) ||
        meta.u32(Key::VALUE_LENGTH_SWA, hp.head_dim_swa) != static_cast<uint32_t>(hp.head_dim_swa)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "value_length must equal key_length (DiffusionGemma shares K and V head sizes)");
    }
    if (hp.head_dim_full % 2 != 0 || hp.head_dim_swa % 2 != 0) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "head dims must be even for RoPE (got %d and %d)", hp.head_dim_full, hp.head_dim_swa);
    }
    hp.n_head_kv = meta.per_layer_ints(Key::HEAD_COUNT_KV, hp.n_layer);
    hp.is_swa = meta.per_layer_bools(Key::SLIDING_WINDOW_PATTERN, hp.n_layer);
    for (int il = 0; il < hp.n_layer; ++il) {
        const int32_t kv = hp.n_head_kv[il];
        if (kv <= 0 || hp.n_head % kv != 0) {
            raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "layer %d: head_count_kv %d must divide head_count %d", il, kv, hp.n_head);
        }
    }
    const float exact = std::sqrt(static_cast<float>(hp.n_embd));
    hp.embed_scale = meta.f32(Key::EMBED_SCALE, bf16_round(exact));

    SamplerDefaults & s = hp.sampler;
    s.max_steps = static_cast<int32_t>(meta.u32(Key::EB_MAX_STEPS, static_cast<uint32_t>(s.max_steps)));
    s.t_min = meta.f32(Key::EB_T_MIN, s.t_min);
    s.t_max = meta.f32(Key::EB_T_MAX, s.t_max);
    s.entropy_bound = meta.f32(Key::EB_ENTROPY_BOUND, s.entropy_bound);
    s.stability_threshold = static_cast<int32_t>(meta.u32(Key::EB_STABILITY_THRESHOLD, static_cast<uint32_t>(s.stability_threshold)));
    s.confidence_threshold = meta.f32(Key::EB_CONFIDENCE_THRESHOLD, s.confidence_threshold);
    return hp;
}

}  // namespace dg
