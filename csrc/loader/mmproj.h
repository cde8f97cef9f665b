// The vision projector (mmproj) GGUF: llama.cpp's Gemma-4 vision layout (clip arch, projector "gemma4v"), names
// from gguf_names.def. Its hyper-parameters and tensors, bound to the memory-mapped file like the text weights.
#pragma once

#include "loader/weights.h"

#include "ggml.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

struct gguf_context;

namespace dg {

struct VisionHParams {
    int32_t n_embd = 0;           // clip.vision.embedding_length (1152)
    int32_t n_ff = 0;             // clip.vision.feed_forward_length (4304)
    int32_t n_layer = 0;          // clip.vision.block_count (27)
    int32_t n_head = 0;           // clip.vision.attention.head_count (16)
    int32_t head_dim = 0;         // from attn_q_norm's length (72); a multiple of 4 (2-D RoPE over two halves)
    int32_t n_embd_out = 0;       // clip.vision.projection_dim: the text model's n_embd (2816)
    int32_t patch_size = 0;       // clip.vision.patch_size (16)
    int32_t pooling = 3;          // clip.vision.projector.scale_factor: k x k patches per soft token (3)
    int32_t max_soft_tokens = 280;  // clip.vision.max_soft_tokens (ours; 280 when absent)
    int32_t n_pos = 0;            // rows of each position table (v.position_embd: HF position_embedding_size)
    float eps = 1e-6f;            // clip.vision.attention.layer_norm_epsilon (RMSNorm eps, also the projection norm)
    float rope_theta = 100.0f;    // clip.vision.rope.freq_base (ours; 100 when absent)
};

struct VisionLayerWeights {
    ggml_tensor * ln1 = nullptr;            // [E] input norm
    ggml_tensor * wq = nullptr;             // [E, H*D]
    ggml_tensor * wk = nullptr;             // [E, H*D]
    ggml_tensor * wv = nullptr;             // [E, H*D]
    ggml_tensor * wo = nullptr;             // [H*D, E]
    ggml_tensor * q_norm = nullptr;         // [D]
    ggml_tensor * k_norm = nullptr;         // [D]
    ggml_tensor * attn_post_norm = nullptr; // [E]
    ggml_tensor * ln2 = nullptr;            // [E] pre-MLP norm
    ggml_tensor * ffn_gate = nullptr;       // [E, F]
    ggml_tensor * ffn_up = nullptr;         // [E, F]
    ggml_tensor * ffn_down = nullptr;       // [F, E]
    ggml_tensor * ffn_post_norm = nullptr;  // [E]
};

struct VisionWeights {
    ggml_tensor * patch_embd = nullptr;     // [p, p, 3, E]: HF input_proj as a conv kernel (channel, row, column)
    ggml_tensor * position_embd = nullptr;  // [E, n_pos, 2]: the x table, then the y table
    ggml_tensor * std_bias = nullptr;       // [E] (optional: HF standardize; both or neither)
    ggml_tensor * std_scale = nullptr;      // [E]
    ggml_tensor * mm_proj = nullptr;        // [E, n_embd_out] Linear to the text hidden size (no bias)
    std::vector<VisionLayerWeights> layers;
};

// Every tensor of a projector's weights (the slots that hold them), for placement and byte counts.
std::vector<ggml_tensor **> vision_tensor_slots(VisionWeights & w);

// A loaded projector: metadata, tensor descriptors and the mapping that backs them.
struct VisionModel {
    std::string path;
    VisionHParams hp;
    VisionWeights w;
    gguf_context * gguf = nullptr;
    ggml_context * meta_ctx = nullptr;
    GgufMapping mapping;
    VisionModel() = default;
    VisionModel(const VisionModel &) = delete;
    VisionModel & operator=(const VisionModel &) = delete;
    ~VisionModel();
};

// Opens, checks and maps the projector at `path` for a text model of width `text_n_embd`. Throws dg::Error:
// DIFFGEMMA_ERR_BAD_FORMAT for a file that is not a readable GGUF, DIFFGEMMA_ERR_UNSUPPORTED_MODEL for another
// projector type, a missing key or tensor, a shape that does not fit, clipped linears (HF use_clipped_linears,
// not used by the release), or a projection width other than text_n_embd ("projector does not match the model").
std::unique_ptr<VisionModel> load_vision_model(const std::string & path, int32_t text_n_embd);

}  // namespace dg
