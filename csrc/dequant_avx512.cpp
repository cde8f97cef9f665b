// See dequant_avx512.h.
#include "dequant_avx512.h"

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
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("f16c");
    return ok;
}

#endif  // DG_DEQUANT_AVX512

}  // namespace

ggml_to_float_t fast_to_float(ggml_type type) {
#ifdef DG_DEQUANT_AVX512
    if (cpu_runs_ours()) {
        switch (type) {
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

}  // namespace dg
