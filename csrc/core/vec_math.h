// Branch-free float math that vectorises, shared by the sampler (sampler_math.cpp) and the fused element-wise
// ops (cpu_ops.cpp), plus the run-time dispatch attribute both use.
#pragma once

#include <cstdint>
#include <cstring>

// Run-time dispatch to AVX-512 / AVX2 code in a portable build (the wheel is built for baseline x86-64).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define DG_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define DG_VECTOR_CLONES
#endif

namespace dg {

// exp(d) for d <= 0 (d = -inf allowed), within 2 ulp for d >= kExpFloor, exactly 0 below it; NaN stays NaN.
// Range reduction d = k ln2 + r with |r| <= ln2/2, then a degree-7 Taylor polynomial
// (truncation error r^8/8! <= 5e-9, below half an ulp) and a 2^k built from its exponent bits.
constexpr float kExpFloor = -87.0f;  // exp(-87) ~ 1.6e-38, still a normal float

inline float exp_nonpositive(float d) {
    constexpr float kLog2e = 1.44269504088896341f;
    constexpr float kRoundShift = 12582912.0f;    // 1.5 * 2^23: adding and subtracting rounds to an integer
    constexpr float kLn2Hi = 0.693145751953125f;  // ln 2 split so k * kLn2Hi is exact for |k| <= 128
    constexpr float kLn2Lo = 1.42860682030941723e-6f;
    // NaN takes the floor here too, so that the integer conversion of k below is defined; it comes out as NaN.
    const float x = d >= kExpFloor ? d : kExpFloor;
    const float k = (x * kLog2e + kRoundShift) - kRoundShift;
    const float r = (x - k * kLn2Hi) - k * kLn2Lo;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;  // k in [-126, 0]: a normal power of two
    float two_k;
    std::memcpy(&two_k, &bits, sizeof two_k);
    return d >= kExpFloor ? p * two_k : (d < kExpFloor ? 0.0f : d);
}

}  // namespace dg
