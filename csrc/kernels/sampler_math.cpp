// Host implementation of the per-position sampler statistics (see sampler_math.h).
//
// The row is processed in chunks of kChunk elements that stay in L1: scale + max, then exp/sum. A partial
// reduction is (M, s_rest, t, argmax) with M the running max, s_rest the sum of exp(x - M) over every
// element except the first max (whose term is exactly 1, kept apart), t the sum of exp(x - M) * (x - M).
// Keeping "1 + s_rest" split keeps the full relative precision of log Z - M = log1p(s_rest) and of the
// entropy log1p(s_rest) - t / (1 + s_rest) (two non-negative terms) for very peaked rows. Chunk sums are
// accumulated in double, so a 262k vocabulary loses nothing to the running total.
//
// Vectorisation without -ffast-math: reductions use kLanes independent partial sums (a fixed order, so
// every ISA clone gives bit-identical results; CMake compiles this file with -ffp-contract=off for the
// same reason), and the exponential is a branch-free polynomial.
#include "kernels/sampler_math.h"
#include "core/vec_math.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace dg {
namespace {

constexpr int kChunk = 512;   // elements per chunk: 2 KiB of scaled logits, resident in L1
constexpr int kLanes = 16;    // independent partial sums (one AVX-512 register of floats)
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// xs[k] = logits[k] * inv_temp; returns the max of xs and sets *bad when an entry is NaN or +inf.
DG_VECTOR_CLONES
float scale_and_max(const float * __restrict__ logits, int n, float inv_temp, float * __restrict__ xs, bool * bad) {
    // Separate loops, as in exp_sums: each one alone is a pattern GCC 12 vectorizes.
    for (int k = 0; k < n; ++k) xs[k] = logits[k] * inv_temp;
    int32_t any_bad = 0;
    for (int k = 0; k < n; ++k) any_bad |= xs[k] < kInf ? 0 : 1;  // NaN or +inf
    float lane_max[kLanes];
    for (int j = 0; j < kLanes; ++j) lane_max[j] = -kInf;
    int k = 0;
    for (; k + kLanes <= n; k += kLanes) {
        for (int j = 0; j < kLanes; ++j) {
            const float x = xs[k + j];
            lane_max[j] = x > lane_max[j] ? x : lane_max[j];
        }
    }
    for (; k < n; ++k) {
        lane_max[0] = xs[k] > lane_max[0] ? xs[k] : lane_max[0];
    }
    float m = -kInf;
    for (int j = 0; j < kLanes; ++j) {
        m = lane_max[j] > m ? lane_max[j] : m;
    }
    *bad = any_bad != 0;
    return m;
}

// Sums exp(xs - m) and exp(xs - m) * (xs - m) over the chunk (every xs <= m; -inf entries add 0).
// Two loops, not one: GCC 12 vectorizes the element-wise exponential as a plain loop, but left the fused
// "exponential into 16 lane sums" loop scalar in every clone (12 ns per element on Zen 2, slower than libm
// expf on an AVX-512 Xeon). The terms and the summation order are the same as the fused loop's.
DG_VECTOR_CLONES
void exp_sums(const float * xs, int n, float m, double * sum_e, double * sum_ed) {
    alignas(64) float es[kChunk];
    alignas(64) float eds[kChunk];
    for (int k = 0; k < n; ++k) {
        const float d = xs[k] - m;
        const float e = exp_nonpositive(d);
        es[k] = e;
        eds[k] = e * (d < kExpFloor ? kExpFloor : d);  // e == 0 there; avoids 0 * -inf
    }
    float lane_e[kLanes] = {};
    float lane_ed[kLanes] = {};
    int k = 0;
    for (; k + kLanes <= n; k += kLanes) {
        for (int j = 0; j < kLanes; ++j) {
            lane_e[j] += es[k + j];
            lane_ed[j] += eds[k + j];
        }
    }
    for (; k < n; ++k) {
        lane_e[0] += es[k];
        lane_ed[0] += eds[k];
    }
    double se = 0.0, sed = 0.0;
    for (int j = 0; j < kLanes; ++j) {
        se += lane_e[j];
        sed += lane_ed[j];
    }
    *sum_e = se;
    *sum_ed = sed;
}

DG_VECTOR_CLONES
void write_exp(const float * logits, int64_t n, float inv_temp, float shift, float * out) {
    for (int64_t i = 0; i < n; ++i) out[i] = exp_nonpositive(logits[i] * inv_temp - shift);
}

bool no_distribution(RowStats * out) {
    out->argmax = -1;
    out->sampled = -1;
    out->log_z = kNaN;
    out->entropy = kNaN;
    return false;
}

// Per-chunk sums kept from the statistics pass so the inverse-CDF walk touches only one chunk's logits.
struct ChunkSum {
    double sum;  // sum of exp(x - ref) over the chunk, the excluded max's 1 included
    float ref;   // the running max the sum is relative to (-inf for an all -inf prefix)
};

}  // namespace

bool row_stats(const float * logits, int64_t V, float inv_temp, float u, RowStats * out) {
    if (!out) return false;
    if (!logits || V <= 0 || V > INT32_MAX || !std::isfinite(inv_temp) || !(inv_temp > 0.0f) || !(u >= 0.0f && u < 1.0f))
        return no_distribution(out);

    const int64_t n_chunks = (V + kChunk - 1) / kChunk;
    thread_local std::vector<ChunkSum> chunks;
    chunks.resize(static_cast<size_t>(n_chunks));
    alignas(64) float xs[kChunk];

    float m = -kInf;       // running max of x
    int64_t argmax = -1;   // its first index
    double s_rest = 0.0;   // sum of exp(x - m) except the argmax's own 1
    double t = 0.0;        // sum of exp(x - m) * (x - m)
    for (int64_t c = 0; c < n_chunks; ++c) {
        const int64_t begin = c * kChunk;
        const int n = static_cast<int>(V - begin < kChunk ? V - begin : kChunk);
        bool bad = false;
        const float chunk_max = scale_and_max(logits + begin, n, inv_temp, xs, &bad);
        if (bad) return no_distribution(out);
        double excluded_one = 0.0;
        if (chunk_max > m) {
            if (m != -kInf) {  // move the running sums to the new max; the old max becomes an ordinary term
                const double d = static_cast<double>(m) - chunk_max;
                const double f = std::exp(d);
                const double s_old = 1.0 + s_rest;
                t = f * (t + d * s_old);
                s_rest = f * s_old;
            }
            int first = 0;
            while (xs[first] != chunk_max) ++first;
            m = chunk_max;
            argmax = begin + first;
            xs[first] = -kInf;  // its term is the exact 1 of "1 + s_rest"
            excluded_one = 1.0;
        }
        double se = 0.0, sed = 0.0;
        if (m != -kInf) exp_sums(xs, n, m, &se, &sed);
        s_rest += se;
        t += sed;
        chunks[static_cast<size_t>(c)] = ChunkSum{se + excluded_one, m};
    }
    if (m == -kInf) return no_distribution(out);

    const double z_rel = 1.0 + s_rest;  // Z / exp(m)
    const double log_z_rel = std::log1p(s_rest);
    out->argmax = static_cast<int32_t>(argmax);
    out->log_z = static_cast<float>(m + log_z_rel);
    const double h = log_z_rel - t / z_rel;
    out->entropy = static_cast<float>(h > 0.0 ? h : 0.0);

    // Inverse CDF: skip whole chunks by their sums, then walk the chunk that holds u * Z element by element.
    const double target = static_cast<double>(u) * z_rel;
    double acc = 0.0;
    int64_t last_positive_chunk = -1;
    for (int64_t c = 0; c < n_chunks; ++c) {
        const ChunkSum & cs = chunks[static_cast<size_t>(c)];
        const double w = cs.ref == -kInf || cs.sum == 0.0 ? 0.0 : cs.sum * std::exp(static_cast<double>(cs.ref) - m);
        if (w <= 0.0) continue;
        last_positive_chunk = c;
        if (acc + w <= target) {
            acc += w;
            continue;
        }
        const int64_t begin = c * kChunk;
        const int64_t end = begin + kChunk < V ? begin + kChunk : V;
        for (int64_t i = begin; i < end; ++i) {
            const float e = exp_nonpositive(logits[i] * inv_temp - m);
            if (e <= 0.0f) continue;
            acc += e;
            if (acc > target) {
                out->sampled = static_cast<int32_t>(i);
                return true;
            }
        }
        // Rounding: the chunk's walked sum fell short of its recorded sum; carry on with the walked total.
    }
    // u * Z at or beyond the rounded total: the last id with p > 0.
    const int64_t begin = last_positive_chunk * kChunk;
    int64_t last = begin + kChunk < V ? begin + kChunk - 1 : V - 1;
    while (last > begin && !(exp_nonpositive(logits[last] * inv_temp - m) > 0.0f)) --last;
    out->sampled = static_cast<int32_t>(last);
    return true;
}

void row_probs(const float * logits, int64_t V, float inv_temp, float log_z, float * probs) {
    if (!logits || !probs || V <= 0) return;
    if (!std::isfinite(log_z)) {
        std::memset(probs, 0, static_cast<size_t>(V) * sizeof(float));
        return;
    }
    write_exp(logits, V, inv_temp, log_z, probs);
}

}  // namespace dg
