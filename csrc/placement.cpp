#include "placement.h"

#include "errors.h"
#include "kv_cache.h"

#include <algorithm>

namespace dg {

namespace {

constexpr double kMiB = 1048576.0;
constexpr double kGiB = 1073741824.0;

// Fills the per-layer flags; the parameters are already validated.
void lay_out(const HParams & hp, int32_t n_gpu_layers, bool cpu_moe, int32_t n_cpu_moe, Placement & pl) {
    const int32_t n = hp.n_layer;
    const bool all = n_gpu_layers < 0 || n_gpu_layers > n;
    const int32_t first_on_gpu = all ? 0 : n - n_gpu_layers;
    pl.layer_on_gpu.assign(static_cast<size_t>(n), 0);
    pl.experts_on_host.assign(static_cast<size_t>(n), 0);
    for (int32_t il = first_on_gpu; il < n; ++il) {
        pl.layer_on_gpu[il] = 1;
        pl.experts_on_host[il] = cpu_moe || il < n_cpu_moe ? 1 : 0;
    }
    pl.head_on_gpu = all;
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

// Device bytes of a placement with a context of n_ctx positions.
PlanBytes plan_bytes(const HParams & hp, const Weights & w, const Placement & pl, int32_t n_ctx) {
    PlanBytes b;
    b.weights = gpu_weight_bytes(hp, w, pl);
    b.kv = estimate_gpu_kv_bytes(hp, pl, n_ctx);
    b.compute = estimate_gpu_compute_bytes(hp, w, n_ctx, pl);
    return b;
}

// "3.2 MiB", "14.25 GiB"
std::string gib(size_t bytes) {
    return bytes < (1u << 30) ? format("%.1f MiB", bytes / kMiB) : format("%.2f GiB", bytes / kGiB);
}

// An offload setting and its device bytes with the default context.
struct FitSetting {
    int32_t n_gpu_layers = 0;
    bool cpu_moe = false;
    int32_t n_cpu_moe = 0;
    size_t need = 0;
};

// The first setting (least offload given up) whose plan fits in `free` bytes with the default context, so that
// taking it also leaves room for diffgemma_context_new's default n_ctx. False when no offload fits.
bool find_fitting_setting(const HParams & hp, const Weights & w, const Placement & pl,
                          const diffgemma_model_params & p, size_t free, FitSetting & out) {
    Placement trial = pl;  // same GPU, other layers
    auto fits = [&](int32_t n_gpu_layers, bool cpu_moe, int32_t n_cpu_moe) {
        lay_out(hp, n_gpu_layers, cpu_moe, n_cpu_moe, trial);
        out = {n_gpu_layers, cpu_moe, n_cpu_moe, plan_bytes(hp, w, trial, hp.default_n_ctx()).total()};
        return out.need <= free;
    };
    // 1. Keep more expert weights in host memory (the MoE is most of a DiffusionGemma layer's bytes).
    if (!p.cpu_moe) {
        for (int32_t k = std::max(p.n_cpu_moe + 1, 1); k <= hp.n_layer; ++k) {
            if (fits(p.n_gpu_layers, false, k)) {
                return true;
            }
        }
    }
    // 2. Fewer layers on the GPU, experts of all of them in host memory.
    const int32_t start = p.n_gpu_layers < 0 || p.n_gpu_layers > hp.n_layer ? hp.n_layer : p.n_gpu_layers - 1;
    for (int32_t k = start; k >= 1; --k) {
        if (fits(k, true, 0)) {
            return true;
        }
    }
    return false;
}

std::string describe(const HParams & hp, const FitSetting & f) {
    if (!f.cpu_moe) {
        return format("n_cpu_moe=%d keeps the experts of the first %d layers in host memory and needs %s with n_ctx %d",
                      f.n_cpu_moe, f.n_cpu_moe, gib(f.need).c_str(), hp.default_n_ctx());
    }
    return format("n_gpu_layers=%d with cpu_moe=1 needs %s with n_ctx %d", f.n_gpu_layers, gib(f.need).c_str(),
                  hp.default_n_ctx());
}

}  // namespace

int Placement::n_layers_on_gpu() const {
    return static_cast<int>(std::count(layer_on_gpu.begin(), layer_on_gpu.end(), uint8_t{1}));
}

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
    s += head_on_gpu ? ", head on the GPU" : ", head on the CPU";
    return s;
}

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
    if (p.main_gpu < 0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "main_gpu must not be negative, got %d", p.main_gpu);
    }
    Placement pl;
    if (p.n_gpu_layers == 0) {
        if (p.cpu_moe || p.n_cpu_moe > 0) {
            log(DIFFGEMMA_LOG_WARN, "cpu_moe / n_cpu_moe have no effect with n_gpu_layers=0: everything runs on the CPU");
        }
        lay_out(hp, 0, false, 0, pl);
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
              "runs on the CPU; offload needs a CUDA ggml (USE_CUDA=1 pip install --no-binary libggml-python "
              "'" DIFFGEMMA_GGML_PIN "') and CMAKE_ARGS=\"-DDIFFGEMMA_CUDA=ON\" pip install .",
              p.n_gpu_layers, backends.c_str());
    }
    if (static_cast<size_t>(p.main_gpu) >= gpus.size()) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "main_gpu=%d, but there %s %zu GPU%s (0 .. %zu)", p.main_gpu,
              gpus.size() == 1 ? "is" : "are", gpus.size(), gpus.size() == 1 ? "" : "s", gpus.size() - 1);
    }
    pl.use_gpu = true;
    pl.gpu_index = p.main_gpu;
    pl.gpu = gpus[static_cast<size_t>(p.main_gpu)];
    lay_out(hp, p.n_gpu_layers, p.cpu_moe != 0, p.n_cpu_moe, pl);
    return pl;
}

GpuWeightBytes gpu_weight_bytes(const HParams & hp, const Weights & w, const Placement & pl) {
    GpuWeightBytes b;
    for (int il = 0; il < hp.n_layer; ++il) {
        const LayerWeights & l = w.layers[static_cast<size_t>(il)];
        for (ggml_tensor * LayerWeights::* m : kLayerTensors) {
            if (pl.offloads(il, m)) {
                (is_expert_tensor(m) ? b.experts : b.layers) += nbytes(l.*m);
            }
        }
    }
    if (pl.head_on_gpu) {
        b.head = nbytes(w.tok_embd) + head_extra_bytes(w);
    }
    return b;
}

size_t estimate_gpu_kv_bytes(const HParams & hp, const Placement & pl, int32_t n_ctx) {
    // The default n_batch (512) or one canvas as the ring slack, as diffgemma_context_new sets it.
    return KvCache::bytes_for(hp, n_ctx, std::max(512, hp.canvas_length), GGML_TYPE_F32, pl.layer_on_gpu);
}

size_t estimate_gpu_compute_bytes(const HParams & hp, const Weights & w, int32_t n_ctx, const Placement & pl) {
    const size_t C = static_cast<size_t>(hp.canvas_length);
    // Logits, the previous step's logits or probabilities, and their softmax.
    const size_t head = pl.head_on_gpu ? 3 * static_cast<size_t>(hp.n_vocab) * C * 4 : 0;
    // Attention scores of the widest layer: every head against every visible key.
    const size_t scores = static_cast<size_t>(hp.n_head) * C * static_cast<size_t>(n_ctx + hp.canvas_length) * 4;
    // A few layers' activations alive at once: residual stream and norms, dense FFN, routed expert rows.
    const size_t per_layer = C * 4 *
        (8 * static_cast<size_t>(hp.n_embd) + 3 * static_cast<size_t>(hp.n_ff) +
         3 * static_cast<size_t>(hp.n_ff_exp) * static_cast<size_t>(hp.n_expert_used) + 2 * static_cast<size_t>(hp.n_expert));
    // ggml-cuda's pool (quantized activation copies, cuBLAS workspace) lives outside the compute buffer; the
    // stand-in has none. An offloaded f16 head adds its f32 copy, made on every pass: the head's matmul asks for
    // f32 precision (graph.cpp gpu_mul_mat), so ggml-cuda's cuBLAS path converts the whole weight.
    const size_t f16_head_copy = pl.head_on_gpu && w.tok_embd->type == GGML_TYPE_F16
        ? static_cast<size_t>(hp.n_vocab) * static_cast<size_t>(hp.n_embd) * sizeof(float) : 0;
    const size_t backend_pool = pl.gpu.stand_in ? 0 : (256u << 20) + f16_head_copy;
    return head + scores + 4 * per_layer + backend_pool;
}

namespace {

// The plan's text for `pl` with the smallest context: where the bytes go on the GPU and what stays on the host.
std::string plan_text(const HParams & hp, const Weights & w, const Placement & pl, const PlanBytes & b, size_t free) {
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
    return format(
        "memory plan, GPU %d: %s: %s\n"
        "  weights %s (layers %.0f MiB, experts %.0f MiB, head %.0f MiB), compute buffers ~%.0f MiB,\n"
        "  KV cache %.0f MiB at n_ctx %d (%.0f MiB at the default n_ctx %d, allocated with each context);\n"
        "  needs %s of %s free; host memory: %s of weights used from the mapped file",
        pl.gpu_index, gpu_description(pl.gpu).c_str(), pl.summary().c_str(), gib(b.weights.total()).c_str(),
        b.weights.layers / kMiB, b.weights.experts / kMiB, b.weights.head / kMiB, b.compute / kMiB, b.kv / kMiB,
        min_n_ctx(hp), estimate_gpu_kv_bytes(hp, pl, n_ctx_default) / kMiB, n_ctx_default, gib(b.total()).c_str(),
        gib(free).c_str(), gib(host).c_str());
}

}  // namespace

std::string check_and_announce_plan(const HParams & hp, const Weights & w, Placement & pl,
                                    const diffgemma_model_params & p) {
    if (!pl.use_gpu) {
        return std::string();
    }
    const size_t free = gpu_memory(pl.gpu).free;
    const PlanBytes b = plan_bytes(hp, w, pl, min_n_ctx(hp));
    std::string plan = plan_text(hp, w, pl, b, free);
    if (b.total() > free) {
        FitSetting f;
        const bool found = find_fitting_setting(hp, w, pl, p, free, f);
        const std::string missing = gib(b.total() - free);
        if (!found || !p.fit) {
            raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "the model does not fit on GPU %d: %s missing.\n%s\nHint: %s%s",
                  pl.gpu_index, missing.c_str(), plan.c_str(),
                  found ? describe(hp, f).c_str()
                        : format("no offload of this model fits with a context of %d; n_gpu_layers=0 runs it on the "
                                 "CPU", hp.default_n_ctx()).c_str(),
                  found ? " (or fit=1 / --fit takes it)" : "");
        }
        const std::string taken = format("fit: the offload asked for needs %s more than GPU %d has free; taking %s",
                                         missing.c_str(), pl.gpu_index, describe(hp, f).c_str());
        lay_out(hp, f.n_gpu_layers, f.cpu_moe, f.n_cpu_moe, pl);
        plan = taken + "\n" + plan_text(hp, w, pl, plan_bytes(hp, w, pl, min_n_ctx(hp)), free);
    }
    announce(plan.c_str());
    return plan;
}

void check_context_fits(const HParams & hp, const Weights & w, const Placement & pl, int32_t n_ctx,
                        const std::function<size_t(int32_t)> & kv_bytes_at) {
    if (!pl.use_gpu) {
        return;
    }
    const GpuMemory mem = gpu_memory(pl.gpu);
    const size_t weights_on_gpu = gpu_weight_bytes(hp, w, pl).total();
    const size_t free = pl.gpu.stand_in ? (mem.free > weights_on_gpu ? mem.free - weights_on_gpu : 0) : mem.free;
    auto need_at = [&](int32_t n) { return kv_bytes_at(n) + estimate_gpu_compute_bytes(hp, w, n, pl); };
    const size_t need = need_at(n_ctx);
    if (need <= free) {
        return;
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
          "the context does not fit on GPU %d (%s): its KV cache needs %.1f MiB for n_ctx=%d and the compute buffers "
          "~%.1f MiB, but %.1f MiB are free (hint: %s)",
          pl.gpu_index, pl.gpu.name.c_str(), kv_bytes_at(n_ctx) / kMiB, n_ctx,
          estimate_gpu_compute_bytes(hp, w, n_ctx, pl) / kMiB, free / kMiB, hint.c_str());
}

}  // namespace dg
