#include "devices/gpu_devices.h"

#include "core/errors.h"
#include "core/kernel_config.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace dg {

namespace {

constexpr const char * kStandInVar = "DIFFGEMMA_TEST_GPU_MIB";

// The stand-ins' memory in bytes ("4096" or "4096,2048" MiB), or none when the variable is unset or malformed.
std::vector<size_t> stand_in_sizes() {
    std::vector<size_t> sizes;
    const char * v = test_hook(kStandInVar);
    if (v == nullptr) {
        return sizes;
    }
    const char * p = v;
    while (true) {
        char * end = nullptr;
        const unsigned long long mib = std::strtoull(p, &end, 10);
        if (end == p || (*end != '\0' && *end != ',') || mib == 0 || mib > (1ull << 30)) {
            log(DIFFGEMMA_LOG_WARN, "ignoring %s=%s: it must be positive numbers of MiB, separated by commas",
                kStandInVar, v);
            return {};
        }
        sizes.push_back(static_cast<size_t>(mib) << 20);
        if (*end == '\0') {
            return sizes;
        }
        p = end + 1;
    }
}

}  // namespace

std::vector<Gpu> list_gpus() {
    std::vector<Gpu> gpus;
    const std::vector<size_t> stand_ins = stand_in_sizes();
    if (!stand_ins.empty()) {
        for (size_t i = 0; i < stand_ins.size(); ++i) {
            Gpu g;
            g.dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
            g.stand_in = true;
            g.stand_in_bytes = stand_ins[i];
            g.id = format("StandIn%zu", i);
            g.name = stand_ins.size() == 1 ? std::string("stand-in GPU (the CPU, ") + kStandInVar + ")"
                                           : format("stand-in GPU %zu (the CPU, %s)", i, kStandInVar);
            if (g.dev != nullptr) {
                gpus.push_back(g);
            }
        }
        return gpus;
    }
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        const enum ggml_backend_dev_type type = ggml_backend_dev_type(dev);
        if (type != GGML_BACKEND_DEVICE_TYPE_GPU && type != GGML_BACKEND_DEVICE_TYPE_IGPU) {
            continue;
        }
        Gpu g;
        g.dev = dev;
        g.id = ggml_backend_dev_name(dev);
        // The RPC backend's own registry; its devices' names are RPC0, RPC1, ... in registration order.
        g.remote = std::strcmp(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev)), "RPC") == 0;
        g.name = format("%s (%s)", ggml_backend_dev_name(dev), ggml_backend_dev_description(dev));
        gpus.push_back(g);
    }
    return gpus;
}

GpuMemory gpu_memory(const Gpu & gpu) {
    GpuMemory m;
    if (gpu.stand_in) {
        m.free = m.total = gpu.stand_in_bytes;
        return m;
    }
    ggml_backend_dev_memory(gpu.dev, &m.free, &m.total);
    return m;
}

ggml_backend_buffer_type_t gpu_buffer_type(const Gpu & gpu) { return ggml_backend_dev_buffer_type(gpu.dev); }

ggml_backend_t gpu_backend_init(const Gpu & gpu) {
    if (gpu.stand_in) {
        return nullptr;
    }
    ggml_backend_t b = ggml_backend_dev_init(gpu.dev, nullptr);
    if (b == nullptr) {
        raise(DIFFGEMMA_ERR_BACKEND, "cannot initialise %s", gpu.name.c_str());
    }
    return b;
}

std::string gpu_description(const Gpu & gpu) {
    const GpuMemory m = gpu_memory(gpu);
    return format("%s, %zu of %zu MiB free", gpu.name.c_str(), m.free >> 20, m.total >> 20);
}

bool runs_our_cuda_kernels(const Gpu & gpu) {
#ifdef DIFFGEMMA_WITH_CUDA
    return !gpu.stand_in && gpu.dev != nullptr && std::strncmp(ggml_backend_dev_name(gpu.dev), "CUDA", 4) == 0;
#else
    (void) gpu;
    return false;
#endif
}

}  // namespace dg

extern "C" {

int32_t diffgemma_gpu_count(void) { return static_cast<int32_t>(dg::list_gpus().size()); }

const char * diffgemma_gpu_description(int32_t i) {
    static thread_local std::string text;
    const std::vector<dg::Gpu> gpus = dg::list_gpus();
    if (i < 0 || static_cast<size_t>(i) >= gpus.size()) {
        return nullptr;
    }
    text = dg::gpu_description(gpus[static_cast<size_t>(i)]);
    return text.c_str();
}

}  // extern "C"
