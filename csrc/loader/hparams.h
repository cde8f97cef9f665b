// DiffusionGemma hyper-parameters and sampler defaults, read from GGUF metadata by name (gguf_names.def).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

struct gguf_context;

namespace dg {

struct SamplerDefaults {
    int32_t max_steps = 48;               // diffusion.eb_max_steps
    float t_min = 0.4f;                   // diffusion.eb_t_min
    float t_max = 0.8f;                   // diffusion.eb_t_max
    float entropy_bound = 0.1f;           // diffusion.eb_entropy_bound
    int32_t stability_threshold = 1;      // diffusion.eb_stability_threshold
    float confidence_threshold = 0.005f;  // diffusion.eb_confidence_threshold
};

struct HParams {
    int32_t n_layer = 0;          // block_count (30)
    int32_t n_embd = 0;           // embedding_length (2816)
    int32_t n_ff = 0;             // feed_forward_length: dense MLP and self-conditioning MLP width (2112)
    int32_t n_ff_exp = 0;         // expert_feed_forward_length (704)
    int32_t n_head = 0;           // attention.head_count (16, all layers)
    int32_t n_expert = 0;         // expert_count (128)
    int32_t n_expert_used = 0;    // expert_used_count (8)
    int32_t head_dim_full = 0;    // attention.key_length (512)
    int32_t head_dim_swa = 0;     // attention.key_length_swa (256)
    int32_t n_ctx_train = 0;      // context_length
    int32_t n_swa = 0;            // attention.sliding_window (1024): canvas sees the last n_swa-1 cached keys
    int32_t canvas_length = 0;    // diffusion.canvas_length (256)
    int32_t n_vocab = 0;          // rows of token_embd
    float rms_eps = 1e-6f;
    float rope_base_full = 1e6f;  // rope.freq_base (full-attention layers)
    float rope_base_swa = 1e4f;   // rope.freq_base_swa
    float softcap = 30.0f;        // final_logit_softcapping
    float embed_scale = 0.0f;     // sqrt(n_embd) in the checkpoint dtype (see diffusion.embed_scale)
    int32_t image_token_id = -1;  // diffusion.image_token_id; -1 = absent (the model then looks up "<|image|>")
    bool vision_bidirectional = true;  // diffusion.vision_bidirectional: an image's span attends both ways in
                                       // the encoder (HF use_bidirectional_attention == "vision", the release)
    std::vector<int32_t> n_head_kv;   // per layer
    std::vector<bool> is_swa;         // per layer: true = sliding-window layer
    SamplerDefaults sampler;

    int32_t head_dim(int il) const { return is_swa[il] ? head_dim_swa : head_dim_full; }
    float rope_base(int il) const { return is_swa[il] ? rope_base_swa : rope_base_full; }
    // The context length diffgemma_context_new picks when none is given (also what the GPU plan reports).
    int32_t default_n_ctx() const { return std::min<int32_t>(4096, std::max(n_ctx_train, 2 * canvas_length)); }
};

// Reads and validates the hyper-parameters; throws dg::Error naming the key and the problem.
HParams read_hparams(const gguf_context * ctx);

}  // namespace dg
