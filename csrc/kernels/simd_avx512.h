// AVX-512 pieces shared by the f32 and bf16 GEMMs: the 16 x 16 transpose of their panel packers (f32 panels and
// bf16 pair panels both store, for each K index, 16 consecutive output features side by side) and the
// epilogue of their register tiles.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace dg {

// In-register transpose of a 16 x 16 matrix of 32-bit lanes: r[i] holds row i on entry, column i on return.
__attribute__((target("avx512f"))) inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {  // per 128-bit lane: pairs of rows interleaved
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {  // u[i + k], lane L: column 4L + k of rows i .. i + 3
        u[i + 0] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int k = 0; k < 4; ++k) {  // gather lane L of u[k], u[4 + k], u[8 + k], u[12 + k] into column 4L + k
        const __m512i v0 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0x88);
        const __m512i v1 = _mm512_shuffle_i32x4(u[k], u[4 + k], 0xDD);
        const __m512i v2 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0x88);
        const __m512i v3 = _mm512_shuffle_i32x4(u[8 + k], u[12 + k], 0xDD);
        r[k] = _mm512_shuffle_i32x4(v0, v2, 0x88);
        r[k + 8] = _mm512_shuffle_i32x4(v0, v2, 0xDD);
        r[k + 4] = _mm512_shuffle_i32x4(v1, v3, 0x88);
        r[k + 12] = _mm512_shuffle_i32x4(v1, v3, 0xDD);
    }
}

// Writes R tokens' 32-feature accumulators to c[r][0..32): added to what is there when `accumulate` (a later
// K block), masked to the panel's valid features.
template <int R>
__attribute__((target("avx512f"))) inline void store_tile(__m512 (&acc0)[R], __m512 (&acc1)[R], float * const * c,
                                                          __mmask16 m0, __mmask16 m1, bool accumulate) {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
        float * cr = c[r];
        if (accumulate) {
            acc0[r] = _mm512_add_ps(acc0[r], _mm512_maskz_loadu_ps(m0, cr));
            acc1[r] = _mm512_add_ps(acc1[r], _mm512_maskz_loadu_ps(m1, cr + 16));
        }
        _mm512_mask_storeu_ps(cr, m0, acc0[r]);
        _mm512_mask_storeu_ps(cr + 16, m1, acc1[r]);
    }
}

}  // namespace dg

#endif
