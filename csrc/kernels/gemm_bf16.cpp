// See gemm_bf16.h. Layout: VDPBF16PS multiplies 16 lanes of bf16 pairs and adds each pair's two products
// into one f32 lane, so a packed weight panel stores, for every pair of K columns (2p, 2p+1) and each of the
// 32 panel rows j, the two bf16 values w[j][2p], w[j][2p+1] side by side (one 32-bit lane); the activations
// are bf16 rows, whose pair (2p, 2p+1) is one 32-bit word that the micro-kernel broadcasts.
#include "kernels/gemm_bf16.h"

#include "kernels/dequant_avx512.h"
#include "kernels/simd_avx512.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DG_GEMM_BF16 1
#endif

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the deliberately undefined pass-through operand inside the AVX-512 shuffle intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace dg {

namespace {

constexpr int kNR = 32;     // output features per panel: two registers of 16 f32 lanes
constexpr int kTR = 8;      // tokens per register tile: 16 accumulators + 2 weight registers + 1 broadcast
constexpr int kKC = 256;    // K block of a packed panel (128 pairs x 32 rows x 4 bytes = 16 KiB, L1-resident)
constexpr int64_t kXChunk = 1 << 21;  // bf16 activation elements converted at a time (4 MiB per thread)

#ifdef DG_GEMM_BF16

#define DG_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

// Masks of the f32 lanes [0, n) within a 16-lane register, n clamped to [0, 16].
inline __mmask16 lane_mask(int n) {
    return static_cast<__mmask16>(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1);
}

// dst[0..n) = bf16(src[0..n)), round to nearest even (VCVTNE2PS2BF16), n even.
DG_BF16_TARGET void to_bf16(const float * src, int64_t n, uint16_t * dst) {
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
        _mm512_storeu_si512(dst + i, reinterpret_cast<const __m512i &>(v));
    }
    if (i < n) {
        const int rest = static_cast<int>(n - i);
        const __m512 lo = _mm512_maskz_loadu_ps(lane_mask(rest), src + i);
        const __m512 hi = _mm512_maskz_loadu_ps(lane_mask(rest - 16), src + i + 16);
        const __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
        _mm512_mask_storeu_epi16(dst + i, rest >= 32 ? ~__mmask32(0) : (__mmask32(1) << rest) - 1,
                                 reinterpret_cast<const __m512i &>(v));
    }
}

// Packs rows [n0, n0 + n_valid) x columns [k0, k0 + kc) of w (kc even) as bf16 pairs:
// wp[p * 32 + j] = {w[n0 + j][k0 + 2p], w[n0 + j][k0 + 2p + 1]}, zero for j >= n_valid. The rows are
// dequantized whole into a scratch (sequential stores), then 16 rows x 16 pairs at a time are converted and
// transposed in registers: a scalar scatter of the pairs cost as much as the dequantization.
DG_BF16_TARGET void pack_panel_bf16(const ggml_tensor * w, int64_t n0, int n_valid, int64_t k0, int kc, uint32_t * wp) {
    alignas(64) float dequant[kNR][kKC];
    const ggml_to_float_t to_float = fast_to_float(w->type);
    const size_t k0_bytes = k0 / ggml_blck_size(w->type) * ggml_type_size(w->type);
    const int kc32 = (kc + 31) / 32 * 32;  // whole 16-pair blocks; the pairs past kc are zero and never read
    for (int j = 0; j < kNR; ++j) {
        if (j < n_valid) {
            to_float(static_cast<const char *>(w->data) + (n0 + j) * w->nb[1] + k0_bytes, dequant[j], kc);
            std::fill(dequant[j] + kc, dequant[j] + kc32, 0.0f);
        } else {
            std::fill(dequant[j], dequant[j] + kc32, 0.0f);
        }
    }
    for (int j0 = 0; j0 < kNR; j0 += 16) {
        for (int k = 0; k < kc32; k += 32) {
            __m512i r[16];
            for (int i = 0; i < 16; ++i) {
                const float * row = dequant[j0 + i] + k;
                const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_load_ps(row + 16), _mm512_load_ps(row));
                r[i] = reinterpret_cast<const __m512i &>(v);
            }
            transpose16(r);
            for (int i = 0; i < 16; ++i) {
                _mm512_store_si512(wp + (k / 2 + i) * kNR + j0, r[i]);
            }
        }
    }
}

// c[r][0..32) (+)= sum over the kc/2 pairs of x[r] . wp for R tokens (bf16 rows already at the K block).
template <int R>
DG_BF16_TARGET void micro_tile_bf16(const uint32_t * wp, const uint16_t * const * xr, int n_pairs, float * const * c,
                                    __mmask16 m0, __mmask16 m1, bool accumulate) {
    __m512 acc0[R], acc1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        acc0[r] = _mm512_setzero_ps();
        acc1[r] = _mm512_setzero_ps();
    }
    for (int p = 0; p < n_pairs; ++p) {
        const __m512bh w0 = reinterpret_cast<__m512bh>(_mm512_load_si512(wp + p * kNR));
        const __m512bh w1 = reinterpret_cast<__m512bh>(_mm512_load_si512(wp + p * kNR + 16));
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) {
            int32_t pair;
            std::memcpy(&pair, xr[r] + 2 * p, sizeof(pair));
            const __m512bh xv = reinterpret_cast<__m512bh>(_mm512_set1_epi32(pair));
            acc0[r] = _mm512_dpbf16_ps(acc0[r], xv, w0);
            acc1[r] = _mm512_dpbf16_ps(acc1[r], xv, w1);
        }
    }
    store_tile<R>(acc0, acc1, c, m0, m1, accumulate);
}

using TileFn = void (*)(const uint32_t *, const uint16_t * const *, int, float * const *, __mmask16, __mmask16, bool);
constexpr TileFn kTiles[kTR + 1] = {nullptr, micro_tile_bf16<1>, micro_tile_bf16<2>, micro_tile_bf16<3>,
                                    micro_tile_bf16<4>, micro_tile_bf16<5>, micro_tile_bf16<6>,
                                    micro_tile_bf16<7>, micro_tile_bf16<8>};

// One panel (rows [n0, n0 + 32) of w) over columns [k_begin, k_end) times the bf16 rows xb + i * x_stride
// (which start at column k_begin), into c_rows[i] + n0; accumulate adds to what c holds.
void panel_product_bf16(const ggml_tensor * w, int64_t n0, int64_t k_begin, int64_t k_end, const uint16_t * xb,
                        int64_t x_stride, float * const * c_rows, int64_t n, bool accumulate, uint32_t * wp) {
    const int n_valid = static_cast<int>(std::min<int64_t>(kNR, w->ne[1] - n0));
    const __mmask16 m0 = lane_mask(n_valid);
    const __mmask16 m1 = lane_mask(n_valid - 16);
    const uint16_t * xr[kTR];
    float * cr[kTR];
    for (int64_t k0 = k_begin; k0 < k_end; k0 += kKC) {
        const int kc = static_cast<int>(std::min<int64_t>(kKC, k_end - k0));
        pack_panel_bf16(w, n0, n_valid, k0, kc, wp);
        for (int64_t t0 = 0; t0 < n; t0 += kTR) {
            const int rows = static_cast<int>(std::min<int64_t>(kTR, n - t0));
            for (int r = 0; r < rows; ++r) {
                xr[r] = xb + (t0 + r) * x_stride + (k0 - k_begin);
                cr[r] = c_rows[t0 + r] + n0;
            }
            kTiles[rows](wp, xr, kc / 2, cr, m0, m1, accumulate || k0 > k_begin);
        }
    }
}

// A 64-byte aligned bf16 panel buffer per thread.
uint32_t * panel_buffer_bf16() {
    thread_local std::vector<uint32_t> storage(kNR * kKC / 2 + 16);
    return reinterpret_cast<uint32_t *>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
}

#endif  // DG_GEMM_BF16

}  // namespace

bool gemm_bf16_wanted(const KernelConfig & kernels, const ggml_tensor * w, bool f16_too) {
#ifdef DG_GEMM_BF16
    // f16 weights stay on the f32 path too: rounding their activations to bf16 breaks the F16 file's HF parity
    // bound (bench/README.md, "Numerics behind graph choices").
    return w->type != GGML_TYPE_F32 && (f16_too || w->type != GGML_TYPE_F16) && w->ne[0] % 2 == 0 &&
           kernels.isa == CpuIsa::kAvx512 && kernels.bf16;
#else
    (void) kernels;
    (void) w;
    (void) f16_too;
    return false;
#endif
}

void round_to_bf16(const float * src, int64_t n, uint16_t * dst) {
#ifdef DG_GEMM_BF16
    to_bf16(src, n, dst);
#else
    (void) src;
    (void) n;
    (void) dst;
#endif
}

void gemm_bf16_panels(const ggml_tensor * w, int64_t p_first, int64_t p_step, int64_t p_end, const float * const * x_rows,
                      float * const * c_rows, int64_t n_rows) {
#ifdef DG_GEMM_BF16
    if (p_first >= p_end || n_rows <= 0) {
        return;
    }
    // The activations are rounded to bf16 once per call (per thread: a custom op has no barrier to share a
    // buffer at; the conversion is O(rows x K) against the product's O(rows x K x features / threads)), a
    // K chunk at a time so the buffer stays bounded for long K (the vocabulary-wide self-conditioning product).
    const int64_t K = w->ne[0];
    const int64_t chunk = std::max<int64_t>(kKC, kXChunk / n_rows / kKC * kKC);
    thread_local std::vector<uint16_t> xb;
    uint32_t * wp = panel_buffer_bf16();
    for (int64_t k_begin = 0; k_begin < K; k_begin += chunk) {
        const int64_t k_end = std::min(K, k_begin + chunk);
        const int64_t width = k_end - k_begin;
        xb.resize(static_cast<size_t>(n_rows * width));
        for (int64_t i = 0; i < n_rows; ++i) {
            to_bf16(x_rows[i] + k_begin, width, xb.data() + i * width);
        }
        for (int64_t p = p_first; p < p_end; p += p_step) {
            panel_product_bf16(w, p * kNR, k_begin, k_end, xb.data(), width, c_rows, n_rows, k_begin > 0, wp);
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
