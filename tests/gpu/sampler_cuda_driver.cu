// Driver for tests/gpu/test_sampler_cuda.py and bench/gpu_session.sh: runs the CUDA sampler kernels
// (csrc/offload/cuda/sampler.cu) on rows written by the test, or times them and compares them with the host
// reference dg::row_stats on a full 256 x 262144 canvas.
//
//   sampler_cuda_driver --probe                          exit 0 when a CUDA device is usable, 77 when not
//   sampler_cuda_driver IN OUT [f16|bf16|bf16x] [PAD]    IN/OUT as tests/c/test_sampler_math.cpp; probabilities
//                                                        written as f16 or bf16 (bf16x: of bf16-rounded logits,
//                                                        HF numerics) and widened to float; PAD extra floats per
//                                                        device row (PAD % 4 != 0 takes the scalar path)
//   sampler_cuda_driver --bench V ROWS REPS              key=value timings and CPU/GPU agreement on one line
//                                                        (sampled_unexplained: disagreements that are not float
//                                                        rounding at a CDF boundary, see tests/c/sample_agreement.h)
//   sampler_cuda_driver --check-args                     the launchers' argument checks (no device needed:
//                                                        invalid calls return before touching the GPU)
#include "../c/sample_agreement.h"
#include "offload/cuda/sampler_cuda.h"
#include "kernels/sampler_math.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#define CHECK(call)                                                                                  \
    do {                                                                                             \
        const cudaError_t err_ = (call);                                                             \
        if (err_ != cudaSuccess) {                                                                   \
            std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(err_)); \
            return 3;                                                                                \
        }                                                                                            \
    } while (0)

namespace {

struct DeviceRows {
    float * logits = nullptr;
    float * uniforms = nullptr;
    int32_t * argmax = nullptr;
    int32_t * sampled = nullptr;
    float * entropy = nullptr;
    float * log_z = nullptr;
    void * probs = nullptr;
    ~DeviceRows() {
        cudaFree(logits); cudaFree(uniforms); cudaFree(argmax); cudaFree(sampled);
        cudaFree(entropy); cudaFree(log_z); cudaFree(probs);
    }
};

int alloc(DeviceRows & d, int64_t n_rows, int64_t stride, int64_t vocab) {
    CHECK(cudaMalloc(&d.logits, sizeof(float) * n_rows * stride));
    CHECK(cudaMalloc(&d.uniforms, sizeof(float) * n_rows));
    CHECK(cudaMalloc(&d.argmax, sizeof(int32_t) * n_rows));
    CHECK(cudaMalloc(&d.sampled, sizeof(int32_t) * n_rows));
    CHECK(cudaMalloc(&d.entropy, sizeof(float) * n_rows));
    CHECK(cudaMalloc(&d.log_z, sizeof(float) * n_rows));
    CHECK(cudaMalloc(&d.probs, 2 * n_rows * vocab));
    return 0;
}

int probe() {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return 77;
    cudaDeviceProp prop;
    CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("device=%s sm=%d%d\n", prop.name, prop.major, prop.minor);
    return 0;
}

int run_file(const char * in_path, const char * out_path, dg_cuda_probs_type ptype, int64_t pad) {
    FILE * in = std::fopen(in_path, "rb");
    if (!in) { std::perror(in_path); return 2; }
    int64_t n_rows = 0, V = 0;
    float inv_temp = 0.0f;
    if (std::fread(&n_rows, 8, 1, in) != 1 || std::fread(&V, 8, 1, in) != 1 || std::fread(&inv_temp, 4, 1, in) != 1) return 2;
    std::vector<float> u(n_rows), logits(n_rows * V);
    if (std::fread(u.data(), 4, n_rows, in) != size_t(n_rows) || std::fread(logits.data(), 4, logits.size(), in) != logits.size()) return 2;
    std::fclose(in);

    const int64_t stride = V + pad;
    DeviceRows d;
    if (int rc = alloc(d, n_rows, stride, V)) return rc;
    CHECK(cudaMemcpy2D(d.logits, sizeof(float) * stride, logits.data(), sizeof(float) * V, sizeof(float) * V, n_rows,
                       cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d.uniforms, u.data(), 4 * n_rows, cudaMemcpyHostToDevice));
    CHECK(dg_cuda_sampler_row_stats(d.logits, n_rows, V, stride, inv_temp, d.uniforms, d.argmax, d.sampled, d.entropy,
                                    d.log_z, nullptr));
    CHECK(dg_cuda_sampler_write_probs(d.logits, n_rows, V, stride, inv_temp, d.log_z, d.probs, ptype, V, nullptr));
    CHECK(cudaDeviceSynchronize());

    std::vector<int32_t> argmax(n_rows), sampled(n_rows);
    std::vector<float> entropy(n_rows), log_z(n_rows);
    std::vector<uint16_t> probs16(n_rows * V);
    CHECK(cudaMemcpy(argmax.data(), d.argmax, 4 * n_rows, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(sampled.data(), d.sampled, 4 * n_rows, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(entropy.data(), d.entropy, 4 * n_rows, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(log_z.data(), d.log_z, 4 * n_rows, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(probs16.data(), d.probs, 2 * n_rows * V, cudaMemcpyDeviceToHost));

    FILE * out = std::fopen(out_path, "wb");
    if (!out) { std::perror(out_path); return 2; }
    for (int64_t r = 0; r < n_rows; ++r) {
        const int32_t ok = argmax[r] >= 0 ? 1 : 0;
        std::fwrite(&ok, 4, 1, out);
        std::fwrite(&argmax[r], 4, 1, out);
        std::fwrite(&sampled[r], 4, 1, out);
        std::fwrite(&log_z[r], 4, 1, out);
        std::fwrite(&entropy[r], 4, 1, out);
    }
    std::vector<float> widened(probs16.size());
    for (size_t i = 0; i < probs16.size(); ++i) {
        if (ptype == DG_CUDA_PROBS_F16) {  // else bf16: both bf16 modes
            __half_raw raw; raw.x = probs16[i];
            widened[i] = __half2float(__half(raw));
        } else {
            const uint32_t bits = uint32_t(probs16[i]) << 16;  // bf16 is the top half of a float
            std::memcpy(&widened[i], &bits, 4);
        }
    }
    std::fwrite(widened.data(), 4, widened.size(), out);
    return std::fclose(out) == 0 ? 0 : 2;
}

int run_bench(int64_t V, int64_t n_rows, int reps) {
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    std::vector<float> logits(n_rows * V), u(n_rows);
    for (float & x : logits) x = normal(rng);
    for (int64_t r = 0; r < n_rows; r += 8) logits[r * V + (r * 7919) % V] += 40.0f;  // some peaked rows
    for (float & x : u) x = uniform(rng);
    const float inv_temp = 1.0f / 0.8f;

    DeviceRows d;
    if (int rc = alloc(d, n_rows, V, V)) return rc;
    CHECK(cudaMemcpy(d.logits, logits.data(), 4 * logits.size(), cudaMemcpyHostToDevice));
    CHECK(cudaMemcpy(d.uniforms, u.data(), 4 * n_rows, cudaMemcpyHostToDevice));
    cudaEvent_t t0, t1, t2;
    CHECK(cudaEventCreate(&t0)); CHECK(cudaEventCreate(&t1)); CHECK(cudaEventCreate(&t2));
    for (int w = 0; w < 2; ++w) {  // warm-up
        CHECK(dg_cuda_sampler_row_stats(d.logits, n_rows, V, V, inv_temp, d.uniforms, d.argmax, d.sampled, d.entropy, d.log_z, nullptr));
        CHECK(dg_cuda_sampler_write_probs(d.logits, n_rows, V, V, inv_temp, d.log_z, d.probs, DG_CUDA_PROBS_BF16, V, nullptr));
    }
    float stats_ms = 0.0f, probs_ms = 0.0f;
    for (int rep = 0; rep < reps; ++rep) {
        CHECK(cudaEventRecord(t0));
        CHECK(dg_cuda_sampler_row_stats(d.logits, n_rows, V, V, inv_temp, d.uniforms, d.argmax, d.sampled, d.entropy, d.log_z, nullptr));
        CHECK(cudaEventRecord(t1));
        CHECK(dg_cuda_sampler_write_probs(d.logits, n_rows, V, V, inv_temp, d.log_z, d.probs, DG_CUDA_PROBS_BF16, V, nullptr));
        CHECK(cudaEventRecord(t2));
        CHECK(cudaEventSynchronize(t2));
        float a = 0.0f, b = 0.0f;
        CHECK(cudaEventElapsedTime(&a, t0, t1));
        CHECK(cudaEventElapsedTime(&b, t1, t2));
        stats_ms += a;
        probs_ms += b;
    }
    stats_ms /= reps;
    probs_ms /= reps;

    // The HF-numerics probabilities (own normalisation pass over bf16-rounded logits).
    CHECK(cudaEventRecord(t0));
    for (int rep = 0; rep < reps; ++rep)
        CHECK(dg_cuda_sampler_write_probs(d.logits, n_rows, V, V, inv_temp, nullptr, d.probs, DG_CUDA_PROBS_BF16_OF_BF16_LOGITS, V, nullptr));
    CHECK(cudaEventRecord(t1));
    CHECK(cudaEventSynchronize(t1));
    float probs_hf_ms = 0.0f;
    CHECK(cudaEventElapsedTime(&probs_hf_ms, t0, t1));
    probs_hf_ms /= reps;

    // Statistics-only variant (no CDF walk), to split the cost.
    CHECK(cudaEventRecord(t0));
    for (int rep = 0; rep < reps; ++rep)
        CHECK(dg_cuda_sampler_row_stats(d.logits, n_rows, V, V, inv_temp, nullptr, d.argmax, nullptr, d.entropy, d.log_z, nullptr));
    CHECK(cudaEventRecord(t1));
    CHECK(cudaEventSynchronize(t1));
    float no_walk_ms = 0.0f;
    CHECK(cudaEventElapsedTime(&no_walk_ms, t0, t1));
    no_walk_ms /= reps;
    // One full run (with the walk) for the CPU comparison below.
    CHECK(dg_cuda_sampler_row_stats(d.logits, n_rows, V, V, inv_temp, d.uniforms, d.argmax, d.sampled, d.entropy, d.log_z, nullptr));
    CHECK(cudaDeviceSynchronize());

    std::vector<int32_t> argmax(n_rows), sampled(n_rows);
    std::vector<float> entropy(n_rows);
    CHECK(cudaMemcpy(argmax.data(), d.argmax, 4 * n_rows, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(sampled.data(), d.sampled, 4 * n_rows, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(entropy.data(), d.entropy, 4 * n_rows, cudaMemcpyDeviceToHost));
    int argmax_agree = 0, sampled_agree = 0, sampled_unexplained = 0;
    double max_rel_h = 0.0;
    std::vector<int32_t> host_sampled(n_rows);
    const auto c0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < n_rows; ++r) {
        dg::RowStats s;
        dg::row_stats(logits.data() + r * V, V, inv_temp, u[r], &s);
        argmax_agree += s.argmax == argmax[r];
        sampled_agree += s.sampled == sampled[r];
        host_sampled[r] = s.sampled;
        const double rel = std::fabs(double(s.entropy) - entropy[r]) / std::fmax(1e-20, std::fabs(double(s.entropy)));
        max_rel_h = std::fmax(max_rel_h, rel);
    }
    const double cpu_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - c0).count();
    for (int64_t r = 0; r < n_rows; ++r) {  // float sums in another order: only ties at a CDF boundary may differ
        if (host_sampled[r] != sampled[r] &&
            !dg_test::sample_disagreement_is_rounding(logits.data() + r * V, V, inv_temp, u[r], host_sampled[r], sampled[r])) {
            ++sampled_unexplained;
            std::fprintf(stderr, "row %lld u=%.9g: host sampled %d, GPU %d\n", (long long)r, u[r], host_sampled[r], sampled[r]);
        }
    }
    const double gbytes = 4.0 * double(V) * double(n_rows) / 1e9;
    std::printf("V=%lld rows=%lld stats_ms=%.4f stats_no_walk_ms=%.4f probs_bf16_ms=%.4f probs_bf16_of_bf16_logits_ms=%.4f "
                "stats_GBps=%.0f argmax_agree=%d/%lld sampled_agree=%d/%lld sampled_unexplained=%d max_rel_entropy_diff=%.3g "
                "cpu_single_thread_ms=%.1f\n",
                (long long)V, (long long)n_rows, stats_ms, no_walk_ms, probs_ms, probs_hf_ms, gbytes / (no_walk_ms / 1e3), argmax_agree,
                (long long)n_rows, sampled_agree, (long long)n_rows, sampled_unexplained, max_rel_h, cpu_ms);
    return 0;
}

int check_args() {
    int failures = 0;
    auto expect = [&](const char * what, cudaError_t got, cudaError_t want) {
        const bool ok = got == want;
        std::printf("%s %s (%s)\n", ok ? "ok  " : "FAIL", what, cudaGetErrorName(got));
        failures += ok ? 0 : 1;
    };
    // Plausible-looking device pointers: never dereferenced, as every call below must fail validation first.
    float * f = reinterpret_cast<float *>(0x1000);
    int32_t * i = reinterpret_cast<int32_t *>(0x2000);
    const cudaError_t bad = cudaErrorInvalidValue;
    expect("vocab 0", dg_cuda_sampler_row_stats(f, 4, 0, 0, 1.0f, f, i, i, f, f, nullptr), bad);
    expect("vocab 2^30 + 1", dg_cuda_sampler_row_stats(f, 4, (int64_t(1) << 30) + 1, int64_t(1) << 31, 1.0f, f, i, i, f, f, nullptr), bad);
    expect("row stride < vocab", dg_cuda_sampler_row_stats(f, 4, 100, 99, 1.0f, f, i, i, f, f, nullptr), bad);
    expect("negative rows", dg_cuda_sampler_row_stats(f, -1, 100, 100, 1.0f, f, i, i, f, f, nullptr), bad);
    expect("inv_temp 0", dg_cuda_sampler_row_stats(f, 4, 100, 100, 0.0f, f, i, i, f, f, nullptr), bad);
    expect("inv_temp nan", dg_cuda_sampler_row_stats(f, 4, 100, 100, NAN, f, i, i, f, f, nullptr), bad);
    expect("inv_temp inf", dg_cuda_sampler_row_stats(f, 4, 100, 100, INFINITY, f, i, i, f, f, nullptr), bad);
    expect("null logits", dg_cuda_sampler_row_stats(nullptr, 4, 100, 100, 1.0f, f, i, i, f, f, nullptr), bad);
    expect("null argmax", dg_cuda_sampler_row_stats(f, 4, 100, 100, 1.0f, f, nullptr, i, f, f, nullptr), bad);
    expect("null entropy", dg_cuda_sampler_row_stats(f, 4, 100, 100, 1.0f, f, i, i, nullptr, f, nullptr), bad);
    expect("sampled without uniforms", dg_cuda_sampler_row_stats(f, 4, 100, 100, 1.0f, nullptr, i, i, f, f, nullptr), bad);
    expect("no rows is a no-op", dg_cuda_sampler_row_stats(nullptr, 0, 100, 100, 1.0f, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr), cudaSuccess);
    expect("probs: unknown type", dg_cuda_sampler_write_probs(f, 4, 100, 100, 1.0f, f, f, static_cast<dg_cuda_probs_type>(7), 100, nullptr), bad);
    expect("probs: 65536 rows", dg_cuda_sampler_write_probs(f, 65536, 100, 100, 1.0f, f, f, DG_CUDA_PROBS_BF16, 100, nullptr), bad);
    expect("probs: out stride < vocab", dg_cuda_sampler_write_probs(f, 4, 100, 100, 1.0f, f, f, DG_CUDA_PROBS_F16, 99, nullptr), bad);
    expect("probs: null log_z", dg_cuda_sampler_write_probs(f, 4, 100, 100, 1.0f, nullptr, f, DG_CUDA_PROBS_F16, 100, nullptr), bad);
    expect("probs: inv_temp -1", dg_cuda_sampler_write_probs(f, 4, 100, 100, -1.0f, f, f, DG_CUDA_PROBS_F16, 100, nullptr), bad);
    expect("probs: no rows is a no-op", dg_cuda_sampler_write_probs(nullptr, 0, 100, 100, 1.0f, nullptr, nullptr, DG_CUDA_PROBS_F16, 100, nullptr), cudaSuccess);
    return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc == 2 && std::strcmp(argv[1], "--check-args") == 0) return check_args();
    if (argc == 2 && std::strcmp(argv[1], "--probe") == 0) return probe();
    if (argc == 5 && std::strcmp(argv[1], "--bench") == 0)
        return run_bench(std::atoll(argv[2]), std::atoll(argv[3]), std::atoi(argv[4]));
    if (argc >= 3 && argc <= 5) {
        const std::string type = argc >= 4 ? argv[3] : "bf16";
        if (type != "f16" && type != "bf16" && type != "bf16x") {
            std::fprintf(stderr, "probs type must be f16, bf16 or bf16x\n");
            return 2;
        }
        const dg_cuda_probs_type ptype = type == "f16"    ? DG_CUDA_PROBS_F16
                                         : type == "bf16" ? DG_CUDA_PROBS_BF16
                                                          : DG_CUDA_PROBS_BF16_OF_BF16_LOGITS;
        return run_file(argv[1], argv[2], ptype, argc == 5 ? std::atoll(argv[4]) : 0);
    }
    std::fprintf(stderr, "usage: %s --probe | --check-args | IN OUT [f16|bf16] [PAD] | --bench V ROWS REPS\n", argv[0]);
    return 2;
}
