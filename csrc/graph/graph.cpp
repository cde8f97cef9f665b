#include "graph/graph.h"

#include "kernels/attention_cpu.h"
#include "kernels/cpu_ops.h"
#include "kernels/gemm_f32.h"

#include <cmath>
#include <limits>

namespace dg {

int32_t swa_first_key(const HParams & hp, int32_t n_past) { return std::max<int32_t>(0, n_past - (hp.n_swa - 1)); }

void fill_encoder_mask(float * mask, int32_t key_begin, int32_t n_past, int32_t n_tokens, int32_t window,
                       const std::vector<PositionSpan> & spans) {
    const int32_t n_keys = n_past + n_tokens - key_begin;
    const float neg_inf = -std::numeric_limits<float>::infinity();
    for (int32_t t = 0; t < n_tokens; ++t) {
        const int32_t q = n_past + t;
        const PositionSpan * own = nullptr;  // the image span holding q, if any
        for (const PositionSpan & s : spans) {
            if (q >= s.begin && q < s.end) {
                own = &s;
            }
        }
        for (int32_t j = 0; j < n_keys; ++j) {
            const int32_t k = key_begin + j;
            const bool causal = k <= q && (window <= 0 || k > q - window);
            const bool same_image = own != nullptr && k >= own->begin && k < own->end;
            mask[static_cast<size_t>(t) * n_keys + j] = causal || same_image ? 0.0f : neg_inf;
        }
    }
}

ggml_tensor * named_node(ggml_tensor * t, const char * name, int il) {
    if (il >= 0) {
        ggml_format_name(t, "%s-%d", name, il);
    } else {
        ggml_set_name(t, name);
    }
    return t;
}

ggml_tensor * rms_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * weight, float eps) {
    ggml_tensor * y = ggml_rms_norm(ctx, x, eps);
    return weight != nullptr ? ggml_mul(ctx, y, weight) : y;
}

ggml_tensor * GraphBuilder::named(ggml_tensor * t, const char * name, int il) { return named_node(t, name, il); }

ggml_tensor * GraphBuilder::rms(ggml_tensor * x, ggml_tensor * weight) { return rms_norm(ctx, x, weight, hp.rms_eps); }

// A weight matrix times activations: our f32 GEMM (gemm_f32.h) where it applies, else ggml's mul_mat.
// activations: how the GEMM may round x (gemm_f32.h); ggml's mul_mat rounds as its weight type dictates.
// Offloaded weights always take ggml's op: a custom op would run on the CPU and pull the weight back.
// An NVFP4 weight's second-level scale multiplies the product (y = (W_blocks x) * s row by row, which equals
// (W_blocks * s) x, the checkpoint's weights, up to float32 rounding of the output).
ggml_tensor * weight_matmul(ggml_context * ctx, const KernelConfig & kernels, ggml_tensor * weight, ggml_tensor * x,
                            bool on_gpu, GemmActivations activations, ggml_tensor * out_scale) {
    ggml_tensor * y;
    if (on_gpu) {
        y = gpu_mul_mat(ctx, weight, x);
    } else if (!gemm_f32_applies(kernels, weight, x)) {
        y = ggml_mul_mat(ctx, weight, x);
    } else {
        ggml_tensor * args[2] = {weight, x};
        y = ggml_custom_4d(ctx, GGML_TYPE_F32, weight->ne[1], x->ne[1], 1, 1, args, 2, gemm_f32_kernel,
                           GGML_N_TASKS_MAX, const_cast<GemmOp *>(gemm_op(kernels, activations)));
    }
    return out_scale != nullptr ? ggml_mul(ctx, y, out_scale) : y;
}

ggml_tensor * GraphBuilder::matmul(ggml_tensor * weight, ggml_tensor * x, GemmActivations activations,
                                   ggml_tensor * out_scale) {
    return weight_matmul(ctx, kernels, weight, x, w.on_gpu(weight), activations, out_scale);
}

// ggml_mul_mat for the GPU. ggml-cuda multiplies f16 operands through cuBLAS with f16 accumulation unless the
// node asks for f32: over a 2816-long dot product that is ~1e-2 relative error, a hundred times what the F16
// parity bound allows. Quantized weights take ggml's int8 kernels (f32 accumulation) and ignore the request;
// bf16 operands accumulate in f32 on Ampere and later anyway.
ggml_tensor * gpu_mul_mat(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b) {
    ggml_tensor * y = ggml_mul_mat(ctx, a, b);
    if (a->type == GGML_TYPE_F16 || b->type == GGML_TYPE_F16) {
        ggml_mul_mat_set_prec(y, GGML_PREC_F32);
    }
    return y;
}

// Expert matrices times their routed rows: our f32 GEMM where it applies, else ggml's mul_mat_id.
// out_scale [rows, n_expert]: each routed row's output is scaled by its expert's column.
ggml_tensor * GraphBuilder::matmul_id(ggml_tensor * experts, ggml_tensor * x, ggml_tensor * ids,
                                      ggml_tensor * out_scale) {
    ggml_tensor * y;
    if (w.on_gpu(experts) || !gemm_f32_id_applies(kernels, experts, x, ids)) {
        y = ggml_mul_mat_id(ctx, experts, x, ids);
    } else {
        ggml_tensor * args[3] = {experts, x, ids};
        y = ggml_custom_4d(ctx, GGML_TYPE_F32, experts->ne[1], ids->ne[0], ids->ne[1], 1, args, 3,
                           gemm_f32_id_kernel, GGML_N_TASKS_MAX,
                           const_cast<GemmOp *>(gemm_op(kernels, GemmActivations::kAuto)));
    }
    if (out_scale == nullptr) {
        return y;
    }
    ggml_tensor * s = ggml_get_rows(ctx, out_scale, ggml_reshape_1d(ctx, ids, ids->ne[0] * ids->ne[1]));
    return ggml_mul(ctx, y, ggml_reshape_3d(ctx, s, y->ne[0], y->ne[1], y->ne[2]));
}

// gelu_tanh(gate) * up as one exact custom node (cpu_ops.h): ggml_gelu on the CPU reads an f16 table, whose
// ~1e-3 relative error would show in HF parity, and the exact op chain costs ten graph nodes. When `weight` (a
// matrix of the same block, placed with the ones that produced gate: the MoE passes its down experts, which
// exist for fused and split gate/up alike) lives on a real GPU, ggml's fused GEGLU computes tanh in f32.
//
// On an RPC device the remote backend is unknown and may be a CPU, whose table GELU is too coarse for parity
// (bench/README.md, "Numerics behind graph choices"): there gelu_tanh is built from ggml's exact element-wise
// ops, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
ggml_tensor * geglu_tanh(ggml_context * ctx, ggml_tensor * gate, ggml_tensor * up, bool on_real_gpu, bool on_remote) {
    if (on_remote) {
        ggml_tensor * x = ggml_cont(ctx, gate);
        ggml_tensor * cube = ggml_mul(ctx, x, ggml_sqr(ctx, x));
        ggml_tensor * inner = ggml_scale(ctx, ggml_add(ctx, x, ggml_scale(ctx, cube, 0.044715f)), 0.7978845608028654f);
        ggml_tensor * half_one_plus_tanh = ggml_scale_bias(ctx, ggml_tanh(ctx, inner), 0.5f, 0.5f);
        return ggml_mul(ctx, ggml_mul(ctx, x, half_one_plus_tanh), up);
    }
    if (on_real_gpu) {
        return ggml_geglu_split(ctx, gate, up);
    }
    return ggml_map_custom2(ctx, gate, up, geglu_tanh_kernel, GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor * GraphBuilder::geglu(ggml_tensor * gate, ggml_tensor * up, const ggml_tensor * weight) {
    return geglu_tanh(ctx, gate, up, real_gpu && w.on_gpu(weight), w.on_remote(weight));
}

// cap * tanh(logits / cap): our one-pass CPU op, or three ggml ops (exact on every backend) on the GPU.
ggml_tensor * GraphBuilder::softcap(ggml_tensor * logits) {
    if (w.on_gpu(w.head)) {
        return ggml_scale(ctx, ggml_tanh(ctx, ggml_scale(ctx, logits, 1.0f / hp.softcap)), hp.softcap);
    }
    return ggml_map_custom1(ctx, logits, softcap_kernel, GGML_N_TASKS_MAX, const_cast<float *>(&hp.softcap));
}

ggml_tensor * attend_heads(ggml_context * ctx, const KernelConfig & kernels, ggml_tensor * q, ggml_tensor * k,
                          ggml_tensor * v, ggml_tensor * mask, bool on_gpu) {
    const int64_t D = q->ne[0];
    const int64_t H = q->ne[1];
    const int64_t T = q->ne[2];
    if (!on_gpu && attention_cpu_applies(kernels, q, k, v)) {
        ggml_tensor * args[4] = {q, k, v, mask};
        ggml_tensor * out = ggml_custom_4d(ctx, GGML_TYPE_F32, D, H, T, 1, args, mask != nullptr ? 4 : 3,
                                           attention_cpu_kernel, GGML_N_TASKS_MAX, nullptr);
        return ggml_reshape_2d(ctx, out, D * H, T);
    }
    ggml_tensor * qp = ggml_permute(ctx, q, 0, 2, 1, 3);                  // [D, T, H]
    ggml_tensor * kp = ggml_permute(ctx, k, 0, 2, 1, 3);                  // [D, Nk, Hkv]
    if (!on_gpu) {
        // ggml's CPU mul_mat computes the scores one dot product at a time; on the permuted views each of them
        // strides across heads. Contiguous per-head rows stream instead: an image's 2520 x 2520 scores per head
        // took the tower from 107 s to 86 s on 2 Zen 3 cores (bench/README.md, "Vision tower").
        qp = ggml_cont(ctx, qp);
        kp = ggml_cont(ctx, kp);
    }
    ggml_tensor * kq = gpu_mul_mat(ctx, kp, qp);                          // [Nk, T, H]; GQA by broadcast
    kq = ggml_soft_max_ext(ctx, kq, mask, 1.0f, 0.0f);                    // scale 1.0: q/k are normalised
    ggml_tensor * vt = ggml_cont(ctx, ggml_permute(ctx, v, 1, 2, 0, 3));  // [Nk, D, Hkv]
    ggml_tensor * out = gpu_mul_mat(ctx, vt, kq);                         // [D, T, H]
    return ggml_cont_2d(ctx, ggml_permute(ctx, out, 0, 2, 1, 3), D * H, T);
}

ggml_tensor * GraphBuilder::attend(ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * mask,
                                   const ggml_tensor * wq) {
    return attend_heads(ctx, kernels, q, k, v, mask, w.on_gpu(wq));
}

// An offloaded router picks its experts with ARGSORT + view: ggml-cuda sorts every token's row in one kernel, while
// its TOP_K runs one CUB call per token (bench/README.md, "MoE top-k on the GPU"). Same experts in another order,
// which changes only the rounding of the weighted sum, so the CPU keeps TOP_K and its results.
ggml_tensor * GraphBuilder::moe_topk(ggml_tensor * probs, int k, const ggml_tensor * router) {
    ggml_tensor * top = w.on_gpu(router) ? ggml_argsort_top_k(ctx, probs, k) : ggml_top_k(ctx, probs, k);
    return ggml_cont(ctx, top);
}

ggml_tensor * GraphBuilder::attention(int il, ggml_tensor * h, ggml_tensor * pos, int32_t n_past, bool encoder,
                                      ggml_tensor * mask) {
    const LayerWeights & l = w.layers[static_cast<size_t>(il)];
    const int64_t D = hp.head_dim(il);
    const int64_t n_kv = hp.n_head_kv[il];
    const int64_t T = h->ne[1];
    const bool swa = hp.is_swa[il];
    ggml_tensor * freq_factors = swa ? nullptr : w.rope_freqs;
    auto rope = [&](ggml_tensor * x) {
        return ggml_rope_ext(ctx, x, pos, freq_factors, static_cast<int>(D), GGML_ROPE_TYPE_NEOX, 0, hp.rope_base(il),
                             1.0f, 0.0f, 1.0f, 0.0f, 0.0f);
    };

    // q and k multiply unrounded activations also for quantized weights: q.k is not scaled down (q and k
    // are normalised instead), so their rounding goes straight into the softmax (bench/README.md, "Numerics
    // behind graph choices"); v and o gain little from it.
    const GemmActivations qk = GemmActivations::kF32;
    ggml_tensor * q = ggml_reshape_3d(ctx, matmul(l.wq, h, qk, l.wq_s), D, hp.n_head, T);
    q = named(rope(rms(q, l.q_norm)), "q", il);
    ggml_tensor * k_raw = ggml_reshape_3d(ctx, matmul(l.wk, h, qk, l.wk_s), D, n_kv, T);
    ggml_tensor * v_raw = l.wv != nullptr ? ggml_reshape_3d(ctx, matmul(l.wv, l.wv_s, h), D, n_kv, T) : k_raw;
    ggml_tensor * k = named(rope(rms(k_raw, l.k_norm)), "k", il);
    ggml_tensor * v = named(rms(v_raw, nullptr), "v", il);  // v_norm has no weight
    if (kv.type() != GGML_TYPE_F32) {
        k = ggml_cast(ctx, k, kv.type());
        v = ggml_cast(ctx, v, kv.type());
    }
    if (encoder) {
        kv.store(ctx, gf, il, n_past, k, v);
        if (il == hp.n_layer - 1) {
            return nullptr;  // nothing reads the last layer's output in encoder mode
        }
    }
    // Keys: the cached past this layer may see, then the current tokens (chunk or canvas).
    const int32_t key_begin = swa ? swa_first_key(hp, n_past) : 0;
    if (n_past > key_begin) {
        k = ggml_concat(ctx, kv.k_range(ctx, il, key_begin, n_past), k, 2);
        v = ggml_concat(ctx, kv.v_range(ctx, il, key_begin, n_past), v, 2);
    }
    ggml_tensor * kqv = named(attend(q, k, v, mask, l.wq), "kqv", il);  // [D * H, T]
    return named(matmul(l.wo, l.wo_s, kqv), "attn_out", il);
}

ggml_tensor * GraphBuilder::dense_ffn(int il, ggml_tensor * r) {
    const LayerWeights & l = w.layers[static_cast<size_t>(il)];
    ggml_tensor * h = rms(r, l.ffn_norm);
    ggml_tensor * act = geglu(matmul(l.ffn_gate, l.ffn_gate_s, h), matmul(l.ffn_up, l.ffn_up_s, h), l.ffn_gate);
    return named(rms(matmul(l.ffn_down, l.ffn_down_s, act), l.post_ffw_norm_1), "ffn_out", il);
}

ggml_tensor * GraphBuilder::moe(int il, ggml_tensor * r) {
    const LayerWeights & l = w.layers[static_cast<size_t>(il)];
    const int64_t T = r->ne[1];
    const int k = hp.n_expert_used;
    const int64_t F = hp.n_ff_exp;

    // Router on the un-normalised residual: rms(r) * scale / sqrt(n_embd).
    ggml_tensor * z = ggml_scale(ctx, ggml_mul(ctx, ggml_rms_norm(ctx, r, hp.rms_eps), l.gate_inp_scale),
                                 1.0f / std::sqrt(static_cast<float>(hp.n_embd)));
    ggml_tensor * probs = named(ggml_soft_max(ctx, matmul(l.gate_inp, z)), "ffn_moe_probs", il);  // [E, T]
    ggml_tensor * ids = moe_topk(probs, k, l.gate_inp);                                           // [k, T] i32
    ggml_tensor * weights = ggml_get_rows(ctx, ggml_reshape_3d(ctx, probs, 1, hp.n_expert, T), ids);  // [1, k, T]
    weights = ggml_reshape_2d(ctx, weights, k, T);
    weights = ggml_div(ctx, weights, ggml_sum_rows(ctx, weights));
    ggml_tensor * expert_scale = ggml_get_rows(ctx, ggml_reshape_2d(ctx, l.down_exps_scale, 1, hp.n_expert),
                                               ggml_reshape_1d(ctx, ids, k * T));  // [1, k*T]
    weights = ggml_mul(ctx, weights, ggml_reshape_2d(ctx, expert_scale, k, T));
    weights = ggml_reshape_3d(ctx, weights, 1, k, T);

    ggml_tensor * x = ggml_reshape_3d(ctx, rms(r, l.pre_ffw_norm_2), hp.n_embd, 1, T);
    ggml_tensor * gate;
    ggml_tensor * up;
    if (l.gate_up_exps != nullptr) {
        ggml_tensor * gu = matmul_id(l.gate_up_exps, x, ids, l.gate_up_exps_s);  // [2F, k, T], gate rows first
        gate = ggml_view_3d(ctx, gu, F, k, T, gu->nb[1], gu->nb[2], 0);  // strided halves: geglu reads them in place
        up = ggml_view_3d(ctx, gu, F, k, T, gu->nb[1], gu->nb[2], static_cast<size_t>(F) * gu->nb[0]);
    } else {
        gate = matmul_id(l.gate_exps, x, ids, l.gate_exps_s);
        up = matmul_id(l.up_exps, x, ids, l.up_exps_s);
    }
    ggml_tensor * act = geglu(gate, up, l.down_exps);                             // [F, k, T]
    ggml_tensor * y = ggml_mul(ctx, matmul_id(l.down_exps, act, ids, l.down_exps_s), weights);  // [E, k, T]
    ggml_tensor * sum = nullptr;
    for (int j = 0; j < k; ++j) {
        ggml_tensor * part = ggml_view_2d(ctx, y, hp.n_embd, T, y->nb[2], static_cast<size_t>(j) * y->nb[1]);
        sum = sum == nullptr ? part : ggml_add(ctx, sum, part);
    }
    if (k == 1) {
        sum = ggml_cont(ctx, sum);
    }
    return named(rms(sum, l.post_ffw_norm_2), "ffn_moe_out", il);
}

ggml_tensor * GraphBuilder::layer(int il, ggml_tensor * x, ggml_tensor * pos, int32_t n_past, bool encoder,
                                  ggml_tensor * mask) {
    const LayerWeights & l = w.layers[static_cast<size_t>(il)];
    ggml_tensor * a = attention(il, named(rms(x, l.attn_norm), "attn_norm", il), pos, n_past, encoder, mask);
    if (a == nullptr) {
        return nullptr;
    }
    ggml_tensor * r = named(ggml_add(ctx, x, rms(a, l.post_attn_norm)), "ffn_inp", il);
    ggml_tensor * ffn = ggml_add(ctx, dense_ffn(il, r), moe(il, r));
    ggml_tensor * out = ggml_add(ctx, r, rms(ffn, l.post_ffw_norm));
    return named(ggml_mul(ctx, out, encoder ? l.enc_scale : l.dec_scale), "l_out", il);
}

GraphInputs GraphBuilder::build_encoder(int32_t n_past, int32_t n_tokens, int32_t n_image_rows) {
    GraphInputs in;
    in.ids = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
    in.pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
    const int32_t n_keys_full = n_past + n_tokens;
    const int32_t n_keys_swa = n_past + n_tokens - swa_first_key(hp, n_past);
    in.mask_full = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_keys_full, n_tokens);
    in.mask_swa = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_keys_swa, n_tokens);
    for (ggml_tensor * t : {in.ids, in.pos, in.mask_full, in.mask_swa}) {
        ggml_set_input(t);
    }
    ggml_tensor * x = ggml_scale(ctx, ggml_get_rows(ctx, w.tok_embd, in.ids), hp.embed_scale);
    if (n_image_rows > 0) {
        in.image_embd = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.n_embd, n_image_rows);
        in.embd_rows = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_tokens);
        ggml_set_input(in.image_embd);
        ggml_set_input(in.embd_rows);
        x = ggml_get_rows(ctx, ggml_concat(ctx, x, in.image_embd, 1), in.embd_rows);
    }
    x = named(x, "inp_embd");
    for (int il = 0; il < hp.n_layer && x != nullptr; ++il) {
        x = layer(il, x, in.pos, n_past, true, hp.is_swa[il] ? in.mask_swa : in.mask_full);
    }
    return in;
}

GraphInputs GraphBuilder::build_decoder(int32_t n_past, int32_t n_canvas, bool with_sc, float sc_scale,
                                        const ScTopkParams * sc_topk, ggml_tensor * sc_probs,
                                        ggml_tensor * sc_logits_on_device) {
    GraphInputs in;
    in.ids = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_canvas);
    in.pos = ggml_new_tensor_1d(ctx, GGML_TYPE_I32, n_canvas);
    ggml_set_input(in.ids);
    ggml_set_input(in.pos);
    ggml_tensor * x = named(ggml_scale(ctx, ggml_get_rows(ctx, w.tok_embd, in.ids), hp.embed_scale), "inp_embd");
    if (with_sc && w.sc_gate != nullptr) {
        if (sc_logits_on_device != nullptr) {
            in.sc_logits = sc_logits_on_device;  // already there: not an input
        } else if (sc_probs == nullptr) {
            in.sc_logits = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, hp.n_vocab, n_canvas);
            ggml_set_input(in.sc_logits);
        }
        ggml_tensor * soft;  // probs @ E: [n_embd, C]
        if (sc_probs != nullptr) {
            // bf16 probabilities against the bf16 embd_t of an offloaded head (weights.cpp): tensor cores with
            // f32 accumulation. An F32 file's f32 embd_t gets them cast to f32.
            ggml_tensor * probs = sc_probs->type == w.embd_t->type ? sc_probs : ggml_cast(ctx, sc_probs, w.embd_t->type);
            soft = ggml_mul_mat(ctx, w.embd_t, probs);
        } else if (sc_topk != nullptr) {
            soft = sc_topk_soft_embedding(ctx, in.sc_logits, w.tok_embd, sc_topk);
        } else {
            // probs stay f32: the GEMM reads the f16 embd_t directly, and ggml's mul_mat converts them itself
            // where the GEMM does not apply (casting them to f16 here would round them once more).
            ggml_tensor * probs = ggml_soft_max_ext(ctx, in.sc_logits, nullptr, sc_scale, 0.0f);  // [V, C]
            // A quantized file's f16 embedding copy (weights.cpp) multiplies on the bf16 path like its other
            // weights; an F16 or F32 file's stays exact.
            const ggml_type e_type = w.tok_embd->type;
            const bool quantized = e_type != GGML_TYPE_F32 && e_type != GGML_TYPE_F16 && e_type != GGML_TYPE_BF16;
            soft = matmul(w.embd_t, probs, quantized ? GemmActivations::kBf16 : GemmActivations::kAuto);
        }
        soft = named(ggml_scale(ctx, soft, hp.embed_scale), "sc_soft");
        ggml_tensor * u = rms(soft, w.sc_pre_norm);
        ggml_tensor * act = geglu(matmul(w.sc_gate, w.sc_gate_s, u), matmul(w.sc_up, w.sc_up_s, u), w.sc_gate);
        x = ggml_add(ctx, x, matmul(w.sc_down, w.sc_down_s, act));
    }
    x = named(rms(x, nullptr), kNodeScOut);  // self_conditioning.post_norm (no weight), applied on every step
    for (int il = 0; il < hp.n_layer; ++il) {
        x = layer(il, x, in.pos, n_past, false, nullptr);
    }
    x = named(rms(x, w.output_norm), kNodeHeadIn);
    ggml_tensor * logits = named(softcap(matmul(w.head, x)), "logits");  // tied head: [V, C]
    ggml_set_output(logits);
    in.logits = logits;
    ggml_build_forward_expand(gf, logits);
    return in;
}

}  // namespace dg
