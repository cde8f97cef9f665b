// Version and build/system description.
#include "core/cpu_threads.h"
#include "core/errors.h"
#include "core/kernel_config.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <string>
#include <thread>

#ifndef DIFFGEMMA_VERSION_STRING
#error "DIFFGEMMA_VERSION_STRING must be defined by the build (CMakeLists.txt)"
#endif

namespace {

// CPU features as the CPU backend reports them (the backend knows what it was compiled for).
std::string backend_features(ggml_backend_reg_t reg) {
    auto get_features = reinterpret_cast<ggml_backend_get_features_t>(
        ggml_backend_reg_get_proc_address(reg, "ggml_backend_get_features"));
    if (get_features == nullptr) {
        return std::string();
    }
    std::string out;
    for (const ggml_backend_feature * f = get_features(reg); f != nullptr && f->name != nullptr; ++f) {
        // Numeric entries (e.g. thread counts) are noise here; boolean features print as "1".
        if (f->value != nullptr && std::string(f->value) == "1") {
            out += out.empty() ? "" : " ";
            out += f->name;
        }
    }
    return out;
}

std::string build_system_info() {
    std::string s = "diffgemma_cpp " DIFFGEMMA_VERSION_STRING;
    s += dg::format(" (api %d)", DIFFGEMMA_API_VERSION);
    s += dg::format(" | ggml %s (%s)", ggml_version(), ggml_commit());
    s += " | backends:";
    for (size_t i = 0; i < ggml_backend_reg_count(); ++i) {
        s += " ";
        s += ggml_backend_reg_name(ggml_backend_reg_get(i));
    }
#ifdef DIFFGEMMA_WITH_CUDA
    s += " | diffgemma cuda kernels: yes";
#else
    s += " | diffgemma cuda kernels: no";
#endif
    ggml_backend_reg_t cpu = ggml_backend_reg_by_name("CPU");
    if (cpu != nullptr) {
        s += " | ggml CPU backend compiled for: " + backend_features(cpu);
    }
    s += std::string(" | diffgemma CPU kernels: ") + dg::kernel_tier_description(dg::kernel_config_from_env());
    s += dg::format(" | hardware threads: %u | CPUs we may use: %d | default threads: %d",
                    std::thread::hardware_concurrency(), dg::cpus_we_may_use(), dg::default_thread_count());
    return s;
}

}  // namespace

extern "C" {

const char * diffgemma_version(void) { return DIFFGEMMA_VERSION_STRING; }

int32_t diffgemma_api_version(void) { return DIFFGEMMA_API_VERSION; }

const char * diffgemma_system_info(void) {
    // Built once: the answer cannot change while the process runs.
    static const std::string info = build_system_info();
    return info.c_str();
}

int32_t diffgemma_default_n_threads(void) { return dg::default_thread_count(); }

}  // extern "C"
