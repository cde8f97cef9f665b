// Builders of the two ggml graphs: the causal encoder pass (clean tokens -> KV cache) and the
// bidirectional decoder pass (canvas + cache + self-conditioning -> softcapped logits). Spec 4.2-4.4.
#pragma once

#include "core/kernel_config.h"
#include "graph/kv_cache.h"
#include "kernels/gemm_f32.h"
#include "kernels/sc_topk.h"
#include "loader/hparams.h"
#include "loader/weights.h"

#include "ggml.h"

#include <vector>

namespace dg {

// Names of the decoder's boundary nodes (set here, found by the timing split callback, timing.h).
inline constexpr const char * kNodeScOut = "sc_out";         // canvas input after self-conditioning
inline constexpr const char * kNodeHeadIn = "result_norm";   // the head's input: the last layer's output, normed

// Graph inputs the caller fills after allocation (nullptr when unused).
struct GraphInputs {
    ggml_tensor * ids = nullptr;        // [T] i32 token ids
    ggml_tensor * image_embd = nullptr; // [n_embd, R] f32 projected image features (encoder chunks with images)
    ggml_tensor * embd_rows = nullptr;  // [T] i32: row t of the input is token t's embedding (t < T) or image
                                        // feature row (T + r), over [token embeddings | image_embd]
    ggml_tensor * pos = nullptr;        // [T] i32 absolute positions
    ggml_tensor * mask_full = nullptr;  // [n_keys_full, T] f32 causal mask (encoder)
    ggml_tensor * mask_swa = nullptr;   // [n_keys_swa, T] f32 causal + window mask (encoder)
    ggml_tensor * sc_logits = nullptr;  // [n_vocab, C] f32 previous step's processed logits (decoder)
    ggml_tensor * logits = nullptr;     // [n_vocab, C] f32 output (decoder)
};

// The op helpers the graph builders share (the text model's GraphBuilder, the vision tower's vision_graph.h). Each is
// told where its weight lives: `on_gpu` (an offloaded copy: ggml's ops, which every backend has, instead of our CPU
// custom ops), `on_real_gpu` (on a real device, not the test stand-in), `on_remote` (an RPC device, whose backend may
// be a CPU with ggml's f16-table GELU: exact element-wise ops instead).
// weight [K, N] times x [K, T]; `out_scale`: an NVFP4 weight's per-row second-level scale (weights.h) or nullptr.
ggml_tensor * weight_matmul(ggml_context * ctx, const KernelConfig & kernels, ggml_tensor * weight, ggml_tensor * x,
                            bool on_gpu, GemmActivations activations = GemmActivations::kAuto,
                            ggml_tensor * out_scale = nullptr);
// ggml_mul_mat with f32 accumulation asked for where an operand is f16 (ggml-cuda's cuBLAS path).
ggml_tensor * gpu_mul_mat(ggml_context * ctx, ggml_tensor * a, ggml_tensor * b);
// gelu_tanh(gate) * up, exact on every backend (ggml's CPU gelu reads an f16 table).
ggml_tensor * geglu_tanh(ggml_context * ctx, ggml_tensor * gate, ggml_tensor * up, bool on_real_gpu, bool on_remote);
// Names a node "name-il" (il >= 0) or "name", as HF's modules are named, for the tensor dump
// (diffgemma_set_tensor_callback); returns it.
ggml_tensor * named_node(ggml_tensor * t, const char * name, int il = -1);
// RMSNorm, then times `weight` as is (Gemma's norms; nullptr: no weight).
ggml_tensor * rms_norm(ggml_context * ctx, ggml_tensor * x, ggml_tensor * weight, float eps);
// softmax(q k^T + mask) v per head, scale 1 (q and k are normalised), GQA by broadcast; q [D, H, T], k and v
// [D, Hkv, Nk], mask [Nk, T] or nullptr: [D * H, T].
ggml_tensor * attend_heads(ggml_context * ctx, const KernelConfig & kernels, ggml_tensor * q, ggml_tensor * k,
                           ggml_tensor * v, ggml_tensor * mask, bool on_gpu);

struct GraphBuilder {
    const HParams & hp;
    const Weights & w;
    const KvCache & kv;
    ggml_context * ctx;
    ggml_cgraph * gf;
    // The offload GPU is a real device (not the test stand-in, gpu_devices.h): element-wise work on its layers
    // must use ggml's ops too. The stand-in keeps our exact CPU geglu, since ggml's CPU gelu reads an f16 table
    // (unless DIFFGEMMA_TEST_GPU_GRAPH asks for the real device's graph: diffgemma_context::gpu_graph).
    bool real_gpu = false;
    // The context's kernel choices (kernel_config.h): which of our CPU ops the nodes on the CPU use.
    const KernelConfig & kernels;

    // Encoder: writes K/V of positions [n_past, n_past+T) into the cache. The last layer stops after K/V.
    // With n_image_rows > 0, image soft tokens take their input from image_embd (unscaled, as HF's
    // masked_scatter of the projector's features) instead of the scaled token embedding.
    GraphInputs build_encoder(int32_t n_past, int32_t n_tokens, int32_t n_image_rows = 0);

    // Decoder over one canvas at positions [n_past, n_past+C); reads but never writes the cache.
    // With `with_sc`, the canvas input adds the self-conditioning MLP of softmax(sc_logits*sc_scale) @ E;
    // `sc_topk` (nullptr = exact) replaces that product by its top-k approximation (sc_topk.h), whose own
    // scale field is used then.
    // `sc_probs` (device sampler, nullptr otherwise): the previous step's probabilities, already computed
    // on the GPU [n_vocab, C] (f16 or bf16); they replace softmax(sc_logits) and sc_logits is not an input.
    // `sc_logits_on_device` (GgmlStepSampler, nullptr otherwise): the previous step's f32 logits / T kept on
    // the head's device; the graph reads them as it reads host sc_logits, without an input upload.
    GraphInputs build_decoder(int32_t n_past, int32_t n_canvas, bool with_sc, float sc_scale,
                              const ScTopkParams * sc_topk = nullptr, ggml_tensor * sc_probs = nullptr,
                              ggml_tensor * sc_logits_on_device = nullptr);

  private:
    // Names a node "name-il" (il >= 0) or "name", as HF's modules are named, for the tensor dump
    // (diffgemma_set_tensor_callback); returns it.
    ggml_tensor * named(ggml_tensor * t, const char * name, int il = -1);
    // The placement-dependent helpers: each picks the op for where its weight lives (our CPU custom op, ggml's op
    // on a GPU, exact element-wise ops on an RPC server), so the block functions below read as the model's math.
    ggml_tensor * rms(ggml_tensor * x, ggml_tensor * weight);
    ggml_tensor * geglu(ggml_tensor * gate, ggml_tensor * up, const ggml_tensor * weight);
    ggml_tensor * softcap(ggml_tensor * logits);
    // `out_scale`: an NVFP4 weight's per-row second-level scale (weights.h), multiplied into the output; nullptr
    // for every other weight.
    ggml_tensor * matmul(ggml_tensor * weight, ggml_tensor * x, GemmActivations activations = GemmActivations::kAuto,
                         ggml_tensor * out_scale = nullptr);
    ggml_tensor * matmul(ggml_tensor * weight, ggml_tensor * out_scale, ggml_tensor * x) {
        return matmul(weight, x, GemmActivations::kAuto, out_scale);
    }
    ggml_tensor * matmul_id(ggml_tensor * experts, ggml_tensor * x, ggml_tensor * ids, ggml_tensor * out_scale);
    // softmax(q k^T + mask) v per head, GQA by broadcast: [D * H, T]. `wq` tells where the layer lives.
    ggml_tensor * attend(ggml_tensor * q, ggml_tensor * k, ggml_tensor * v, ggml_tensor * mask, const ggml_tensor * wq);
    // The ids [k, T] of the k largest router probabilities of each token; `router` tells where the router lives.
    ggml_tensor * moe_topk(ggml_tensor * probs, int k, const ggml_tensor * router);
    // The block functions: the model's math (spec 4.2-4.4), blocks named per layer.
    ggml_tensor * attention(int il, ggml_tensor * h, ggml_tensor * pos, int32_t n_past, bool encoder,
                            ggml_tensor * mask);
    ggml_tensor * dense_ffn(int il, ggml_tensor * r);
    ggml_tensor * moe(int il, ggml_tensor * r);
    ggml_tensor * layer(int il, ggml_tensor * x, ggml_tensor * pos, int32_t n_past, bool encoder, ggml_tensor * mask);
};

// First cached position a sliding layer may read when the next query is at `n_past` (window n_swa keeps
// the query itself plus n_swa-1 previous keys).
int32_t swa_first_key(const HParams & hp, int32_t n_past);

// An image's soft tokens, positions [begin, end): with bidirectional vision attention they see each other.
struct PositionSpan {
    int32_t begin = 0;
    int32_t end = 0;
};

// Fills an encoder mask [n_keys, T]: 0 where query t (position n_past+t) may see key j (causal, within `window`
// when > 0, or in the same span of `spans`), -inf elsewhere.
void fill_encoder_mask(float * mask, int32_t key_begin, int32_t n_past, int32_t n_tokens, int32_t window,
                       const std::vector<PositionSpan> & spans = {});

}  // namespace dg
