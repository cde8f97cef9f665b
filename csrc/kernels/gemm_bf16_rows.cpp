// See gemm_bf16.h (gemm_bf16_rows). The few-token layout: an MoE expert sees ~16 of the canvas's 256 tokens
// (top-8 of 128 experts), too few to pay for gemm_bf16.cpp's panel packing (dequantize 32 rows to f32, round to
// bf16 pairs, 16 x 16 transposes, store, reload), which cost more than the products there (in perf, the q4_K
// dequantizer alone outweighed the multiply-adds). Here each weight row is dequantized straight to bf16 in K order
// (dequant_avx512.h's fast_to_bf16: no f32 round trip, no transpose) into a small L1 scratch, and a 4-row x
// 4-token register tile multiplies it with the bf16 token rows, 32 K values per VDPBF16PS: each of the 16
// accumulators holds 16 partial sums of one (row, token) dot product, added up once at the end by a 4-level
// shuffle tree. The products' inputs are the panel path's, value for value (bf16 of the same dequantized values,
// the same round-to-nearest-even of the activations); only the order of the f32 additions differs.
#include "kernels/gemm_bf16.h"

#include "kernels/dequant_avx512.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DG_GEMM_BF16_ROWS 1
#endif

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the deliberately undefined pass-through operand inside the AVX-512 shuffle intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace dg {

namespace {

constexpr int kPanel = 32;  // output features per work item, as gemm_bf16_panels counts them
constexpr int kRows = 4;    // weight rows per register tile
constexpr int kToks = 4;    // tokens per register tile: 4 x 4 accumulators, one 16-way reduction tree
constexpr int kKStep = 32;  // K values per VDPBF16PS (16 lanes of bf16 pairs)
// Up to here the row tiles beat or match the panels. 1 thread, 16 experts of the released shapes, ms row tiles /
// panels (tests/c/test_gemm.cpp bench-id) at 16 / 32 / 64 / 128 / 256 tokens per expert: q4_K gate_up
// [2816 -> 1408] 7.9 / 15.1, 12.8 / 19.5, 21.3 / 28.3, 42.9 / 46.6, 102.0 / 83.8; q8_0 down [704 -> 2816]
// 3.95 / 6.8, 6.7 / 9.4, 11.0 / 13.2, 21.7 / 21.8, 41.2 / 38.7.
constexpr int64_t kMaxTokens = 128;

#ifdef DG_GEMM_BF16_ROWS

#define DG_ROWS_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

// s[i] = the sum of v[i]'s 16 lanes, i < 16 (lane order of the result: 4q + j is v[4q + j]).
DG_ROWS_TARGET inline __m512 sum_lanes16(const __m512 (&v)[16]) {
    __m512 a[8], b[4], c[2];
    for (int i = 0; i < 8; ++i) {  // each 128-bit lane: {v2i, v2i+1, v2i, v2i+1} partials
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    }
    for (int i = 0; i < 4; ++i) {  // each 128-bit lane: {v4i, .., v4i+3} partials
        const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(a[2 * i]), _mm512_castps_pd(a[2 * i + 1]));
        const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(a[2 * i]), _mm512_castps_pd(a[2 * i + 1]));
        b[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    }
    for (int i = 0; i < 2; ++i) {  // 128-bit lanes {b2i L0+L1, b2i L2+L3, b2i+1 L0+L1, b2i+1 L2+L3}
        c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(b[2 * i], b[2 * i + 1], 0xDD));
    }
    return _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xDD));
}

// out[4 t + r] = dot(w row r < 4, x row t < T) over k32 bf16 values (a multiple of 32; both sides zero-padded).
template <int T>
DG_ROWS_TARGET void tile_rows(const uint16_t * wb, const uint16_t * const * xr, int64_t k32, float * out) {
    __m512 acc[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) {
        acc[i] = _mm512_setzero_ps();
    }
    for (int64_t k = 0; k < k32; k += kKStep) {
        __m512bh w[kRows];
#pragma GCC unroll 4
        for (int r = 0; r < kRows; ++r) {
            w[r] = reinterpret_cast<__m512bh>(_mm512_load_si512(wb + r * k32 + k));
        }
#pragma GCC unroll 4
        for (int t = 0; t < T; ++t) {
            const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_load_si512(xr[t] + k));
#pragma GCC unroll 4
            for (int r = 0; r < kRows; ++r) {
                acc[4 * t + r] = _mm512_dpbf16_ps(acc[4 * t + r], xv, w[r]);
            }
        }
    }
    _mm512_store_ps(out, sum_lanes16(acc));
}

using TileFn = void (*)(const uint16_t *, const uint16_t * const *, int64_t, float *);
constexpr TileFn kTiles[kToks + 1] = {nullptr, tile_rows<1>, tile_rows<2>, tile_rows<3>, tile_rows<4>};

// Rows [n0, n0 + n_valid) of w, dequantized and rounded to bf16 in K order into wb (kRows rows of k32 values,
// zero past K and for the rows past n_valid). f32 is a scratch of K floats.
void dequant_rows_bf16(const ggml_tensor * w, int64_t n0, int n_valid, int64_t k32, uint16_t * wb, float * f32) {
    const int64_t K = w->ne[0];
    const to_bf16_t direct = fast_to_bf16(w->type);
    const ggml_to_float_t to_float = direct != nullptr ? nullptr : fast_to_float(w->type);
    for (int r = 0; r < kRows; ++r) {
        uint16_t * dst = wb + r * k32;
        if (r < n_valid) {
            const char * row = static_cast<const char *>(w->data) + (n0 + r) * w->nb[1];
            if (direct != nullptr) {
                direct(row, dst, K);
            } else {
                to_float(row, f32, K);
                round_to_bf16(f32, K, dst);
            }
            std::fill(dst + K, dst + k32, uint16_t{0});
        } else {
            std::fill(dst, dst + k32, uint16_t{0});
        }
    }
}

// Asks for rows [n0, n0 + n) of w in L1 while the tiles run on the rows before them. The tiles stream their
// tokens' bf16 rows through L1, and between two 4-row groups the hardware prefetcher loses the weights' stream:
// without this the dequantizer waited on memory, at 2.5x its streaming time (q4_K gate_up, 16 tokens per
// expert: 10.3 -> 7.9 ms per 16 experts with it; q8_0 down 6.0 -> 3.95 ms).
// No target attribute on purpose: GCC 12 drops the prefetches of a target("avx512...") function inlined into a
// caller without one.
void prefetch_rows(const ggml_tensor * w, int64_t n0, int64_t n) {
    const char * first = static_cast<const char *>(w->data) + n0 * w->nb[1];
    const size_t bytes = static_cast<size_t>(n) * w->nb[1];
    for (size_t off = 0; off < bytes; off += 64) {
        _mm_prefetch(first + off, _MM_HINT_T0);
    }
}

// A 64-byte aligned buffer of n uint16 values, one per thread and use.
template <int kUse>
uint16_t * aligned_u16(size_t n) {
    thread_local std::vector<uint16_t> storage;
    if (storage.size() < n + 32) {
        storage.resize(n + 32);
    }
    return reinterpret_cast<uint16_t *>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
}

#endif  // DG_GEMM_BF16_ROWS

}  // namespace

int64_t gemm_bf16_rows_max_tokens() {
#ifdef DG_GEMM_BF16_ROWS
    return kMaxTokens;
#else
    return 0;
#endif
}

void gemm_bf16_rows(const ggml_tensor * w, int64_t p_first, int64_t p_step, int64_t p_end, const float * const * x_rows,
                    float * const * c_rows, int64_t n_rows) {
#ifdef DG_GEMM_BF16_ROWS
    if (p_first >= p_end || n_rows <= 0) {
        return;
    }
    const int64_t K = w->ne[0];
    const int64_t N = w->ne[1];
    const int64_t k32 = (K + kKStep - 1) / kKStep * kKStep;
    // The token rows in bf16, each zero-padded to k32 (rounded per call and thread, as gemm_bf16_panels does).
    uint16_t * xb = aligned_u16<0>(static_cast<size_t>(n_rows * k32));
    for (int64_t i = 0; i < n_rows; ++i) {
        round_to_bf16(x_rows[i], K, xb + i * k32);
        std::fill(xb + i * k32 + K, xb + (i + 1) * k32, uint16_t{0});
    }
    uint16_t * wb = aligned_u16<1>(static_cast<size_t>(kRows * k32));
    thread_local std::vector<float> f32;
    f32.resize(static_cast<size_t>(K));
    const uint16_t * xr[kToks];
    alignas(64) float out[16];
    for (int64_t p = p_first; p < p_end; p += p_step) {
        const int64_t panel_end = std::min(N, (p + 1) * kPanel);
        for (int64_t n0 = p * kPanel; n0 < panel_end; n0 += kRows) {
            const int n_valid = static_cast<int>(std::min<int64_t>(kRows, N - n0));
            dequant_rows_bf16(w, n0, n_valid, k32, wb, f32.data());
            // The next group this thread takes: in this panel, else the first of its next one.
            const int64_t next = n0 + kRows < panel_end ? n0 + kRows : p + p_step < p_end ? (p + p_step) * kPanel : N;
            prefetch_rows(w, next, std::min<int64_t>(kRows, N - next));
            for (int64_t t0 = 0; t0 < n_rows; t0 += kToks) {
                const int toks = static_cast<int>(std::min<int64_t>(kToks, n_rows - t0));
                for (int t = 0; t < toks; ++t) {
                    xr[t] = xb + (t0 + t) * k32;
                }
                kTiles[toks](wb, xr, k32, out);
                for (int t = 0; t < toks; ++t) {
                    std::memcpy(c_rows[t0 + t] + n0, out + 4 * t, sizeof(float) * static_cast<size_t>(n_valid));
                }
            }
        }
    }
#else
    (void) w;
    (void) p_first;
    (void) p_step;
    (void) p_end;
    (void) x_rows;
    (void) c_rows;
    (void) n_rows;
#endif
}

}  // namespace dg
