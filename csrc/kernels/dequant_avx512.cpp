// See dequant_avx512.h.
#include "kernels/dequant_avx512.h"

#include "core/cpu_isa.h"

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DG_DEQUANT_AVX512 1
#endif

#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the deliberately undefined pass-through operand inside the AVX-512 conversion intrinsics.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace dg {

namespace {

#ifdef DG_DEQUANT_AVX512

#define DG_DEQUANT_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,f16c")))

// ggml's q6_K block (ggml-common.h): 256 values as 4-bit low parts, 2-bit high parts, 16 int8 sub-block
// scales and an f16 super-scale. value = d * scale[sub-block] * (6-bit q - 32).
constexpr int kQK = 256;
struct BlockQ6K {
    uint8_t ql[kQK / 2];
    uint8_t qh[kQK / 4];
    int8_t scales[kQK / 16];
    uint16_t d;
};
static_assert(sizeof(BlockQ6K) == 210, "q6_K block layout");

// 16 unsigned bytes -> 16 floats of scale * (q - 32), in the order ggml multiplies: (d * sc) * q.
DG_DEQUANT_TARGET inline __m512 q6_values(__m128i q, float scale) {
    const __m512i qi = _mm512_sub_epi32(_mm512_cvtepu8_epi32(q), _mm512_set1_epi32(32));
    return _mm512_mul_ps(_mm512_set1_ps(scale), _mm512_cvtepi32_ps(qi));
}

// ggml's loop, 16 values of each of its four output streams at a time.
DG_DEQUANT_TARGET void to_float_q6_K(const void * src, float * y, int64_t n) {
    const BlockQ6K * blocks = static_cast<const BlockQ6K *>(src);
    const __m128i low4 = _mm_set1_epi8(0x0F);
    const __m128i low2 = _mm_set1_epi8(0x03);
    for (int64_t b = 0; b < n / kQK; ++b) {
        const BlockQ6K & x = blocks[b];
        const float d = _cvtsh_ss(x.d);
        const uint8_t * ql = x.ql;
        const uint8_t * qh = x.qh;
        const int8_t * sc = x.scales;
        for (int half = 0; half < 2; ++half) {
            for (int g = 0; g < 2; ++g) {  // l in [16g, 16g + 16): sub-block scale index is = g
                const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i *>(ql + 16 * g));
                const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i *>(ql + 32 + 16 * g));
                const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(qh + 16 * g));
                const __m128i q1 = _mm_or_si128(_mm_and_si128(a, low4), _mm_slli_epi16(_mm_and_si128(h, low2), 4));
                const __m128i q2 = _mm_or_si128(_mm_and_si128(c, low4),
                                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 2), low2), 4));
                const __m128i q3 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(a, 4), low4),
                                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 4), low2), 4));
                const __m128i q4 = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(c, 4), low4),
                                                _mm_slli_epi16(_mm_and_si128(_mm_srli_epi16(h, 6), low2), 4));
                float * out = y + 16 * g;
                _mm512_storeu_ps(out + 0, q6_values(q1, d * static_cast<float>(sc[g + 0])));
                _mm512_storeu_ps(out + 32, q6_values(q2, d * static_cast<float>(sc[g + 2])));
                _mm512_storeu_ps(out + 64, q6_values(q3, d * static_cast<float>(sc[g + 4])));
                _mm512_storeu_ps(out + 96, q6_values(q4, d * static_cast<float>(sc[g + 6])));
            }
            y += 128;
            ql += 64;
            qh += 32;
            sc += 8;
        }
    }
}

// ggml's q4_K block: 256 values in 8 sub-blocks of 32, each with a 6-bit scale and a 6-bit min packed into
// 12 bytes, f16 super-scales d and dmin. value = (d * scale) * q - (dmin * min), q the 4-bit code.
struct BlockQ4K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[12];
    uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4K) == 144, "q4_K block layout");

// Sub-block j's 6-bit scale and min (ggml's packing: j < 4 in the low 6 bits of bytes j and j + 4, j >= 4
// split between the nibbles of byte j + 4 and the top 2 bits of bytes j - 4 and j).
inline void q4_K_scale_min(int j, const uint8_t * q, uint8_t * scale, uint8_t * min) {
    if (j < 4) {
        *scale = q[j] & 63;
        *min = q[j + 4] & 63;
    } else {
        *scale = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *min = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// 16 4-bit codes (one per byte) -> 16 floats of scale * q - offset, multiply then subtract like ggml (this file
// is built without FMA contraction, so the rounding matches).
DG_DEQUANT_TARGET inline __m512 q4_values(__m128i q, float scale, float offset) {
    const __m512 qf = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(q));
    return _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(scale), qf), _mm512_set1_ps(offset));
}

DG_DEQUANT_TARGET void to_float_q4_K(const void * src, float * y, int64_t n) {
    const BlockQ4K * blocks = static_cast<const BlockQ4K *>(src);
    const __m128i low4 = _mm_set1_epi8(0x0F);
    for (int64_t b = 0; b < n / kQK; ++b) {
        const BlockQ4K & x = blocks[b];
        const float d = _cvtsh_ss(x.d);
        const float dmin = _cvtsh_ss(x.dmin);
        const uint8_t * q = x.qs;
        for (int j = 0; j < 8; j += 2) {  // 64 values: the low nibbles of 32 bytes, then their high nibbles
            uint8_t sc1, m1, sc2, m2;
            q4_K_scale_min(j, x.scales, &sc1, &m1);
            q4_K_scale_min(j + 1, x.scales, &sc2, &m2);
            const float d1 = d * sc1, o1 = dmin * m1;
            const float d2 = d * sc2, o2 = dmin * m2;
            for (int h = 0; h < 2; ++h) {
                const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i *>(q + 16 * h));
                _mm512_storeu_ps(y + 16 * h, q4_values(_mm_and_si128(bytes, low4), d1, o1));
                _mm512_storeu_ps(y + 32 + 16 * h, q4_values(_mm_and_si128(_mm_srli_epi16(bytes, 4), low4), d2, o2));
            }
            q += 32;
            y += 64;
        }
    }
}

// ggml's q8_0 block: 32 int8 codes and an f16 scale. value = q * d.
struct BlockQ80 {
    uint16_t d;
    int8_t qs[32];
};
static_assert(sizeof(BlockQ80) == 34, "q8_0 block layout");

DG_DEQUANT_TARGET void to_float_q8_0(const void * src, float * y, int64_t n) {
    const BlockQ80 * blocks = static_cast<const BlockQ80 *>(src);
    for (int64_t b = 0; b < n / 32; ++b) {
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(blocks[b].d));
        for (int h = 0; h < 2; ++h) {
            const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blocks[b].qs + 16 * h));
            _mm512_storeu_ps(y + 32 * b + 16 * h, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), d));
        }
    }
}

// The bf16 row dequantizers (fast_to_bf16): the values above, rounded to bf16 to nearest even as VCVTNE2PS2BF16
// rounds them in the GEMM's panel packer, for the expert weights of a Q4_K_M file.
#define DG_DEQUANT_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,f16c")))

// A q4_K sub-block holds 16 distinct values, scale * q - offset for q = 0..15: computed once in f32 (multiply,
// then subtract, as q4_values does) and rounded, they are a 16-entry bf16 table that VPERMW indexes with the
// 32 codes (zero-extended to 16 bits): one permute per 32 values instead of 2 x (widen, convert, multiply,
// subtract) and a rounding.
DG_DEQUANT_BF16_TARGET inline __m512i q4_K_bf16_table(float scale, float offset) {
    const __m512 q = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 v = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(scale), q), _mm512_set1_ps(offset));
    const __m256bh t = _mm512_cvtneps_pbh(v);
    return _mm512_castsi256_si512(reinterpret_cast<const __m256i &>(t));  // codes < 16 read the low half only
}

DG_DEQUANT_BF16_TARGET void to_bf16_q4_K(const void * src, uint16_t * y, int64_t n) {
    const BlockQ4K * blocks = static_cast<const BlockQ4K *>(src);
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    for (int64_t b = 0; b < n / kQK; ++b) {
        const BlockQ4K & x = blocks[b];
        const float d = _cvtsh_ss(x.d);
        const float dmin = _cvtsh_ss(x.dmin);
        const uint8_t * q = x.qs;
        for (int j = 0; j < 8; j += 2) {  // 64 values: the low nibbles of 32 bytes, then their high nibbles
            uint8_t sc1, m1, sc2, m2;
            q4_K_scale_min(j, x.scales, &sc1, &m1);
            q4_K_scale_min(j + 1, x.scales, &sc2, &m2);
            const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(q));
            const __m512i lo = _mm512_cvtepu8_epi16(_mm256_and_si256(bytes, low4));
            const __m512i hi = _mm512_cvtepu8_epi16(_mm256_and_si256(_mm256_srli_epi16(bytes, 4), low4));
            _mm512_storeu_si512(y, _mm512_permutexvar_epi16(lo, q4_K_bf16_table(d * sc1, dmin * m1)));
            _mm512_storeu_si512(y + 32, _mm512_permutexvar_epi16(hi, q4_K_bf16_table(d * sc2, dmin * m2)));
            q += 32;
            y += 64;
        }
    }
}

// q * d in f32 (exact: 8 x 11 significant bits), then rounded; the f32 store and reload of the two-step path
// (to_float_q8_0, then a rounding pass) are gone.
DG_DEQUANT_BF16_TARGET void to_bf16_q8_0(const void * src, uint16_t * y, int64_t n) {
    const BlockQ80 * blocks = static_cast<const BlockQ80 *>(src);
    for (int64_t b = 0; b < n / 32; ++b) {
        const __m512 d = _mm512_set1_ps(_cvtsh_ss(blocks[b].d));
        const __m128i q0 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blocks[b].qs));
        const __m128i q1 = _mm_loadu_si128(reinterpret_cast<const __m128i *>(blocks[b].qs + 16));
        const __m512 v0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q0)), d);
        const __m512 v1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q1)), d);
        const __m512bh v = _mm512_cvtne2ps_pbh(v1, v0);
        _mm512_storeu_si512(y + 32 * b, reinterpret_cast<const __m512i &>(v));
    }
}

// f16 -> f32 with the F16C conversion (exact, like ggml's table or bit manipulation).
DG_DEQUANT_TARGET void to_float_f16(const void * src, float * y, int64_t n) {
    const uint16_t * x = static_cast<const uint16_t *>(src);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + i))));
    }
    for (; i < n; ++i) {
        y[i] = _cvtsh_ss(x[i]);
    }
}

// bf16 -> f32: the bf16 bits are the f32's upper half.
DG_DEQUANT_TARGET void to_float_bf16(const void * src, float * y, int64_t n) {
    const uint16_t * x = static_cast<const uint16_t *>(src);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(x + i)));
        _mm512_storeu_ps(y + i, _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16)));
    }
    for (; i < n; ++i) {
        const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
        std::memcpy(y + i, &bits, sizeof(bits));
    }
}

bool cpu_runs_ours() {
    // F16C is not checked: every AVX-512F CPU has it, and clang's __builtin_cpu_supports has no "f16c".
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl");
    return ok;
}

#endif  // DG_DEQUANT_AVX512

}  // namespace

ggml_to_float_t fast_to_float(ggml_type type) {
#ifdef DG_DEQUANT_AVX512
    if (cpu_runs_ours()) {
        switch (type) {
            case GGML_TYPE_Q8_0:
                return to_float_q8_0;
            case GGML_TYPE_Q4_K:
                return to_float_q4_K;
            case GGML_TYPE_Q6_K:
                return to_float_q6_K;
            case GGML_TYPE_F16:
                return to_float_f16;
            case GGML_TYPE_BF16:
                return to_float_bf16;
            default:
                break;
        }
    }
#endif
    const ggml_type_traits * tt = ggml_get_type_traits(type);
    return tt != nullptr ? tt->to_float : nullptr;
}

to_bf16_t fast_to_bf16(ggml_type type) {
#ifdef DG_DEQUANT_AVX512
    if (cpu_has_avx512_bf16()) {
        switch (type) {
            case GGML_TYPE_Q4_K:
                return to_bf16_q4_K;
            case GGML_TYPE_Q8_0:
                return to_bf16_q8_0;
            default:
                break;
        }
    }
#else
    (void) type;
#endif
    return nullptr;
}

}  // namespace dg
