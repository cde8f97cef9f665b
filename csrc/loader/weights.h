// The model's tensors: created from the GGUF's tensor infos with their expected shapes, backed by the
// memory-mapped file (CPU) so loading costs no copy.
#pragma once

#include "loader/hparams.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <initializer_list>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

struct gguf_context;

namespace dg {

struct LayerWeights {
    ggml_tensor * attn_norm = nullptr;        // [n_embd]
    ggml_tensor * wq = nullptr;               // [n_embd, n_head*D]
    ggml_tensor * wk = nullptr;               // [n_embd, n_kv*D]
    ggml_tensor * wv = nullptr;               // [n_embd, n_kv*D]; nullptr on full layers (V = raw K projection)
    ggml_tensor * wo = nullptr;               // [n_head*D, n_embd]
    ggml_tensor * q_norm = nullptr;           // [D]
    ggml_tensor * k_norm = nullptr;           // [D]
    ggml_tensor * post_attn_norm = nullptr;   // [n_embd]
    ggml_tensor * ffn_norm = nullptr;         // [n_embd]  pre-norm of the dense MLP
    ggml_tensor * ffn_gate = nullptr;         // [n_embd, n_ff]
    ggml_tensor * ffn_up = nullptr;           // [n_embd, n_ff]
    ggml_tensor * ffn_down = nullptr;         // [n_ff, n_embd]
    ggml_tensor * post_ffw_norm_1 = nullptr;  // [n_embd]  after the dense MLP
    ggml_tensor * gate_inp = nullptr;         // [n_embd, n_expert] router
    ggml_tensor * gate_inp_scale = nullptr;   // [n_embd] router input scale
    ggml_tensor * pre_ffw_norm_2 = nullptr;   // [n_embd]  experts' input norm
    ggml_tensor * gate_up_exps = nullptr;     // [n_embd, 2*n_ff_exp, n_expert] gate rows first; or split:
    ggml_tensor * gate_exps = nullptr;        // [n_embd, n_ff_exp, n_expert]
    ggml_tensor * up_exps = nullptr;          // [n_embd, n_ff_exp, n_expert]
    ggml_tensor * down_exps = nullptr;        // [n_ff_exp, n_embd, n_expert]
    ggml_tensor * down_exps_scale = nullptr;  // [n_expert] per-expert output scale
    ggml_tensor * post_ffw_norm_2 = nullptr;  // [n_embd]  after the MoE
    ggml_tensor * post_ffw_norm = nullptr;    // [n_embd]  after dense + MoE
    ggml_tensor * dec_scale = nullptr;        // [1] decoder (canvas) layer scalar
    ggml_tensor * enc_scale = nullptr;        // [1] encoder (clean tokens) layer scalar
    // NVFP4 weights' second-level scales (optional, f32, one per output row; [rows, n_expert] for experts): the
    // product's output is multiplied by them (GraphBuilder::matmul / matmul_id).
    ggml_tensor * wq_s = nullptr;
    ggml_tensor * wk_s = nullptr;
    ggml_tensor * wv_s = nullptr;
    ggml_tensor * wo_s = nullptr;
    ggml_tensor * ffn_gate_s = nullptr;
    ggml_tensor * ffn_up_s = nullptr;
    ggml_tensor * ffn_down_s = nullptr;
    ggml_tensor * gate_up_exps_s = nullptr;
    ggml_tensor * gate_exps_s = nullptr;
    ggml_tensor * up_exps_s = nullptr;
    ggml_tensor * down_exps_s = nullptr;
};

// Every tensor member of LayerWeights, in one list, so that placement and byte counts cannot miss one (the
// static_assert fails when a member is added without being listed).
inline constexpr ggml_tensor * LayerWeights::* kLayerTensors[] = {
    &LayerWeights::attn_norm, &LayerWeights::wq, &LayerWeights::wk, &LayerWeights::wv, &LayerWeights::wo,
    &LayerWeights::q_norm, &LayerWeights::k_norm, &LayerWeights::post_attn_norm, &LayerWeights::ffn_norm,
    &LayerWeights::ffn_gate, &LayerWeights::ffn_up, &LayerWeights::ffn_down, &LayerWeights::post_ffw_norm_1,
    &LayerWeights::gate_inp, &LayerWeights::gate_inp_scale, &LayerWeights::pre_ffw_norm_2,
    &LayerWeights::gate_up_exps, &LayerWeights::gate_exps, &LayerWeights::up_exps, &LayerWeights::down_exps,
    &LayerWeights::down_exps_scale, &LayerWeights::post_ffw_norm_2, &LayerWeights::post_ffw_norm,
    &LayerWeights::dec_scale, &LayerWeights::enc_scale, &LayerWeights::wq_s, &LayerWeights::wk_s,
    &LayerWeights::wv_s, &LayerWeights::wo_s, &LayerWeights::ffn_gate_s, &LayerWeights::ffn_up_s,
    &LayerWeights::ffn_down_s, &LayerWeights::gate_up_exps_s, &LayerWeights::gate_exps_s, &LayerWeights::up_exps_s,
    &LayerWeights::down_exps_s,
};
static_assert(sizeof(LayerWeights) == sizeof(kLayerTensors) / sizeof(kLayerTensors[0]) * sizeof(ggml_tensor *),
              "a LayerWeights member is missing from kLayerTensors");

// The expert matrices (and their NVFP4 scales, which stay with them): what cpu_moe / n_cpu_moe keep in host memory.
inline bool is_expert_tensor(ggml_tensor * LayerWeights::* m) {
    return m == &LayerWeights::gate_up_exps || m == &LayerWeights::gate_exps || m == &LayerWeights::up_exps ||
           m == &LayerWeights::down_exps || m == &LayerWeights::gate_up_exps_s || m == &LayerWeights::gate_exps_s ||
           m == &LayerWeights::up_exps_s || m == &LayerWeights::down_exps_s;
}

struct Weights {
    ggml_tensor * tok_embd = nullptr;      // [n_embd, n_vocab]; also the tied LM head
    ggml_tensor * output_norm = nullptr;   // [n_embd]
    ggml_tensor * rope_freqs = nullptr;    // [head_dim_full/2] or nullptr (then full layers rotate fully)
    ggml_tensor * sc_pre_norm = nullptr;   // self-conditioning MLP; all four or none
    ggml_tensor * sc_gate = nullptr;       // [n_embd, n_ff]
    ggml_tensor * sc_up = nullptr;         // [n_embd, n_ff]
    ggml_tensor * sc_down = nullptr;       // [n_ff, n_embd]
    ggml_tensor * sc_gate_s = nullptr;     // NVFP4 second-level scales of the three (optional, see LayerWeights)
    ggml_tensor * sc_up_s = nullptr;
    ggml_tensor * sc_down_s = nullptr;
    ggml_tensor * embd_t = nullptr;        // [n_vocab, n_embd] transposed copy of tok_embd for probs @ E (ours)
    ggml_tensor * head = nullptr;          // the tied LM head: tok_embd, or its GPU copy when the head is offloaded
    std::vector<LayerWeights> layers;
    std::unordered_set<const ggml_tensor *> gpu_tensors;  // the offloaded copies (WeightStore::place)
    std::unordered_set<const ggml_tensor *> remote_tensors;  // those of them on an RPC server's device

    // True for a weight (or a view of one) offloaded to the GPU: the graph then builds it with ggml's own ops,
    // which every backend has, instead of our CPU custom ops. (Kept as a set rather than compared by buffer:
    // ggml splits an allocation larger than a buffer type's maximum size into several buffers.)
    bool on_gpu(const ggml_tensor * t) const {
        if (t != nullptr && t->view_src != nullptr) {
            t = t->view_src;
        }
        return t != nullptr && gpu_tensors.count(t) != 0;
    }
    // True for a weight on an RPC device, whose backend (possibly a CPU) this process cannot see.
    bool on_remote(const ggml_tensor * t) const {
        if (t != nullptr && t->view_src != nullptr) {
            t = t->view_src;
        }
        return t != nullptr && remote_tensors.count(t) != 0;
    }
};

// The head's tensors besides the tied embedding (Weights::head): what an offloaded head takes to the GPU with
// it. One list for placement, byte counts and the memory plan.
inline constexpr ggml_tensor * Weights::* kHeadTensors[] = {
    &Weights::output_norm, &Weights::sc_pre_norm, &Weights::sc_gate, &Weights::sc_up, &Weights::sc_down, &Weights::embd_t,
    &Weights::sc_gate_s, &Weights::sc_up_s, &Weights::sc_down_s,
};

struct Gpu;

// How a bound tensor is read, which decides the types it may have.
enum class TensorRole {
    Vector,  // norms and scalars: read by element-wise ops, must be F32
    Matrix,  // multiplied by mul_mat / mul_mat_id: any type the CPU backend can multiply
    Embed,   // read by get_rows and mul_mat
};

// Finds a tensor of a GGUF's metadata context with its expected shape (ggml ne order) and a type its role allows;
// errors name the tensor. Records the names it bound (`used`) and the f32 vectors (`vectors`, for check_finite).
class TensorBinder {
  public:
    TensorBinder(ggml_context * meta, std::set<std::string> & used, std::vector<ggml_tensor *> & vectors);
    // nullptr when absent and not required; throws dg::Error otherwise.
    ggml_tensor * get(const std::string & name, std::initializer_list<int64_t> shape, bool required, TensorRole role);

  private:
    ggml_context * meta_;
    std::set<std::string> & used_;
    std::vector<ggml_tensor *> & vectors_;
};

// Norm weights and scales multiply every activation: one NaN or infinity in them turns every output into NaN.
// Reads every (mapped) f32 vector; throws DIFFGEMMA_ERR_BAD_FORMAT naming the tensor and the index.
void check_finite(const std::vector<ggml_tensor *> & vectors);

// A GGUF file mapped read-only, with every tensor of its metadata context bound to the mapping (in one CPU buffer
// that wraps it: no copy). Checks each tensor's size, alignment and extent against the file.
class GgufMapping {
  public:
    GgufMapping() = default;
    GgufMapping(const GgufMapping &) = delete;
    GgufMapping & operator=(const GgufMapping &) = delete;
    ~GgufMapping();
    void map(const std::string & path, gguf_context * gguf, ggml_context * meta_ctx);  // throws dg::Error

  private:
    void * map_ = nullptr;
    size_t map_size_ = 0;
    ggml_backend_buffer_t buf_ = nullptr;
};

// Owns the mapping, the ggml contexts and buffers behind Weights.
class WeightStore {
  public:
    WeightStore() = default;
    WeightStore(const WeightStore &) = delete;
    WeightStore & operator=(const WeightStore &) = delete;
    ~WeightStore();

    // Maps `path`, binds every tensor of `meta_ctx` (created by gguf_init_from_file with no_alloc) to the
    // mapping, and fills `w` with the expected tensors (shape- and type-checked). Throws dg::Error.
    void load(const std::string & path, gguf_context * gguf, ggml_context * meta_ctx, HParams & hp, Weights & w,
              int n_threads);

    // One device's share of an offload (place_weights, placement.h): copies of the tensors behind `slots` in one
    // buffer there, and `w` repointed at them (the mapping keeps the originals). Throws dg::Error.
    void place_on(const Gpu & gpu, const std::vector<ggml_tensor **> & slots, Weights & w);

    // Frees the host copy of the transposed embedding (no reader is left once the head is offloaded).
    void free_host_embd_t();

  private:

    GgufMapping mapping_;  // first: destroyed last, after the buffers copied from it
    ggml_context * derived_ctx_ = nullptr;
    ggml_backend_buffer_t derived_buf_ = nullptr;
    std::vector<ggml_context *> gpu_ctxs_;           // one per offload device that holds weights
    std::vector<ggml_backend_buffer_t> gpu_bufs_;
};

}  // namespace dg
