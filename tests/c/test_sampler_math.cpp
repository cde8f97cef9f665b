// Driver for tests/test_sampler_math.py: runs dg::row_stats / dg::row_probs on rows written by the test,
// or times them on synthetic rows (--bench).
//
//   test_sampler_math IN OUT        IN:  int64 n_rows, int64 V, float inv_temp, float u[n_rows], float logits[n_rows*V]
//                                   OUT: per row {int32 ok, int32 argmax, int32 sampled, float log_z, float entropy},
//                                        then float probs[n_rows*V] (row_probs at each row's log_z)
//   test_sampler_math --emulate-device IN OUT
//                                   the same, but argmax / log_z / entropy come from the CUDA kernel's reduction
//                                   tree (csrc/cuda/sampler_partial.h) replayed on the host: every thread's
//                                   strided slice, the warp butterflies, the cross-warp pass
//   test_sampler_math --bench V ROWS   prints "ns_per_element=... ms_per_canvas256=... scalar_expf_ns_per_element=..."
#include "sampler_math.h"
#include "cuda/sampler_partial.h"

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

namespace {

template <typename T>
bool read_all(FILE * f, T * dst, size_t n) { return std::fread(dst, sizeof(T), n, f) == n; }

// The statistics kernel's reduction for one row, thread by thread and lane by lane (see sampler.cu).
bool emulate_device_row(const float * row, int64_t V, float inv_temp, dg::RowStats * out) {
    using dg_cuda::Partial;
    constexpr int kThreads = dg_cuda::kStatsThreads;
    std::vector<Partial> thread_part(kThreads, dg_cuda::empty_partial());
    bool bad = false;
    const bool vec = V % 4 == 0;  // std::vector data is 16-byte aligned
    for (int t = 0; t < kThreads; ++t) {
        if (vec) {
            for (int64_t j = t; j < V / 4; j += kThreads)
                for (int k = 0; k < 4; ++k) dg_cuda::add_element(thread_part[t], row[4 * j + k] * inv_temp, int(4 * j + k), bad);
        } else {
            for (int64_t i = t; i < V; i += kThreads) dg_cuda::add_element(thread_part[t], row[i] * inv_temp, int(i), bad);
        }
    }
    using Warp = std::array<Partial, 32>;
    auto butterfly = [](Warp & lanes) {  // warp_reduce: every lane combines with lane ^ mask
        for (int mask = 16; mask > 0; mask >>= 1) {
            Warp next;
            for (int l = 0; l < 32; ++l) next[l] = dg_cuda::combine(lanes[l], lanes[l ^ mask]);
            lanes = next;
        }
    };
    Warp warp_lanes;
    warp_lanes.fill(dg_cuda::empty_partial());
    for (int w = 0; w < kThreads / 32; ++w) {
        Warp lanes;
        for (int l = 0; l < 32; ++l) lanes[l] = thread_part[32 * w + l];
        butterfly(lanes);
        warp_lanes[w] = lanes[0];
    }
    butterfly(warp_lanes);
    const Partial & total = warp_lanes[0];
    if (bad || total.m == -INFINITY) return false;
    out->argmax = total.idx;
    out->log_z = dg_cuda::partial_log_z(total);
    out->entropy = dg_cuda::partial_entropy(total);
    return true;
}

int run_file(const char * in_path, const char * out_path, bool emulate_device) {
    FILE * in = std::fopen(in_path, "rb");
    if (!in) { std::perror(in_path); return 2; }
    int64_t n_rows = 0, V = 0;
    float inv_temp = 0.0f;
    if (!read_all(in, &n_rows, 1) || !read_all(in, &V, 1) || !read_all(in, &inv_temp, 1) || n_rows <= 0 || V < 0) {
        std::fprintf(stderr, "%s: bad header\n", in_path);
        return 2;
    }
    std::vector<float> u(static_cast<size_t>(n_rows)), logits(static_cast<size_t>(n_rows * V));
    if (!read_all(in, u.data(), u.size()) || !read_all(in, logits.data(), logits.size())) {
        std::fprintf(stderr, "%s: truncated\n", in_path);
        return 2;
    }
    std::fclose(in);
    FILE * out = std::fopen(out_path, "wb");
    if (!out) { std::perror(out_path); return 2; }
    std::vector<float> probs(static_cast<size_t>(V));
    std::vector<dg::RowStats> stats(static_cast<size_t>(n_rows));
    for (int64_t r = 0; r < n_rows; ++r) {
        dg::RowStats & s = stats[static_cast<size_t>(r)];
        int32_t ok = dg::row_stats(logits.data() + r * V, V, inv_temp, u[static_cast<size_t>(r)], &s) ? 1 : 0;
        if (emulate_device && ok) {
            const int32_t sampled = s.sampled;  // the CDF walk is not emulated
            ok = emulate_device_row(logits.data() + r * V, V, inv_temp, &s) ? 1 : 0;
            s.sampled = sampled;
        }
        std::fwrite(&ok, 4, 1, out);
        std::fwrite(&s.argmax, 4, 1, out);
        std::fwrite(&s.sampled, 4, 1, out);
        std::fwrite(&s.log_z, 4, 1, out);
        std::fwrite(&s.entropy, 4, 1, out);
    }
    for (int64_t r = 0; r < n_rows; ++r) {
        dg::row_probs(logits.data() + r * V, V, inv_temp, stats[static_cast<size_t>(r)].log_z, probs.data());
        std::fwrite(probs.data(), sizeof(float), probs.size(), out);
    }
    return std::fclose(out) == 0 ? 0 : 2;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int run_bench(int64_t V, int64_t n_rows) {
    std::mt19937 rng(1234);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::vector<float> logits(static_cast<size_t>(n_rows * V));
    for (float & x : logits) x = normal(rng);
    std::vector<dg::RowStats> stats(static_cast<size_t>(n_rows));
    const float inv_temp = 1.0f / 0.8f;
    dg::row_stats(logits.data(), V, inv_temp, 0.5f, &stats[0]);  // warm-up (page faults, clone resolution)
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < n_rows; ++r) dg::row_stats(logits.data() + r * V, V, inv_temp, 0.37f, &stats[static_cast<size_t>(r)]);
    const double t_stats = seconds_since(t0);

    std::vector<float> probs(static_cast<size_t>(V));
    t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < n_rows; ++r) dg::row_probs(logits.data() + r * V, V, inv_temp, stats[static_cast<size_t>(r)].log_z, probs.data());
    const double t_probs = seconds_since(t0);

    // The naive baseline: two scalar passes with libm expf (max, then sum), no sampling.
    volatile float sink = 0.0f;
    t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < n_rows; ++r) {
        const float * row = logits.data() + r * V;
        float m = -INFINITY;
        for (int64_t i = 0; i < V; ++i) m = std::fmax(m, row[i] * inv_temp);
        double s = 0.0;
        for (int64_t i = 0; i < V; ++i) s += std::exp(row[i] * inv_temp - m);
        sink = sink + static_cast<float>(s);
    }
    const double t_naive = seconds_since(t0);
    const double n = static_cast<double>(V) * static_cast<double>(n_rows);
    std::printf("V=%lld rows=%lld ns_per_element=%.3f ms_per_canvas256=%.2f probs_ns_per_element=%.3f "
                "naive_expf_ns_per_element=%.3f\n",
                static_cast<long long>(V), static_cast<long long>(n_rows), 1e9 * t_stats / n,
                1e3 * t_stats / static_cast<double>(n_rows) * 256.0, 1e9 * t_probs / n, 1e9 * t_naive / n);
    return 0;
}

}  // namespace

int main(int argc, char ** argv) {
    if (argc == 4 && std::strcmp(argv[1], "--bench") == 0) return run_bench(std::atoll(argv[2]), std::atoll(argv[3]));
    if (argc == 4 && std::strcmp(argv[1], "--emulate-device") == 0) return run_file(argv[2], argv[3], true);
    if (argc == 3) return run_file(argv[1], argv[2], false);
    std::fprintf(stderr, "usage: %s IN OUT | --emulate-device IN OUT | --bench V ROWS\n", argv[0]);
    return 2;
}
