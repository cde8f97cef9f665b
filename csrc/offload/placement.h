// Where each part of the model lives when layers are offloaded (n_gpu_layers, main_gpu, tensor_split, devices,
// cpu_moe, n_cpu_moe), what that costs on each device, and the check that it fits before anything is uploaded.
//
// Layers are offloaded from the last one down (llama.cpp's convention): n_gpu_layers=k puts layers
// n_layer-k .. n_layer-1 on the devices; -1, or more than n_layer, also puts the head (output norm, the tied
// LM head, self-conditioning and its transposed embedding) on the last layer's device, so the logits never
// leave it. Over several devices the offloaded layers are cut into consecutive runs, one per device in
// order (llama.cpp's layer split), sized by tensor_split or by each device's free memory. The token
// embedding read by get_rows always stays in the host mapping: the lookup touches C rows per pass.
#pragma once

#include "diffgemma.h"
#include "devices/gpu_devices.h"
#include "loader/hparams.h"
#include "loader/mmproj.h"
#include "loader/weights.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace dg {

struct Placement {
    bool use_gpu = false;
    std::vector<Gpu> devices;              // the offload devices in layer order: earlier layers on earlier devices
    std::vector<int> device_index;         // their indices in list_gpus() ("GPU k" in the plan, main_gpu's k)
    std::vector<double> split;             // each device's share of the offloaded layers (tensor_split, or free memory)
    std::vector<int> layer_device;         // per layer: index into `devices`, -1 = host
    std::vector<uint8_t> layer_on_gpu;     // layer_device >= 0: attention, dense FFN, router and norms (and
                                           // experts, unless below)
    std::vector<uint8_t> experts_on_host;  // expert matrices of an offloaded layer kept in host memory
    bool head_on_gpu = false;
    int head_device = -1;                  // the device of the last layer, when the head is offloaded

    // True when layer tensor `m` of layer il lives on an offload device.
    bool offloads(int il, ggml_tensor * LayerWeights::* m) const {
        return layer_on_gpu[il] != 0 && (experts_on_host[il] == 0 || !is_expert_tensor(m));
    }
    // The same, on device d only.
    bool offloads_to(int il, ggml_tensor * LayerWeights::* m, int d) const {
        return layer_device[il] == d && offloads(il, m);
    }
    // The layer mask of device d (KvCache::bytes_for's shape).
    std::vector<uint8_t> layers_on(int d) const;
    const Gpu & head_gpu() const { return devices[static_cast<size_t>(head_device)]; }
    int n_layers_on_gpu() const;
    // "layers 20-29 of 30 (experts of 5 of them in host memory), head on GPU 1"
    std::string summary() const;
};

// Layers per device for k offloaded layers split by `split` (proportions): largest remainders, ties to the
// earlier device. {3, 1} over 30 layers gives {23, 7}.
std::vector<int> split_layer_counts(int k, const std::vector<double> & split);

// Validates the offload parameters and picks the devices (main_gpu >= 0: that one; else every device, or those
// `devices` names, sharing the layers by tensor_split or by free memory). Throws dg::Error: a bad value, or
// offload asked for on a build or machine without an offload device.
Placement plan_placement(const HParams & hp, const diffgemma_model_params & p);

// Bytes the GPU holds for the weights of a placement: the layers without their experts, the experts, and
// the head (its device copy of the embedding included, plus the transposed copy for self-conditioning).
struct GpuWeightBytes {
    size_t layers = 0;
    size_t experts = 0;
    size_t head = 0;
    size_t total() const { return layers + experts + head; }
};
// On device d, or on every device with d = -1.
GpuWeightBytes gpu_weight_bytes(const HParams & hp, const Weights & w, const Placement & pl, int d = -1);

// Memory one decoder pass needs on device d besides weights and KV cache, estimated from the shapes: the logits
// and the self-conditioning input and probabilities (V x C each), the attention scores of the widest layer
// at n_ctx, the per-layer activations, and ggml-cuda's pool (with an offloaded f16 head, its f32 copy). Used for
// the plan before any graph exists.
// (head parts on the head's device only; nothing on a device without layers).
size_t estimate_gpu_compute_bytes(const HParams & hp, const Weights & w, int32_t n_ctx, const Placement & pl, int d);

// KV cache bytes of device d's layers at n_ctx (f32 cache, ring slack as diffgemma_context_new uses).
size_t estimate_gpu_kv_bytes(const HParams & hp, const Placement & pl, int32_t n_ctx, int d);

// The memory plan, per device: logged before the weights are uploaded (to stderr without a log callback, so a
// user sees where the memory goes), and an error when a device cannot hold its weights, compute buffers and
// the KV cache of a minimal context. The error says how much is missing where and which setting would fit
// (another tensor_split, more experts in host memory, fewer layers); with p.fit that setting replaces `pl`
// instead. Returns the plan's text ("" for CPU only).
std::string check_and_announce_plan(const HParams & hp, const Weights & w, Placement & pl,
                                    const diffgemma_model_params & p);

// Copies the weights `pl` offloads into one buffer per device and repoints `w` at the copies (the mapping keeps
// the originals: the host layers and the input embedding read them there). Throws dg::Error.
void place_weights(const HParams & hp, const Placement & pl, WeightStore & store, Weights & w);

// With anything offloaded, the projector's weights go to the device of the first offloaded layer (the vision
// tower runs before the text layers read its output); `w` records the copies (Weights::on_gpu) as for the text
// weights, whose store owns them. Not in the memory plan. Throws dg::Error.
void place_vision_weights(const Placement & pl, WeightStore & store, Weights & w, VisionModel & vision);

// Before a context allocates its KV cache: each device's share of the cache (kv_bytes_at(n_ctx, d)) and its
// compute buffers must fit in what it has free now (a stand-in: its size less its weights). The error names
// the device and the largest n_ctx that fits.
void check_context_fits(const HParams & hp, const Weights & w, const Placement & pl, int32_t n_ctx,
                        const std::function<size_t(int32_t, int)> & kv_bytes_at);

}  // namespace dg
