// Where each part of the model lives when layers are offloaded to a GPU (n_gpu_layers, main_gpu, cpu_moe,
// n_cpu_moe), what that costs on the GPU, and the check that it fits there before anything is uploaded.
//
// Layers are offloaded from the last one down (llama.cpp's convention): n_gpu_layers=k puts layers
// n_layer-k .. n_layer-1 on the GPU; -1, or more than n_layer, also puts the head there (output norm, the
// tied LM head, self-conditioning and its transposed embedding), so the logits never leave the GPU. The
// token embedding read by get_rows always stays in the host mapping: the lookup touches C rows per pass.
#pragma once

#include "diffgemma.h"
#include "gpu_devices.h"
#include "hparams.h"
#include "weights.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dg {

struct Placement {
    bool use_gpu = false;
    int gpu_index = -1;
    Gpu gpu;
    std::vector<uint8_t> layer_on_gpu;     // attention, dense FFN, router and norms (and experts, unless below)
    std::vector<uint8_t> experts_on_host;  // expert matrices of an offloaded layer kept in host memory
    bool head_on_gpu = false;

    // True when layer tensor `m` of layer il lives on the GPU.
    bool offloads(int il, ggml_tensor * LayerWeights::* m) const {
        return layer_on_gpu[il] != 0 && (experts_on_host[il] == 0 || !is_expert_tensor(m));
    }
    int n_layers_on_gpu() const;
    // "layers 20-29 of 30, experts of 25 of them in host memory, head on the GPU"
    std::string summary() const;
};

// Validates the offload parameters and picks the GPU. Throws dg::Error: a bad value, or offload asked for
// on a build or machine without a GPU.
Placement plan_placement(const HParams & hp, const diffgemma_model_params & p);

// Bytes the GPU holds for the weights of a placement: the layers without their experts, the experts, and
// the head (its device copy of the embedding included, plus the transposed copy for self-conditioning).
struct GpuWeightBytes {
    size_t layers = 0;
    size_t experts = 0;
    size_t head = 0;
    size_t total() const { return layers + experts + head; }
};
GpuWeightBytes gpu_weight_bytes(const HParams & hp, const Weights & w, const Placement & pl);

// Device memory one decoder pass needs besides weights and KV cache, estimated from the shapes: the logits
// and the self-conditioning input and probabilities (V x C each), the attention scores of the widest layer
// at n_ctx, the per-layer activations, and ggml-cuda's pool (with an offloaded f16 head, its f32 copy). Used for
// the plan before any graph exists.
size_t estimate_gpu_compute_bytes(const HParams & hp, const Weights & w, int32_t n_ctx, const Placement & pl);

// KV cache bytes of the offloaded layers at n_ctx (f32 cache, ring slack as diffgemma_context_new uses).
size_t estimate_gpu_kv_bytes(const HParams & hp, const Placement & pl, int32_t n_ctx);

// The memory plan: logged before the weights are uploaded (to stderr without a log callback, so a user
// sees where the memory goes), and an error when the GPU cannot hold the weights, the compute buffers and
// the KV cache of a minimal context. The error says how much is missing and which setting would fit; with
// p.fit that setting replaces `pl` instead. Returns the plan's text ("" for CPU only).
std::string check_and_announce_plan(const HParams & hp, const Weights & w, Placement & pl,
                                    const diffgemma_model_params & p);

// Before a context allocates its KV cache: the offloaded layers' cache (kv_bytes_at(n_ctx)) and the compute
// buffers must fit in what the GPU has free now (the stand-in: its size less the offloaded weights). The error
// names the largest n_ctx that fits.
void check_context_fits(const HParams & hp, const Weights & w, const Placement & pl, int32_t n_ctx,
                        const std::function<size_t(int32_t)> & kv_bytes_at);

}  // namespace dg
