// The partial reduction of the fused sampler kernel (sampler.cu), in a header of its own so the host can
// compile the very same arithmetic: tests/c/test_sampler_math.cpp replays the kernel's thread/warp/block
// reduction tree and its CDF walk on the CPU (--emulate-device), which checks the device math without a GPU.
//
// A partial over a set of indices of one row is (m, s_rest, t, idx):
//   m       the max of x over the set (-inf when the set is empty or all -inf)
//   idx     the first index holding m (INT_MAX when empty)
//   s_rest  sum of exp(x - m) over the set EXCEPT the element at idx (whose term is exactly 1)
//   t       sum of exp(x - m) * (x - m)
// Keeping "1 + s_rest" split gives log Z - m = log1p(s_rest) and the entropy log1p(s_rest) - t/(1 + s_rest)
// with full relative precision on very peaked rows.
#pragma once

#include "core/vec_math.h"  // dg::kExpFloor, the host twin's "p is 0" threshold

#include <climits>
#include <cmath>

#if defined(__CUDACC__)
#define DG_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DG_HOST_DEVICE inline
#endif

namespace dg_cuda {

// Threads per block of the statistics kernel (one block per row). 256 rows x 512 threads stay resident on
// an H100. The host emulation replays the same tree, so the constant lives here.
constexpr int kStatsThreads = 512;
// Consecutive elements per thread in one tile of the CDF walk (a tile is kStatsThreads * kWalkPerThread ids).
constexpr int kWalkPerThread = 4;

struct Partial {
    float m;
    float s_rest;
    float t;
    int idx;
};

DG_HOST_DEVICE Partial empty_partial() { return Partial{-INFINITY, 0.0f, 0.0f, INT_MAX}; }

// Adds element x at index i; within one thread indices arrive in increasing order, so a tie keeps the
// earlier index. NaN and +inf set *bad (the row has no distribution); -inf contributes nothing.
DG_HOST_DEVICE void add_element(Partial & p, float x, int i, bool & bad) {
    if (x == -INFINITY) return;
    if (!(x < INFINITY)) {
        bad = true;
        return;
    }
    if (x > p.m) {
        if (p.m == -INFINITY) {
            p = Partial{x, 0.0f, 0.0f, i};
            return;
        }
        // Rescale to the new max: the old max becomes an ordinary term exp(m_old - x).
        const float d = p.m - x;
        const float f = expf(d);
        const float s_old = 1.0f + p.s_rest;
        // f == 0: the old terms vanish. Tested rather than multiplied through, because d * s_old overflows to
        // -inf when the row spans more than FLT_MAX (e.g. -FLT_MAX used as a mask) and 0 * -inf is NaN.
        p.t = f > 0.0f ? f * (p.t + d * s_old) : 0.0f;
        p.s_rest = f * s_old;
        p.m = x;
        p.idx = i;
    } else {
        const float d = x - p.m;  // -inf when the row spans more than FLT_MAX
        const float e = expf(d);
        if (e > 0.0f) {  // skipping e == 0 changes nothing else and avoids 0 * -inf = NaN
            p.s_rest += e;
            p.t += e * d;
        }
    }
}

// Merges partials of disjoint index sets; the lower index wins a tie of the max (torch.argmax rule).
DG_HOST_DEVICE Partial combine(const Partial & a, const Partial & b) {
    if (b.m == -INFINITY) return a;
    if (a.m == -INFINITY) return b;
    const bool a_big = a.m > b.m || (a.m == b.m && a.idx < b.idx);
    const Partial & big = a_big ? a : b;
    const Partial & small = a_big ? b : a;
    const float d = small.m - big.m;  // <= 0, -inf when the two maxima are more than FLT_MAX apart
    const float f = expf(d);
    const float s_small = 1.0f + small.s_rest;
    Partial r;
    r.m = big.m;
    r.idx = big.idx;
    r.s_rest = big.s_rest + f * s_small;
    r.t = f > 0.0f ? big.t + f * (small.t + d * s_small) : big.t;  // as in add_element: no 0 * -inf
    return r;
}

// log Z and the entropy from the partial of a whole row (m finite).
DG_HOST_DEVICE float partial_log_z(const Partial & p) { return p.m + log1pf(p.s_rest); }
DG_HOST_DEVICE float partial_entropy(const Partial & p) {
    const float h = log1pf(p.s_rest) - p.t / (1.0f + p.s_rest);
    return h > 0.0f ? h : 0.0f;
}

// A term exp(d), d = x - max(x), of the CDF walk. Below dg::kExpFloor it is 0, as in the host twin, so both
// agree on which ids can be sampled at all (u = 0 takes the first of them, the rounding clamp the last);
// expf alone would keep denormal terms down to d ~ -103.
DG_HOST_DEVICE float walk_term(float d) { return d >= dg::kExpFloor ? expf(d) : 0.0f; }

}  // namespace dg_cuda
