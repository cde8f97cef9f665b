#include "loader/hparams.h"

#include "core/errors.h"
#include "loader/gguf_meta.h"

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

// GGUF stores counts as u32, we keep them in int32: a value above INT32_MAX would turn negative (or wrap
// into a small positive one) in the cast, so it is refused with the key and the value.
int32_t read_count(const GgufMeta & meta, Key key) {
    const uint32_t v = meta.u32(key);
    if (v > static_cast<uint32_t>(INT32_MAX)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' = %u is out of range (at most %d)", key_name(key).c_str(), v,
              INT32_MAX);
    }
    return static_cast<int32_t>(v);
}

int32_t read_count(const GgufMeta & meta, Key key, int32_t fallback) {
    return meta.has(key) ? read_count(meta, key) : fallback;
}

// Float hyper-parameters feed divisions, square roots and exponents in every pass: a NaN, an infinity or a
// zero/negative value would only show up later as NaN logits, so it is refused here with the key.
float read_float(const GgufMeta & meta, Key key, float fallback, bool zero_ok) {
    const float v = meta.f32(key, fallback);
    if (!std::isfinite(v) || v < 0.0f || (v == 0.0f && !zero_ok)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' = %g is invalid (it must be finite and %s)",
              key_name(key).c_str(), v, zero_ok ? ">= 0" : "> 0");
    }
    return v;
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
    hp.n_layer = read_count(meta, Key::BLOCK_COUNT);
    check_positive("block_count", hp.n_layer);
    if (hp.n_layer > 4096) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "block_count %d is implausible", hp.n_layer);
    }
    hp.n_embd = read_count(meta, Key::EMBEDDING_LENGTH);
    hp.n_ff = read_count(meta, Key::FEED_FORWARD_LENGTH);
    hp.n_head = read_count(meta, Key::HEAD_COUNT);
    hp.n_expert = read_count(meta, Key::EXPERT_COUNT);
    hp.n_expert_used = read_count(meta, Key::EXPERT_USED_COUNT);
    hp.n_ff_exp = read_count(meta, Key::EXPERT_FEED_FORWARD_LENGTH);
    hp.head_dim_full = read_count(meta, Key::KEY_LENGTH);
    hp.head_dim_swa = read_count(meta, Key::KEY_LENGTH_SWA);
    hp.n_ctx_train = read_count(meta, Key::CONTEXT_LENGTH, 262144);
    hp.n_swa = read_count(meta, Key::SLIDING_WINDOW);
    hp.canvas_length = read_count(meta, Key::CANVAS_LENGTH);
    hp.rms_eps = read_float(meta, Key::RMS_EPS, 1e-6f, false);
    hp.rope_base_full = read_float(meta, Key::ROPE_FREQ_BASE, 1e6f, false);
    hp.rope_base_swa = read_float(meta, Key::ROPE_FREQ_BASE_SWA, 1e4f, false);
    hp.softcap = read_float(meta, Key::FINAL_LOGIT_SOFTCAPPING, 30.0f, false);
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
    // Nothing ties the canvas to a tensor shape, yet it sizes every decoder pass ([canvas, n_vocab] logits)
    // and n_ctx defaults to twice it: bound it so those products stay far from int32 overflow.
    if (hp.canvas_length > (1 << 16)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "diffusion.canvas_length %d is implausible (at most 65536)", hp.canvas_length);
    }
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
    hp.embed_scale = read_float(meta, Key::EMBED_SCALE, bf16_round(exact), false);
    hp.image_token_id = read_count(meta, Key::IMAGE_TOKEN_ID, -1);
    hp.vision_bidirectional = meta.boolean(Key::VISION_BIDIRECTIONAL, true);

    SamplerDefaults & s = hp.sampler;
    s.max_steps = read_count(meta, Key::EB_MAX_STEPS, s.max_steps);
    s.t_min = read_float(meta, Key::EB_T_MIN, s.t_min, false);
    s.t_max = read_float(meta, Key::EB_T_MAX, s.t_max, false);
    s.entropy_bound = read_float(meta, Key::EB_ENTROPY_BOUND, s.entropy_bound, true);
    s.stability_threshold = read_count(meta, Key::EB_STABILITY_THRESHOLD, s.stability_threshold);
    s.confidence_threshold = read_float(meta, Key::EB_CONFIDENCE_THRESHOLD, s.confidence_threshold, true);
    // The sampler's own argument check (check_params) would blame the caller for a bad default from the file.
    if (hp.sampler.max_steps <= 0 || hp.sampler.max_steps > 100000) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "diffusion.eb_max_steps must be positive and at most 100000, got %d",
              hp.sampler.max_steps);
    }
    return hp;
}

}  // namespace dg
