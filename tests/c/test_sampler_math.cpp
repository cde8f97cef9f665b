// Driver for tests/test_sampler_math.py: runs dg::row_stats / dg::row_probs on rows written by the test,
// or times them on synthetic rows (--bench).
//
//   test_sampler_math IN OUT        IN:  int64 n_rows, int64 V, float inv_temp, float u[n_rows], float logits[n_rows*V]
//                                   OUT: per row {int32 ok, int32 argmax, int32 sampled, float log_z, float entropy},
//                                        then float probs[n_rows*V] (row_probs at each row's log_z)
//   test_sampler_math --emulate-device IN OUT
//                                   the same, but every statistic comes from the CUDA kernel replayed on the host:
//                                   its reduction tree (csrc/offload/cuda/sampler_partial.h: every thread's strided slice,
//                                   the warp butterflies, the cross-warp pass) and its tile-by-tile CDF walk
//   test_sampler_math --walk-agreement V ROWS DRAWS
//                                   the emulated kernel's sampled ids against dg::row_stats on random rows and
//                                   uniforms (the GPU bench's rows): "draws=... disagree=... unexplained=...", where a
//                                   disagreement is explained when u*Z lies within 1e-5 Z of the CDF boundary between
//                                   the two ids (float rounding) and unexplained otherwise
//   test_sampler_math --bench V ROWS   prints "ns_per_element=... ms_per_canvas256=... scalar_expf_ns_per_element=..."
#include "sample_agreement.h"
#include "kernels/sampler_math.h"
#include "offload/cuda/sampler_partial.h"

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

// The statistics kernel's CDF walk (pass 2 of row_stats_kernel in sampler.cu) for u: tiles of kStatsThreads x
// kWalkPerThread ids, skipped while the running total stays at or below u*Z, then the first id in the tile whose
// cumulative sum exceeds it; if none does anywhere, the last id with a nonzero term. The tile's block-wide
// exclusive scan is replayed in the order of cub's BlockScan (raking: 32 sequential segments of 16 threads, a
// Kogge-Stone warp scan of their totals, a sequential downsweep), so the float sums match the kernel's.
int emulate_device_walk(const float * row, int V, float inv_temp, float m, float z_rel, float u) {
    constexpr int kThreads = dg_cuda::kStatsThreads;
    constexpr int kPer = dg_cuda::kWalkPerThread;
    constexpr int kRakers = 32, kSegment = kThreads / kRakers;
    const float target = u * z_rel;
    float running = 0.0f;
    int last_positive = -1;
    std::vector<float> e(kThreads * kPer), local(kThreads), prefix(kThreads);
    for (int tile = 0; tile < V; tile += kThreads * kPer) {
        for (int t = 0; t < kThreads; ++t) {
            local[t] = 0.0f;
            for (int k = 0; k < kPer; ++k) {
                const int i = tile + t * kPer + k;
                float & term = e[t * kPer + k];
                term = i < V ? dg_cuda::walk_term(row[i] * inv_temp - m) : 0.0f;
                local[t] += term;
                if (term > 0.0f) last_positive = i;
            }
        }
        std::array<float, kRakers> inclusive, exclusive;
        for (int r = 0; r < kRakers; ++r) {
            float s = local[r * kSegment];
            for (int k = 1; k < kSegment; ++k) s += local[r * kSegment + k];
            inclusive[r] = s;
        }
        for (int offset = 1; offset < kRakers; offset *= 2) {
            const std::array<float, kRakers> before = inclusive;
            for (int r = offset; r < kRakers; ++r) inclusive[r] = before[r - offset] + before[r];
        }
        exclusive[0] = 0.0f;
        for (int r = 1; r < kRakers; ++r) exclusive[r] = inclusive[r - 1];
        for (int r = 0; r < kRakers; ++r) {
            float acc = exclusive[r];
            for (int k = 0; k < kSegment; ++k) {
                prefix[r * kSegment + k] = acc;
                acc = acc + local[r * kSegment + k];
            }
        }
        const float tile_sum = inclusive[kRakers - 1];
        if (running + tile_sum > target) {
            for (int t = 0; t < kThreads; ++t) {  // the lowest thread that finds one wins (atomicMin)
                float cum = running + prefix[t];
                for (int k = 0; k < kPer; ++k) {
                    cum += e[t * kPer + k];
                    if (e[t * kPer + k] > 0.0f && cum > target) return tile + t * kPer + k;
                }
            }
        }
        running += tile_sum;
    }
    return last_positive;
}

// The statistics kernel for one row, thread by thread and lane by lane (see sampler.cu).
bool emulate_device_row(const float * row, int64_t V, float inv_temp, float u, dg::RowStats * out) {
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
    out->sampled = emulate_device_walk(row, static_cast<int>(V), inv_temp, total.m, 1.0f + total.s_rest, u);
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
        if (emulate_device && ok) ok = emulate_device_row(logits.data() + r * V, V, inv_temp, u[static_cast<size_t>(r)], &s) ? 1 : 0;
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

// The GPU bench's rows (tests/gpu/sampler_cuda_driver.cu --bench): N(0, 3) logits, every 8th row with a peak.
int run_walk_agreement(int64_t V, int64_t n_rows, int draws) {
    std::mt19937 rng(42);
    std::normal_distribution<float> normal(0.0f, 3.0f);
    std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
    const float inv_temp = 1.0f / 0.8f;
    std::vector<float> row(static_cast<size_t>(V));
    long n = 0, disagree = 0, unexplained = 0;
    for (int64_t r = 0; r < n_rows; ++r) {
        for (float & x : row) x = normal(rng);
        if (r % 8 == 0) row[static_cast<size_t>((r * 7919) % V)] += 40.0f;
        for (int d = 0; d < draws; ++d) {
            const float u = uniform(rng);
            dg::RowStats host, device;
            if (!dg::row_stats(row.data(), V, inv_temp, u, &host) || !emulate_device_row(row.data(), V, inv_temp, u, &device))
                return 3;
            ++n;
            if (host.sampled != device.sampled) {
                ++disagree;
                if (!dg_test::sample_disagreement_is_rounding(row.data(), V, inv_temp, u, host.sampled, device.sampled)) {
                    ++unexplained;
                    std::printf("row %lld u=%.9g: host %d, emulated device %d\n", static_cast<long long>(r), u, host.sampled,
                                device.sampled);
                }
            }
        }
    }
    std::printf("draws=%ld disagree=%ld unexplained=%ld\n", n, disagree, unexplained);
    return 0;
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
    if (argc == 5 && std::strcmp(argv[1], "--walk-agreement") == 0)
        return run_walk_agreement(std::atoll(argv[2]), std::atoll(argv[3]), std::atoi(argv[4]));
    if (argc == 3) return run_file(argv[1], argv[2], false);
    std::fprintf(stderr, "usage: %s IN OUT | --emulate-device IN OUT | --bench V ROWS | --walk-agreement V ROWS DRAWS\n", argv[0]);
    return 2;
}
