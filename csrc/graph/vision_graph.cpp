#include "graph/vision_graph.h"

#include "graph/graph.h"

#include <cmath>

namespace dg {

ggml_tensor * VisionGraphBuilder::named(ggml_tensor * t, const char * name, int il) { return named_node(t, name, il); }

ggml_tensor * VisionGraphBuilder::rms(ggml_tensor * x, ggml_tensor * weight) {
    return rms_norm(ctx, x, weight, hp.eps);  // Gemma4RMSNorm: the weight as is (not 1 + w)
}

ggml_tensor * VisionGraphBuilder::matmul(ggml_tensor * weight, ggml_tensor * x) {
    return weight_matmul(ctx, kernels, weight, x, on_gpu(weight));
}

ggml_tensor * VisionGraphBuilder::rope_2d(ggml_tensor * x, ggml_tensor * pos_x, ggml_tensor * pos_y) {
    const int64_t D = x->ne[0];
    const int64_t half = D / 2;
    auto rotate = [&](size_t offset, ggml_tensor * pos) {
        ggml_tensor * part = ggml_view_3d(ctx, x, half, x->ne[1], x->ne[2], x->nb[1], x->nb[2], offset);
        return ggml_rope_ext(ctx, part, pos, nullptr, static_cast<int>(half), GGML_ROPE_TYPE_NEOX, 0, hp.rope_theta,
                             1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
    };
    return ggml_concat(ctx, rotate(0, pos_x), rotate(static_cast<size_t>(half) * x->nb[0], pos_y), 0);
}

ggml_tensor * VisionGraphBuilder::attention(int il, ggml_tensor * h, ggml_tensor * pos_x, ggml_tensor * pos_y) {
    const VisionLayerWeights & l = w.layers[static_cast<size_t>(il)];
    const int64_t D = hp.head_dim;
    const int64_t N = h->ne[1];
    ggml_tensor * q = ggml_reshape_3d(ctx, matmul(l.wq, h), D, hp.n_head, N);
    ggml_tensor * k = ggml_reshape_3d(ctx, matmul(l.wk, h), D, hp.n_head, N);
    ggml_tensor * v = ggml_reshape_3d(ctx, matmul(l.wv, h), D, hp.n_head, N);
    q = named(rope_2d(rms(q, l.q_norm), pos_x, pos_y), "v_q", il);
    k = named(rope_2d(rms(k, l.k_norm), pos_x, pos_y), "v_k", il);
    v = named(rms(v, nullptr), "v_v", il);  // v_norm has no weight
    // One image, no padding: every patch sees every patch (no mask); scale 1 (q and k are normalised).
    ggml_tensor * kqv = named(attend_heads(ctx, kernels, q, k, v, nullptr, on_gpu(l.wq)), "v_kqv", il);
    return named(matmul(l.wo, kqv), "v_attn_out", il);
}

ggml_tensor * VisionGraphBuilder::mlp(int il, ggml_tensor * h) {
    const VisionLayerWeights & l = w.layers[static_cast<size_t>(il)];
    // HF hidden_activation gelu_pytorch_tanh, exact (graph.h geglu_tanh).
    ggml_tensor * act = geglu_tanh(ctx, matmul(l.ffn_gate, h), matmul(l.ffn_up, h), real_gpu && on_gpu(l.ffn_gate),
                                   on_remote(l.ffn_gate));
    return named(matmul(l.ffn_down, act), "v_ffn_out", il);
}

ggml_tensor * VisionGraphBuilder::layer(int il, ggml_tensor * x, ggml_tensor * pos_x, ggml_tensor * pos_y) {
    const VisionLayerWeights & l = w.layers[static_cast<size_t>(il)];
    ggml_tensor * a = attention(il, named(rms(x, l.ln1), "v_attn_norm", il), pos_x, pos_y);
    ggml_tensor * r = named(ggml_add(ctx, x, rms(a, l.attn_post_norm)), "v_ffn_inp", il);
    ggml_tensor * m = mlp(il, rms(r, l.ln2));
    return named(ggml_add(ctx, r, rms(m, l.ffn_post_norm)), "v_l_out", il);
}

VisionGraphInputs VisionGraphBuilder::build(int32_t grid_w, int32_t grid_h) {
    const int64_t E = hp.n_embd;
    const int64_t N = static_cast<int64_t>(grid_w) * grid_h;
    const int64_t k = hp.pooling;
    const int64_t P = 3ll * hp.patch_size * hp.patch_size;
    VisionGraphInputs in;
    in.patches = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, P, N);
    in.pos_x = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, N);
    in.pos_y = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, N);
    for (ggml_tensor * t : {in.patches, in.pos_x, in.pos_y}) {
        ggml_set_input(t);
    }

    // Patch embedding: HF input_proj, stored as a conv kernel [p, p, 3, E], is a [3 p^2, E] matrix over
    // channel-major patches; plus the x and y position tables' rows.
    ggml_tensor * x = matmul(ggml_reshape_2d(ctx, w.patch_embd, P, E), in.patches);
    const size_t table = w.position_embd->nb[2];
    ggml_tensor * tbl_x = ggml_view_2d(ctx, w.position_embd, E, hp.n_pos, w.position_embd->nb[1], 0);
    ggml_tensor * tbl_y = ggml_view_2d(ctx, w.position_embd, E, hp.n_pos, w.position_embd->nb[1], table);
    x = ggml_add(ctx, x, ggml_get_rows(ctx, tbl_x, in.pos_x));
    x = named(ggml_add(ctx, x, ggml_get_rows(ctx, tbl_y, in.pos_y)), "v_inp");

    for (int il = 0; il < hp.n_layer; ++il) {
        x = layer(il, x, in.pos_x, in.pos_y);
    }

    // Pooler: the mean of each k x k cell, cells row-major over the pooled grid (HF's kernel index
    // x/k + (grid_w/k) * (y/k)), times sqrt(n_embd).
    ggml_tensor * grid = named(ggml_cont(ctx, ggml_transpose(ctx, x)), "v_grid");  // [N, E]: patch index fastest
    grid = ggml_reshape_4d(ctx, grid, grid_w, grid_h, E, 1);
    ggml_tensor * pooled = ggml_pool_2d(ctx, grid, GGML_OP_POOL_AVG, static_cast<int>(k), static_cast<int>(k),
                                        static_cast<int>(k), static_cast<int>(k), 0, 0);
    const int64_t n_out = (grid_w / k) * (grid_h / k);
    pooled = ggml_cont(ctx, ggml_transpose(ctx, ggml_reshape_2d(ctx, pooled, n_out, E)));  // [E, n_out]
    x = named(ggml_scale(ctx, pooled, std::sqrt(static_cast<float>(E))), "v_pooled");
    if (w.std_bias != nullptr) {
        x = named(ggml_mul(ctx, ggml_sub(ctx, x, w.std_bias), w.std_scale), "v_std");
    }
    // DiffusionGemma's embed_vision: RMSNorm without a scale, then Linear(n_embd -> text n_embd).
    ggml_tensor * out = named(matmul(w.mm_proj, rms(x, nullptr)), kNodeVisionOut);
    ggml_set_output(out);
    ggml_build_forward_expand(gf, out);
    in.out = out;
    return in;
}

}  // namespace dg
