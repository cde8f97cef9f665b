// The vision tower and its projection as one ggml graph (HF Gemma4VisionModel + DiffusionGemma's embed_vision,
// model-spec.md section 9): patch embedding, n_layer encoder layers with 2-D RoPE, k x k average pooling,
// standardization, then the no-scale RMSNorm and the Linear to the text model's width.
#pragma once

#include "core/kernel_config.h"
#include "loader/mmproj.h"
#include "loader/weights.h"

#include "ggml.h"

#include <cstdint>

namespace dg {

// Names of the tower's nodes for the tensor dump: v_inp (patch + position embeddings), per layer v_attn_norm-il,
// v_q-il, v_k-il, v_v-il (after their norms and RoPE), v_kqv-il, v_attn_out-il, v_ffn_inp-il, v_ffn_out-il,
// v_l_out-il, then v_pooled (pooled and scaled by sqrt(n_embd)), v_std (standardized), v_proj (the output).
inline constexpr const char * kNodeVisionOut = "v_proj";

struct VisionGraphInputs {
    ggml_tensor * patches = nullptr;  // [3 p^2, N] f32: each patch channel-major (channel, row, column) and already
                                      // mapped to [-1, 1] (2 (pixel - 0.5)), the order of patch_embd's conv kernel
    ggml_tensor * pos_x = nullptr;    // [N] i32 patch column
    ggml_tensor * pos_y = nullptr;    // [N] i32 patch row
    ggml_tensor * out = nullptr;      // [n_embd_out, N / k^2] f32, soft tokens row-major over the pooled grid
};

struct VisionGraphBuilder {
    const VisionHParams & hp;
    const VisionWeights & w;
    ggml_context * ctx;
    ggml_cgraph * gf;
    const KernelConfig & kernels;
    // The model's record of offloaded weight copies (Weights::on_gpu / on_remote: place_vision_weights puts the
    // projector's there too), or nullptr when nothing is offloaded.
    const Weights * placed = nullptr;
    bool real_gpu = false;  // the offload device is a real one, not the test stand-in (GraphBuilder::real_gpu)

    // One image of grid_w x grid_h patches in row-major order (patch i at column i % grid_w, row i / grid_w);
    // both sides multiples of hp.pooling.
    VisionGraphInputs build(int32_t grid_w, int32_t grid_h);

  private:
    ggml_tensor * named(ggml_tensor * t, const char * name, int il = -1);
    ggml_tensor * rms(ggml_tensor * x, ggml_tensor * weight);
    bool on_gpu(const ggml_tensor * weight) const { return placed != nullptr && placed->on_gpu(weight); }
    bool on_remote(const ggml_tensor * weight) const { return placed != nullptr && placed->on_remote(weight); }
    ggml_tensor * matmul(ggml_tensor * weight, ggml_tensor * x);
    // HF apply_multidimensional_rope with 2 axes: the first half of each head rotated by the column, the second by
    // the row, each NEOX-style (rotate_half) with inv_freq = theta^(-2i / (D/2)).
    ggml_tensor * rope_2d(ggml_tensor * x, ggml_tensor * pos_x, ggml_tensor * pos_y);
    ggml_tensor * attention(int il, ggml_tensor * h, ggml_tensor * pos_x, ggml_tensor * pos_y);
    ggml_tensor * mlp(int il, ggml_tensor * h);
    ggml_tensor * layer(int il, ggml_tensor * x, ggml_tensor * pos_x, ggml_tensor * pos_y);
};

}  // namespace dg
