#include "offload/placement.h"

#include "core/errors.h"
#include "graph/kv_cache.h"

#include <algorithm>
#include <cmath>

namespace dg {

namespace {

constexpr double kMiB = 1048576.0;
constexpr double kGiB = 1073741824.0;

// Fills the per-layer flags from a layer count per device (counts sum to the offloaded layers); the
// parameters are already validated.
void lay_out_counts(const HParams & hp, int32_t n_gpu_layers, const std::vector<int> & counts, bool cpu_moe,
                    int32_t n_cpu_moe, Placement & pl) {
    const int32_t n = hp.n_layer;
    const bool all = n_gpu_layers < 0 || n_gpu_layers > n;
    const int32_t first_on_gpu = all ? 0 : n - n_gpu_layers;
    pl.layer_device.assign(static_cast<size_t>(n), -1);
    pl.layer_on_gpu.assign(static_cast<size_t>(n), 0);
    pl.experts_on_host.assign(static_cast<size_t>(n), 0);
    int32_t il = first_on_gpu;
    for (size_t d = 0; d < counts.size(); ++d) {
        for (int c = 0; c < counts[d] && il < n; ++c, ++il) {
            pl.layer_device[il] = static_cast<int>(d);
            pl.layer_on_gpu[il] = 1;
            pl.experts_on_host[il] = cpu_moe || il < n_cpu_moe ? 1 : 0;
        }
    }
    pl.head_on_gpu = all && !pl.devices.empty();
    pl.head_device = pl.head_on_gpu ? pl.layer_device[static_cast<size_t>(n - 1)] : -1;
}

int32_t offloaded_count(const HParams & hp, int32_t n_gpu_layers) {
    return n_gpu_layers < 0 || n_gpu_layers > hp.n_layer ? hp.n_layer : n_gpu_layers;
}

// The same, with the layers shared by pl.split.
void lay_out(const HParams & hp, int32_t n_gpu_layers, bool cpu_moe, int32_t n_cpu_moe, Placement & pl) {
    const std::vector<int> counts = split_layer_counts(offloaded_count(hp, n_gpu_layers), pl.split);
    lay_out_counts(hp, n_gpu_layers, counts, cpu_moe, n_cpu_moe, pl);
}

size_t nbytes(const ggml_tensor * t) { return t != nullptr ? ggml_nbytes(t) : 0; }

// Bytes of the head's tensors besides the tied embedding (its f16 embd_t goes to the GPU as bf16: same size).
size_t head_extra_bytes(const Weights & w) {
    size_t bytes = 0;
    for (ggml_tensor * Weights::* m : kHeadTensors) {
        bytes += nbytes(w.*m);
    }
    return bytes;
}

struct PlanBytes {
    GpuWeightBytes weights;
    size_t kv = 0;
    size_t compute = 0;
    size_t total() const { return weights.total() + kv + compute; }
};

// The smallest context worth loading for: a prompt and one canvas.
int32_t min_n_ctx(const HParams & hp) { return 2 * hp.canvas_length; }

// Bytes on device d of a placement with a context of n_ctx positions.
PlanBytes plan_bytes(const HParams & hp, const Weights & w, const Placement & pl, int32_t n_ctx, int d) {
    PlanBytes b;
    b.weights = gpu_weight_bytes(hp, w, pl, d);
    b.kv = estimate_gpu_kv_bytes(hp, pl, n_ctx, d);
    b.compute = estimate_gpu_compute_bytes(hp, w, n_ctx, pl, d);
    return b;
}

// "3.2 MiB", "14.25 GiB"
std::string gib(size_t bytes) {
    return bytes < (1u << 30) ? format("%.1f MiB", bytes / kMiB) : format("%.2f GiB", bytes / kGiB);
}

std::vector<size_t> free_bytes(const Placement & pl) {
    std::vector<size_t> free;
    for (const Gpu & g : pl.devices) {
        free.push_back(gpu_memory(g).free);
    }
    return free;
}

// Bytes over every device, and whether each device holds its share, at n_ctx.
bool fits_everywhere(const HParams & hp, const Weights & w, const Placement & pl, const std::vector<size_t> & free,
                     int32_t n_ctx, size_t * need_total) {
    bool ok = true;
    size_t total = 0;
    for (size_t d = 0; d < pl.devices.size(); ++d) {
        const size_t need = plan_bytes(hp, w, pl, n_ctx, static_cast<int>(d)).total();
        total += need;
        ok = ok && need <= free[d];
    }
    if (need_total != nullptr) {
        *need_total = total;
    }
    return ok;
}

// An offload setting and its device bytes (over all devices) with the default context.
struct FitSetting {
    int32_t n_gpu_layers = 0;
    bool cpu_moe = false;
    int32_t n_cpu_moe = 0;
    std::vector<int> counts;  // layers per device, when another split is what fits
    size_t need = 0;
};

// Layers per device that fit, filling each device in order as far as it holds (the last one takes the rest and
// the head): with costs that grow with the layers, a split fits if this one does. Empty when none fits.
std::vector<int> fill_first_split(const HParams & hp, const Weights & w, const Placement & pl,
                                  const diffgemma_model_params & p, const std::vector<size_t> & free) {
    const size_t D = pl.devices.size();
    const int32_t k = offloaded_count(hp, p.n_gpu_layers);
    std::vector<int> counts(D, 0);
    Placement trial = pl;
    int remaining = k;
    for (size_t d = 0; d + 1 < D; ++d) {
        int best = 0;
        for (int c = remaining; c >= 1; --c) {
            std::vector<int> t = counts;
            t[d] = c;
            t[D - 1] = remaining - c;
            lay_out_counts(hp, p.n_gpu_layers, t, p.cpu_moe != 0, p.n_cpu_moe, trial);
            if (plan_bytes(hp, w, trial, hp.default_n_ctx(), static_cast<int>(d)).total() <= free[d]) {
                best = c;
                break;
            }
        }
        counts[d] = best;
        remaining -= best;
    }
    counts[D - 1] = remaining;
    lay_out_counts(hp, p.n_gpu_layers, counts, p.cpu_moe != 0, p.n_cpu_moe, trial);
    if (!fits_everywhere(hp, w, trial, free, hp.default_n_ctx(), nullptr)) {
        return {};
    }
    return counts;
}

// The first setting (least offload given up) whose plan fits every device with the default context, so that
// taking it also leaves room for diffgemma_context_new's default n_ctx. False when no offload fits.
bool find_fitting_setting(const HParams & hp, const Weights & w, const Placement & pl,
                          const diffgemma_model_params & p, const std::vector<size_t> & free, FitSetting & out) {
    Placement trial = pl;  // same devices, other layers
    auto fits = [&](int32_t n_gpu_layers, bool cpu_moe, int32_t n_cpu_moe) {
        lay_out(hp, n_gpu_layers, cpu_moe, n_cpu_moe, trial);
        out = {n_gpu_layers, cpu_moe, n_cpu_moe, {}, 0};
        return fits_everywhere(hp, w, trial, free, hp.default_n_ctx(), &out.need);
    };
    // 0. Over several devices: the same offload cut differently.
    if (pl.devices.size() > 1) {
        const std::vector<int> counts = fill_first_split(hp, w, pl, p, free);
        if (!counts.empty()) {
            lay_out_counts(hp, p.n_gpu_layers, counts, p.cpu_moe != 0, p.n_cpu_moe, trial);
            out = {p.n_gpu_layers, p.cpu_moe != 0, p.n_cpu_moe, counts, 0};
            fits_everywhere(hp, w, trial, free, hp.default_n_ctx(), &out.need);
            return true;
        }
    }
    // 1. Keep more expert weights in host memory (the MoE is most of a DiffusionGemma layer's bytes).
    if (!p.cpu_moe) {
        for (int32_t k = std::max(p.n_cpu_moe + 1, 1); k <= hp.n_layer; ++k) {
            if (fits(p.n_gpu_layers, false, k)) {
                return true;
            }
        }
    }
    // 2. Fewer layers on the devices, experts of all of them in host memory.
    const int32_t start = p.n_gpu_layers < 0 || p.n_gpu_layers > hp.n_layer ? hp.n_layer : p.n_gpu_layers - 1;
    for (int32_t k = start; k >= 1; --k) {
        if (fits(k, true, 0)) {
            return true;
        }
    }
    return false;
}

std::string describe(const HParams & hp, const FitSetting & f) {
    if (!f.counts.empty()) {
        std::string split;
        for (size_t d = 0; d < f.counts.size(); ++d) {
            split += format("%s%d", d ? "," : "", f.counts[d]);
        }
        return format("tensor_split=%s (layers per device) needs %s in all with n_ctx %d", split.c_str(),
                      gib(f.need).c_str(), hp.default_n_ctx());
    }
    if (!f.cpu_moe) {
        return format("n_cpu_moe=%d keeps the experts of the first %d layers in host memory and needs %s with n_ctx %d",
                      f.n_cpu_moe, f.n_cpu_moe, gib(f.need).c_str(), hp.default_n_ctx());
    }
    return format("n_gpu_layers=%d with cpu_moe=1 needs %s with n_ctx %d", f.n_gpu_layers, gib(f.need).c_str(),
                  hp.default_n_ctx());
}

// Applies a setting find_fitting_setting found.
void take(const HParams & hp, const FitSetting & f, Placement & pl) {
    if (!f.counts.empty()) {  // as loading with this tensor_split places it: a device given no layers takes no part
        Placement kept = pl;
        kept.devices.clear();
        kept.device_index.clear();
        kept.split.clear();
        for (size_t d = 0; d < f.counts.size(); ++d) {
            if (f.counts[d] > 0) {
                kept.devices.push_back(pl.devices[d]);
                kept.device_index.push_back(pl.device_index[d]);
                kept.split.push_back(f.counts[d]);
            }
        }
        pl = kept;
    }
    lay_out(hp, f.n_gpu_layers, f.cpu_moe, f.n_cpu_moe, pl);
}

}  // namespace

int Placement::n_layers_on_gpu() const {
    return static_cast<int>(std::count(layer_on_gpu.begin(), layer_on_gpu.end(), uint8_t{1}));
}

std::vector<uint8_t> Placement::layers_on(int d) const {
    std::vector<uint8_t> mask(layer_device.size(), 0);
    for (size_t il = 0; il < layer_device.size(); ++il) {
        mask[il] = layer_device[il] == d ? 1 : 0;
    }
    return mask;
}

namespace {

// "layers 3-9" of device d ("no layers" when it got none).
std::string layer_range(const Placement & pl, int d) {
    int first = -1, last = -1;
    for (int il = 0; il < static_cast<int>(pl.layer_device.size()); ++il) {
        if (pl.layer_device[il] == d) {
            first = first < 0 ? il : first;
            last = il;
        }
    }
    return first < 0 ? std::string("no layers") : format("layers %d-%d", first, last);
}

}  // namespace

std::string Placement::summary() const {
    if (!use_gpu) {
        return "CPU only";
    }
    const int n = static_cast<int>(layer_on_gpu.size());
    const int on = n_layers_on_gpu();
    int host_experts = 0;
    for (int il = 0; il < n; ++il) {
        host_experts += layer_on_gpu[il] && experts_on_host[il];
    }
    std::string s = on == 0 ? format("no layers of %d", n) : format("layers %d-%d of %d", n - on, n - 1, n);
    if (host_experts > 0) {
        s += format(" (experts of %d of them in host memory)", host_experts);
    }
    if (devices.size() > 1) {
        s += " split";
        for (size_t d = 0; d < devices.size(); ++d) {
            s += format("%s GPU %d %s", d ? "," : "", device_index[d], layer_range(*this, static_cast<int>(d)).c_str());
        }
    }
    if (!head_on_gpu) {
        s += ", head on the CPU";
    } else {
        s += devices.size() > 1 ? format(", head on GPU %d", device_index[static_cast<size_t>(head_device)])
                                : std::string(", head on the GPU");
    }
    return s;
}

std::vector<int> split_layer_counts(int k, const std::vector<double> & split) {
    std::vector<int> counts(split.size(), 0);
    double sum = 0.0;
    for (double v : split) {
        sum += v;
    }
    if (split.empty() || sum <= 0.0 || k <= 0) {
        return counts;
    }
    std::vector<double> rest(split.size());
    int given = 0;
    for (size_t d = 0; d < split.size(); ++d) {
        const double exact = k * split[d] / sum;
        counts[d] = static_cast<int>(exact);
        rest[d] = exact - counts[d];
        given += counts[d];
    }
    while (given < k) {
        size_t best = 0;
        for (size_t d = 1; d < split.size(); ++d) {
            best = rest[d] > rest[best] + 1e-9 ? d : best;
        }
        counts[best] += 1;
        rest[best] = -1.0;
        given += 1;
    }
    return counts;
}

namespace {

// The devices `devices` names ("CUDA0,RPC1"), in that order; every offload device when it is empty.
std::vector<size_t> chosen_devices(const std::vector<Gpu> & gpus, const char * devices) {
    std::vector<size_t> chosen;
    for (const std::string & name : split_list(devices)) {
        size_t i = 0;
        while (i < gpus.size() && gpus[i].id != name) {
            ++i;
        }
        if (i == gpus.size()) {
            std::string known;
            for (const Gpu & g : gpus) {
                known += (known.empty() ? "" : ", ") + g.id;
            }
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "devices: no offload device '%s' (there are: %s)", name.c_str(),
                  known.empty() ? "none" : known.c_str());
        }
        if (std::find(chosen.begin(), chosen.end(), i) != chosen.end()) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "devices: '%s' is named twice", name.c_str());
        }
        chosen.push_back(i);
    }
    if (chosen.empty()) {
        for (size_t i = 0; i < gpus.size(); ++i) {
            chosen.push_back(i);
        }
    }
    return chosen;
}

}  // namespace

Placement plan_placement(const HParams & hp, const diffgemma_model_params & p) {
    if (p.n_gpu_layers < -1) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "n_gpu_layers=%d: use -1 for every layer, 0 for none, or a layer count",
              p.n_gpu_layers);
    }
    if (p.cpu_moe != 0 && p.cpu_moe != 1) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "cpu_moe must be 0 or 1, got %d", p.cpu_moe);
    }
    if (p.n_cpu_moe < 0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "n_cpu_moe must not be negative, got %d", p.n_cpu_moe);
    }
    if (p.fit != 0 && p.fit != 1) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "fit must be 0 or 1, got %d", p.fit);
    }
    if (p.main_gpu < -1) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "main_gpu must be -1 (share the layers over the devices) or a device "
              "index, got %d", p.main_gpu);
    }
    if (p.n_tensor_split < 0 || (p.n_tensor_split > 0 && p.tensor_split == nullptr)) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "tensor_split: %d values at %p", p.n_tensor_split,
              static_cast<const void *>(p.tensor_split));
    }
    double split_sum = 0.0;
    for (int32_t i = 0; i < p.n_tensor_split; ++i) {
        const float v = p.tensor_split[i];
        if (!(v >= 0.0f) || !std::isfinite(v)) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "tensor_split[%d]=%g: proportions must be finite and >= 0", i, v);
        }
        split_sum += v;
    }
    if (p.n_tensor_split > 0 && split_sum <= 0.0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "tensor_split is all zeros: give each device's share, e.g. 3,1");
    }
    Placement pl;
    if (p.n_gpu_layers == 0) {
        if (p.cpu_moe || p.n_cpu_moe > 0) {
            log(DIFFGEMMA_LOG_WARN, "cpu_moe / n_cpu_moe have no effect with n_gpu_layers=0: everything runs on the CPU");
        }
        lay_out_counts(hp, 0, {}, false, 0, pl);
        return pl;
    }
    const std::vector<Gpu> gpus = list_gpus();
    if (gpus.empty()) {
        std::string backends;
        for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
            backends += (i ? ", " : "") + std::string(ggml_backend_reg_name(ggml_backend_reg_get(i)));
        }
        raise(DIFFGEMMA_ERR_BACKEND,
              "n_gpu_layers=%d requested, but ggml reports no GPU (backends in this build: %s). Hint: n_gpu_layers=0 "
              "runs on the CPU; offload needs a GPU ggml (USE_CUDA=1 pip install --no-binary libggml-python "
              "'" DIFFGEMMA_GGML_PIN "', or scripts/build_ggml.sh cuda|vulkan) and for CUDA CMAKE_ARGS=\"-DDIFFGEMMA_CUDA=ON\" "
              "pip install ., or RPC servers (rpc_servers= / --rpc, with scripts/build_ggml.sh rpc)",
              p.n_gpu_layers, backends.c_str());
    }
    std::vector<size_t> chosen;
    if (p.main_gpu >= 0) {
        if (p.n_tensor_split > 0) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "main_gpu=%d puts every offloaded layer on one device, tensor_split "
                  "shares them over several: give one of them", p.main_gpu);
        }
        if (static_cast<size_t>(p.main_gpu) >= gpus.size()) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "main_gpu=%d, but there %s %zu GPU%s (0 .. %zu)", p.main_gpu,
                  gpus.size() == 1 ? "is" : "are", gpus.size(), gpus.size() == 1 ? "" : "s", gpus.size() - 1);
        }
        chosen.push_back(static_cast<size_t>(p.main_gpu));
    } else {
        chosen = chosen_devices(gpus, p.devices);
        if (p.n_tensor_split > static_cast<int32_t>(chosen.size())) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "tensor_split has %d values, but there %s %zu device%s to share the "
                  "layers", p.n_tensor_split, chosen.size() == 1 ? "is" : "are", chosen.size(),
                  chosen.size() == 1 ? "" : "s");
        }
    }
    pl.use_gpu = true;
    for (size_t k = 0; k < chosen.size(); ++k) {
        const double share = p.n_tensor_split > 0 ? (static_cast<int32_t>(k) < p.n_tensor_split ? p.tensor_split[k] : 0.0)
                                                  : static_cast<double>(gpu_memory(gpus[chosen[k]]).free);
        if (share <= 0.0 && chosen.size() > 1) {
            continue;  // a device given no share takes no part
        }
        pl.devices.push_back(gpus[chosen[k]]);
        pl.device_index.push_back(static_cast<int>(chosen[k]));
        pl.split.push_back(share > 0.0 ? share : 1.0);
    }
    lay_out(hp, p.n_gpu_layers, p.cpu_moe != 0, p.n_cpu_moe, pl);
    return pl;
}

GpuWeightBytes gpu_weight_bytes(const HParams & hp, const Weights & w, const Placement & pl, int d) {
    GpuWeightBytes b;
    for (int il = 0; il < hp.n_layer; ++il) {
        const LayerWeights & l = w.layers[static_cast<size_t>(il)];
        for (ggml_tensor * LayerWeights::* m : kLayerTensors) {
            if (d < 0 ? pl.offloads(il, m) : pl.offloads_to(il, m, d)) {
                (is_expert_tensor(m) ? b.experts : b.layers) += nbytes(l.*m);
            }
        }
    }
    if (pl.head_on_gpu && (d < 0 || d == pl.head_device)) {
        b.head = nbytes(w.tok_embd) + head_extra_bytes(w);
    }
    return b;
}

size_t estimate_gpu_kv_bytes(const HParams & hp, const Placement & pl, int32_t n_ctx, int d) {
    // The default n_batch (512) or one canvas as the ring slack, as diffgemma_context_new sets it.
    return KvCache::bytes_for(hp, n_ctx, std::max(512, hp.canvas_length), GGML_TYPE_F32, pl.layers_on(d));
}

size_t estimate_gpu_compute_bytes(const HParams & hp, const Weights & w, int32_t n_ctx, const Placement & pl, int d) {
    const bool has_layers = std::find(pl.layer_device.begin(), pl.layer_device.end(), d) != pl.layer_device.end();
    const bool has_head = pl.head_on_gpu && d == pl.head_device;
    if (!has_layers && !has_head) {
        return 0;
    }
    const size_t C = static_cast<size_t>(hp.canvas_length);
    // Logits, the previous step's logits or probabilities, and their softmax.
    const size_t head = has_head ? 3 * static_cast<size_t>(hp.n_vocab) * C * 4 : 0;
    // Attention scores of the widest layer: every head against every visible key.
    const size_t scores = static_cast<size_t>(hp.n_head) * C * static_cast<size_t>(n_ctx + hp.canvas_length) * 4;
    // A few layers' activations alive at once: residual stream and norms, dense FFN, routed expert rows.
    const size_t per_layer = C * 4 *
        (8 * static_cast<size_t>(hp.n_embd) + 3 * static_cast<size_t>(hp.n_ff) +
         3 * static_cast<size_t>(hp.n_ff_exp) * static_cast<size_t>(hp.n_expert_used) + 2 * static_cast<size_t>(hp.n_expert));
    // ggml-cuda's pool (quantized activation copies, cuBLAS workspace) lives outside the compute buffer; the
    // stand-in has none. An offloaded f16 head adds its f32 copy, made on every pass: the head's matmul asks for
    // f32 precision (graph.cpp gpu_mul_mat), so ggml-cuda's cuBLAS path converts the whole weight.
    const size_t f16_head_copy = has_head && w.tok_embd->type == GGML_TYPE_F16
        ? static_cast<size_t>(hp.n_vocab) * static_cast<size_t>(hp.n_embd) * sizeof(float) : 0;
    const size_t backend_pool = pl.devices[static_cast<size_t>(d)].stand_in ? 0 : (256u << 20) + f16_head_copy;
    // The ggml step sampler's lg [V, C] f32, kept between steps, and its step graph's live temporaries (the
    // exponentials, the CDF and its comparisons: about four more [V, C] f32 at once).
    const Gpu & device = pl.devices[static_cast<size_t>(d)];
    const size_t step_sampler = has_head && !device.stand_in && !runs_our_cuda_kernels(device)
        ? 5 * static_cast<size_t>(hp.n_vocab) * C * 4 : 0;
    return head + scores + 4 * per_layer + backend_pool + step_sampler;
}

namespace {

// The plan's text for `pl` with the smallest context: where the bytes go on each device and what stays on the host.
std::string plan_text(const HParams & hp, const Weights & w, const Placement & pl, const std::vector<size_t> & free) {
    // What stays in the host mapping: the input embedding, the layers on the CPU, experts kept on the host,
    // and a head on the CPU (with its transposed copy for self-conditioning).
    size_t host = nbytes(w.tok_embd);
    for (int il = 0; il < hp.n_layer; ++il) {
        const LayerWeights & l = w.layers[static_cast<size_t>(il)];
        for (ggml_tensor * LayerWeights::* m : kLayerTensors) {
            if (!pl.offloads(il, m)) {
                host += nbytes(l.*m);
            }
        }
    }
    if (!pl.head_on_gpu) {
        host += head_extra_bytes(w);
    }
    const int32_t n_ctx_default = hp.default_n_ctx();
    std::string text = format("memory plan: %s", pl.summary().c_str());
    for (size_t d = 0; d < pl.devices.size(); ++d) {
        const int di = static_cast<int>(d);
        const PlanBytes b = plan_bytes(hp, w, pl, min_n_ctx(hp), di);
        text += format(
            "\n  GPU %d: %s: %s%s\n"
            "    weights %s (layers %.0f MiB, experts %.0f MiB, head %.0f MiB), compute buffers ~%.0f MiB,\n"
            "    KV cache %.0f MiB at n_ctx %d (%.0f MiB at the default n_ctx %d, allocated with each context);\n"
            "    needs %s of %s free",
            pl.device_index[d], gpu_description(pl.devices[d]).c_str(), layer_range(pl, di).c_str(),
            pl.head_on_gpu && di == pl.head_device ? " and the head" : "", gib(b.weights.total()).c_str(),
            b.weights.layers / kMiB, b.weights.experts / kMiB, b.weights.head / kMiB, b.compute / kMiB, b.kv / kMiB,
            min_n_ctx(hp), estimate_gpu_kv_bytes(hp, pl, n_ctx_default, di) / kMiB, n_ctx_default,
            gib(b.total()).c_str(), gib(free[d]).c_str());
    }
    text += format("\n  host memory: %s of weights used from the mapped file", gib(host).c_str());
    return text;
}

// "GPU 0 (1.2 GiB missing), GPU 1 (30.0 MiB missing)"
std::string shortfalls(const HParams & hp, const Weights & w, const Placement & pl, const std::vector<size_t> & free) {
    std::string s;
    for (size_t d = 0; d < pl.devices.size(); ++d) {
        const size_t need = plan_bytes(hp, w, pl, min_n_ctx(hp), static_cast<int>(d)).total();
        if (need > free[d]) {
            s += format("%sGPU %d (%s missing)", s.empty() ? "" : ", ", pl.device_index[d], gib(need - free[d]).c_str());
        }
    }
    return s;
}

}  // namespace

std::string check_and_announce_plan(const HParams & hp, const Weights & w, Placement & pl,
                                    const diffgemma_model_params & p) {
    if (!pl.use_gpu) {
        return std::string();
    }
    const std::vector<size_t> free = free_bytes(pl);
    std::string plan = plan_text(hp, w, pl, free);
    if (!fits_everywhere(hp, w, pl, free, min_n_ctx(hp), nullptr)) {
        FitSetting f;
        const bool found = find_fitting_setting(hp, w, pl, p, free, f);
        const std::string missing = shortfalls(hp, w, pl, free);
        if (!found || !p.fit) {
            raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "the model does not fit on %s.\n%s\nHint: %s%s", missing.c_str(),
                  plan.c_str(),
                  found ? describe(hp, f).c_str()
                        : format("no offload of this model fits with a context of %d; n_gpu_layers=0 runs it on the "
                                 "CPU", hp.default_n_ctx()).c_str(),
                  found ? " (or fit=1 / --fit takes it)" : "");
        }
        const std::string taken = format("fit: the offload asked for needs more memory than free on %s; taking %s", missing.c_str(),
                                         describe(hp, f).c_str());
        take(hp, f, pl);
        plan = taken + "\n" + plan_text(hp, w, pl, free);
    }
    announce(plan.c_str());
    return plan;
}

void check_context_fits(const HParams & hp, const Weights & w, const Placement & pl, int32_t n_ctx,
                        const std::function<size_t(int32_t, int)> & kv_bytes_at) {
    if (!pl.use_gpu) {
        return;
    }
    for (size_t d = 0; d < pl.devices.size(); ++d) {
        const int di = static_cast<int>(d);
        const GpuMemory mem = gpu_memory(pl.devices[d]);
        const size_t weights_here = gpu_weight_bytes(hp, w, pl, di).total();
        const size_t free = pl.devices[d].stand_in ? (mem.free > weights_here ? mem.free - weights_here : 0) : mem.free;
        auto need_at = [&](int32_t n) { return kv_bytes_at(n, di) + estimate_gpu_compute_bytes(hp, w, n, pl, di); };
        if (need_at(n_ctx) <= free) {
            continue;
        }
        // The largest n_ctx (whole canvases, at least two) that fits, by bisection: the need grows with n_ctx.
        int32_t lo = 0, hi = n_ctx;
        while (hi - lo > 1) {
            const int32_t mid = lo + (hi - lo) / 2;
            (need_at(mid) <= free ? lo : hi) = mid;
        }
        const int32_t fitting = lo / hp.canvas_length * hp.canvas_length;
        const std::string hint = fitting >= 2 * hp.canvas_length
            ? format("n_ctx=%d fits; an f16 KV cache halves the cache", fitting)
            : std::string("fewer n_gpu_layers, or cpu_moe / n_cpu_moe to free GPU memory for the cache");
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY,
              "the context does not fit on GPU %d (%s): its KV cache needs %.1f MiB for n_ctx=%d and the compute "
              "buffers ~%.1f MiB, but %.1f MiB are free (hint: %s)",
              pl.device_index[d], pl.devices[d].name.c_str(), kv_bytes_at(n_ctx, di) / kMiB, n_ctx,
              estimate_gpu_compute_bytes(hp, w, n_ctx, pl, di) / kMiB, free / kMiB, hint.c_str());
    }
}

}  // namespace dg
