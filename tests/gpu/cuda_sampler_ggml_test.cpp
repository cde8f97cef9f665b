// Driver for tests/gpu/test_sampler_cuda.py: dg::CudaSampler (csrc/offload/cuda/sampler_ggml.cu) on ggml tensors in a
// buffer of ggml's CUDA backend, the way the engine calls it. Needs a ggml built with CUDA and a GPU.
//
//   cuda_sampler_ggml_test IN OUT [f16|bf16|bf16x]   IN/OUT as tests/c/test_sampler_math.cpp (probabilities widened
//                                                    to float; bf16x = bf16 of bf16-rounded logits)
//   cuda_sampler_ggml_test --check-errors            wrong placement / type / order give the documented statuses
// Exit status 77: no CUDA device in ggml.
#include "offload/cuda/sampler_ggml.h"
#include "diffgemma.h"
#include "kernels/sampler_math.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Ggml {
    ggml_backend_t gpu = nullptr;
    ggml_context * ctx = nullptr;
    ggml_backend_buffer_t buffer = nullptr;
    ~Ggml() {
        if (buffer) ggml_backend_buffer_free(buffer);
        if (ctx) ggml_free(ctx);
        if (gpu) ggml_backend_free(gpu);
    }
};

ggml_backend_t init_gpu() {
    ggml_backend_dev_t dev = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_GPU);
    return dev ? ggml_backend_dev_init(dev, nullptr) : nullptr;
}

float widen(uint16_t bits, bool f16) {
    return f16 ? ggml_fp16_to_fp32(bits) : ggml_bf16_to_fp32(ggml_bf16_t{bits});
}

int run_file(const char * in_path, const char * out_path, const std::string & mode) {
    FILE * in = std::fopen(in_path, "rb");
    if (!in) { std::perror(in_path); return 2; }
    int64_t n_rows = 0, V = 0;
    float inv_temp = 0.0f;
    if (std::fread(&n_rows, 8, 1, in) != 1 || std::fread(&V, 8, 1, in) != 1 || std::fread(&inv_temp, 4, 1, in) != 1) return 2;
    std::vector<float> u(n_rows), logits(n_rows * V);
    if (std::fread(u.data(), 4, n_rows, in) != size_t(n_rows) || std::fread(logits.data(), 4, logits.size(), in) != logits.size()) return 2;
    std::fclose(in);

    Ggml g;
    g.gpu = init_gpu();
    if (!g.gpu) return 77;
    ggml_init_params params = {4 * ggml_tensor_overhead(), nullptr, true};
    g.ctx = ggml_init(params);
    ggml_tensor * t_logits = ggml_new_tensor_2d(g.ctx, GGML_TYPE_F32, V, n_rows);
    ggml_tensor * t_probs = ggml_new_tensor_2d(g.ctx, mode == "f16" ? GGML_TYPE_F16 : GGML_TYPE_BF16, V, n_rows);
    ggml_set_name(t_logits, "logits");
    ggml_set_name(t_probs, "sc_probs");
    g.buffer = ggml_backend_alloc_ctx_tensors(g.ctx, g.gpu);
    if (!g.buffer) { std::fprintf(stderr, "cannot allocate the tensors on %s\n", ggml_backend_name(g.gpu)); return 3; }
    ggml_backend_tensor_set(t_logits, logits.data(), 0, ggml_nbytes(t_logits));

    dg::CudaSampler sampler;
    std::vector<dg::RowStats> stats(n_rows);
    const int32_t rc = sampler.row_stats(t_logits, inv_temp, u.data(), stats.data());
    if (rc != DIFFGEMMA_OK) {
        std::fprintf(stderr, "row_stats: %s: %s\n", diffgemma_status_name(rc), diffgemma_last_error());
        return 3;
    }
    const int32_t rc2 = sampler.write_probs(t_logits, inv_temp, t_probs, mode == "bf16x");
    if (rc2 != DIFFGEMMA_OK) {
        std::fprintf(stderr, "write_probs: %s: %s\n", diffgemma_status_name(rc2), diffgemma_last_error());
        return 3;
    }
    std::vector<uint16_t> probs16(n_rows * V, 0);
    ggml_backend_tensor_get(t_probs, probs16.data(), 0, ggml_nbytes(t_probs));

    FILE * out = std::fopen(out_path, "wb");
    if (!out) { std::perror(out_path); return 2; }
    for (int64_t r = 0; r < n_rows; ++r) {
        const int32_t ok = stats[r].argmax >= 0 ? 1 : 0;
        std::fwrite(&ok, 4, 1, out);
        std::fwrite(&stats[r].argmax, 4, 1, out);
        std::fwrite(&stats[r].sampled, 4, 1, out);
        std::fwrite(&stats[r].log_z, 4, 1, out);
        std::fwrite(&stats[r].entropy, 4, 1, out);
    }
    std::vector<float> widened(probs16.size());
    for (size_t i = 0; i < probs16.size(); ++i) widened[i] = widen(probs16[i], mode == "f16");
    std::fwrite(widened.data(), 4, widened.size(), out);
    return std::fclose(out) == 0 ? 0 : 2;
}

int check_errors() {
    Ggml g;
    g.gpu = init_gpu();
    if (!g.gpu) return 77;
    ggml_init_params params = {8 * ggml_tensor_overhead(), nullptr, true};
    g.ctx = ggml_init(params);
    const int64_t V = 1000, rows = 4;
    ggml_tensor * logits = ggml_new_tensor_2d(g.ctx, GGML_TYPE_F32, V, rows);
    ggml_tensor * other = ggml_new_tensor_2d(g.ctx, GGML_TYPE_F32, V, rows);
    ggml_tensor * probs_f16 = ggml_new_tensor_2d(g.ctx, GGML_TYPE_F16, V, rows);
    ggml_tensor * probs_f32 = ggml_new_tensor_2d(g.ctx, GGML_TYPE_F32, V, rows);
    ggml_tensor * probs_short = ggml_new_tensor_2d(g.ctx, GGML_TYPE_BF16, V - 1, rows);
    g.buffer = ggml_backend_alloc_ctx_tensors(g.ctx, g.gpu);
    std::vector<float> zeros(V * rows, 0.0f), u(rows, 0.5f);
    ggml_backend_tensor_set(logits, zeros.data(), 0, ggml_nbytes(logits));
    ggml_backend_tensor_set(other, zeros.data(), 0, ggml_nbytes(other));

    // A tensor in host memory (no buffer at all, and a CPU-backend buffer).
    ggml_init_params host_params = {2 * ggml_tensor_overhead() + V * rows * 4 + 256, nullptr, false};
    ggml_context * host_ctx = ggml_init(host_params);
    ggml_tensor * host_logits = ggml_new_tensor_2d(host_ctx, GGML_TYPE_F32, V, rows);

    int failures = 0;
    auto expect = [&](const char * what, int32_t got, int32_t want, const char * needle) {
        const std::string msg = got == DIFFGEMMA_OK ? "" : diffgemma_last_error();
        const bool ok = got == want && (!needle || msg.find(needle) != std::string::npos);
        std::printf("%s %s: %s %s\n", ok ? "ok  " : "FAIL", what, diffgemma_status_name(got), msg.c_str());
        failures += ok ? 0 : 1;
    };
    dg::CudaSampler s;
    std::vector<dg::RowStats> stats(rows);
    expect("host tensor", s.row_stats(host_logits, 1.0f, u.data(), stats.data()), DIFFGEMMA_ERR_INVALID_ARGUMENT, "not in a device buffer");
    expect("probs before stats", s.write_probs(logits, 1.0f, probs_f16), DIFFGEMMA_ERR_INVALID_ARGUMENT, "needs a successful row_stats");
    expect("stats", s.row_stats(logits, 1.0f, u.data(), stats.data()), DIFFGEMMA_OK, nullptr);
    expect("uniform row entropy", stats[0].entropy > 6.9f && stats[0].entropy < 6.91f ? DIFFGEMMA_OK : -99, DIFFGEMMA_OK, nullptr);
    expect("probs of other logits", s.write_probs(other, 1.0f, probs_f16), DIFFGEMMA_ERR_INVALID_ARGUMENT, "same logits");
    expect("probs at another temperature", s.write_probs(logits, 2.0f, probs_f16), DIFFGEMMA_ERR_INVALID_ARGUMENT, "same logits");
    expect("F32 probs", s.write_probs(logits, 1.0f, probs_f32), DIFFGEMMA_ERR_INVALID_ARGUMENT, "must be F16 or BF16");
    expect("short probs", s.write_probs(logits, 1.0f, probs_short), DIFFGEMMA_ERR_INVALID_ARGUMENT, "must be F16 or BF16");
    expect("bf16x into F16", s.write_probs(logits, 1.0f, probs_f16, true), DIFFGEMMA_ERR_INVALID_ARGUMENT, "written as BF16");
    expect("probs", s.write_probs(logits, 1.0f, probs_f16), DIFFGEMMA_OK, nullptr);
    expect("zero temperature", s.row_stats(logits, 0.0f, u.data(), stats.data()), DIFFGEMMA_ERR_INVALID_ARGUMENT, "rejected");
    std::vector<float> bad = zeros;
    bad[2 * V + 17] = NAN;
    ggml_backend_tensor_set(logits, bad.data(), 0, ggml_nbytes(logits));
    // A row without a distribution is reported by the caller (denoise.cpp check_rows), as after the host sampler.
    expect("NaN row", s.row_stats(logits, 1.0f, u.data(), stats.data()), DIFFGEMMA_OK, nullptr);
    expect("NaN row's statistics", stats[2].argmax == -1 && stats[2].sampled == -1 && std::isnan(stats[2].entropy) &&
                                       stats[1].argmax == 0 && stats[3].argmax == 0 ? DIFFGEMMA_OK : -99,
           DIFFGEMMA_OK, nullptr);
    expect("probs after a NaN row", s.write_probs(logits, 1.0f, probs_f16), DIFFGEMMA_OK, nullptr);
    ggml_free(host_ctx);
    return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc == 2 && std::strcmp(argv[1], "--check-errors") == 0) return check_errors();
    if (argc == 3 || argc == 4) return run_file(argv[1], argv[2], argc == 4 ? argv[3] : "bf16");
    std::fprintf(stderr, "usage: %s IN OUT [f16|bf16|bf16x] | --check-errors\n", argv[0]);
    return 2;
}
