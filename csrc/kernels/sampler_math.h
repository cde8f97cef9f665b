// Per-position sampler statistics on the host: the CPU twin of the CUDA kernel in csrc/offload/cuda/sampler.cu.
//
// For one canvas position with raw logits l[0..V) and the step's inverse temperature:
//
//   x_i      = l_i * inv_temp                           (rounded to float, as on the device)
//   argmax   = smallest i with x_i == max(x)             (torch.argmax tie rule)
//   log_z    = max(x) + log(sum_i exp(x_i - max(x)))
//   entropy  = log_z - sum_i p_i x_i                    (entropy of p = softmax(x), in nats)
//   sampled  = smallest i with sum_{j<=i} p_j > u       (inverse CDF from a caller-drawn u in [0,1));
//              when rounding leaves no such i, the last i with p_i > 0. Never an id with p_i == 0.
//
// The host and device accumulate in different orders, so sampled ids agree except when u lies within
// float rounding (~1e-6 relative) of a CDF boundary. Terms with x_i - max(x) < -87 (p below ~1.6e-38)
// count as 0 here; the device may keep some of them as denormals, which moves an entropy by less than
// 1e-30 nats (V * 1.6e-38 * 104) and nothing else.
//
// Cost: one pass over the row for the statistics (it stays in L1 chunk by chunk), then a walk over
// per-chunk sums plus one chunk for the sample. The exponential is a vectorisable polynomial (<= 2 ulp).
#pragma once

#include <cstdint>

namespace dg {

struct RowStats {
    int32_t argmax;   // first index of the largest x; -1 when the row has no distribution
    int32_t sampled;  // inverse-CDF sample for u; -1 when the row has no distribution
    float log_z;      // log sum_i exp(x_i); NaN when the row has no distribution
    float entropy;    // nats, >= 0; NaN when the row has no distribution
};

// Computes the statistics of one row. Returns false (and fills out with -1 / NaN) when the row has no
// distribution: V <= 0, a NaN or +inf entry, or every entry -inf; also when inv_temp is not finite and
// positive or u is outside [0,1). The caller reports which position failed.
bool row_stats(const float * logits, int64_t V, float inv_temp, float u, RowStats * out);

// probs[i] = exp(x_i - log_z) with log_z from row_stats at the same inv_temp: the self-conditioning
// probabilities when the product probs @ E runs on the host. Writes zeros if log_z is not finite.
void row_probs(const float * logits, int64_t V, float inv_temp, float log_z, float * probs);

}  // namespace dg
