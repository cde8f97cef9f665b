// When two implementations of the inverse-CDF sample (the host twin dg::row_stats and the CUDA kernel) pick
// different ids for one row and uniform, is that float rounding? Both sum the same terms in a different order, so
// their CDF boundaries sit a few float ulps of Z apart; a disagreement is explained when u*Z lies that close to
// the boundary between the two ids and (almost) no probability lies strictly between them. Anything else is a bug.
// Shared by tests/c/test_sampler_math.cpp (emulated kernel) and tests/gpu/sampler_cuda_driver.cu (real kernel).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace dg_test {

// Relative distance (to Z) within which a boundary counts as a rounding tie: the tests' BOUNDARY_GAP.
constexpr double kRoundingGap = 1e-5;

// row: raw logits; x_i = row[i] * inv_temp in float, as both implementations compute it.
inline bool sample_disagreement_is_rounding(const float * row, int64_t V, float inv_temp, float u, int32_t id_a,
                                            int32_t id_b) {
    if (id_a < 0 || id_b < 0 || id_a >= V || id_b >= V) return false;
    const int64_t lo = std::min(id_a, id_b), hi = std::max(id_a, id_b);
    double m = -INFINITY;
    for (int64_t i = 0; i < V; ++i) m = std::max(m, static_cast<double>(row[i] * inv_temp));
    double z = 0.0, through_lo = 0.0, between = 0.0;
    for (int64_t i = 0; i < V; ++i) {
        const double e = std::exp(static_cast<double>(row[i] * inv_temp) - m);
        z += e;
        if (i <= lo) through_lo += e;
        if (i > lo && i < hi) between += e;
    }
    const double target = static_cast<double>(u) * z;
    return std::fabs(target - through_lo) <= kRoundingGap * z && between <= kRoundingGap * z;
}

}  // namespace dg_test
