// See attention_cpu.h.
#include "kernels/attention_cpu.h"

#include "core/vec_math.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DG_ATTN_AVX512 1
#endif

namespace dg {

namespace {

constexpr int kQT = 8;     // queries per register tile
constexpr int kTask = 64;  // queries per task: a head's K panel is transposed once per task

#ifdef DG_ATTN_AVX512

const float * row_ptr(const ggml_tensor * t, int64_t i1, int64_t i2) {
    return reinterpret_cast<const float *>(static_cast<const char *>(t->data) + i1 * t->nb[1] + i2 * t->nb[2]);
}

// kt[d * n_pad + j] = k[d, g, j], zero for j >= n_keys (so score tiles never read garbage).
void transpose_keys(const ggml_tensor * k, int64_t g, int64_t n_keys, int64_t n_pad, float * kt) {
    const int64_t D = k->ne[0];
    for (int64_t j = 0; j < n_keys; ++j) {
        const float * row = row_ptr(k, g, j);
        for (int64_t d = 0; d < D; ++d) {
            kt[d * n_pad + j] = row[d];
        }
    }
    for (int64_t d = 0; d < D; ++d) {
        std::fill(kt + d * n_pad + n_keys, kt + (d + 1) * n_pad, 0.0f);
    }
}

// s[r][j] = sum_d q[r][d] * kt[d][j] for kQT queries (q tile rows of length D) and all n_pad keys.
__attribute__((target("avx512f"))) void scores(const float * q, const float * kt, int64_t D, int64_t n_pad, float * s) {
    for (int64_t j = 0; j < n_pad; j += 32) {
        __m512 acc0[kQT], acc1[kQT];
        for (int r = 0; r < kQT; ++r) {
            acc0[r] = _mm512_setzero_ps();
            acc1[r] = _mm512_setzero_ps();
        }
        for (int64_t d = 0; d < D; ++d) {
            const __m512 k0 = _mm512_loadu_ps(kt + d * n_pad + j);
            const __m512 k1 = _mm512_loadu_ps(kt + d * n_pad + j + 16);
#pragma GCC unroll 8
            for (int r = 0; r < kQT; ++r) {
                const __m512 qb = _mm512_set1_ps(q[r * D + d]);
                acc0[r] = _mm512_fmadd_ps(qb, k0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(qb, k1, acc1[r]);
            }
        }
        for (int r = 0; r < kQT; ++r) {
            _mm512_storeu_ps(s + r * n_pad + j, acc0[r]);
            _mm512_storeu_ps(s + r * n_pad + j + 16, acc1[r]);
        }
    }
}

// o[r][0..D) = sum_j p[r][j] * v[j][0..D) for kQT queries; v rows are key j's head-g vector.
__attribute__((target("avx512f"))) void weighted_values(const float * p, int64_t n_pad, const ggml_tensor * v,
                                                         int64_t g, int64_t n_keys, float * o) {
    const int64_t D = v->ne[0];
    for (int64_t d = 0; d < D; d += 32) {
        const int64_t n0 = std::min<int64_t>(16, D - d);
        const int64_t n1 = std::max<int64_t>(0, std::min<int64_t>(16, D - d - 16));
        const __mmask16 m0 = static_cast<__mmask16>((1u << n0) - 1);
        const __mmask16 m1 = static_cast<__mmask16>((1u << n1) - 1);
        __m512 acc0[kQT], acc1[kQT];
        for (int r = 0; r < kQT; ++r) {
            acc0[r] = _mm512_setzero_ps();
            acc1[r] = _mm512_setzero_ps();
        }
        for (int64_t j = 0; j < n_keys; ++j) {
            const float * vr = row_ptr(v, g, j) + d;
            const __m512 v0 = _mm512_maskz_loadu_ps(m0, vr);
            const __m512 v1 = _mm512_maskz_loadu_ps(m1, vr + 16);
#pragma GCC unroll 8
            for (int r = 0; r < kQT; ++r) {
                const __m512 pb = _mm512_set1_ps(p[r * n_pad + j]);
                acc0[r] = _mm512_fmadd_ps(pb, v0, acc0[r]);
                acc1[r] = _mm512_fmadd_ps(pb, v1, acc1[r]);
            }
        }
        for (int r = 0; r < kQT; ++r) {
            _mm512_mask_storeu_ps(o + r * D + d, m0, acc0[r]);
            _mm512_mask_storeu_ps(o + r * D + d + 16, m1, acc1[r]);
        }
    }
}

// In place: s[0..n_keys) += mask row, then exp(s - max); returns the sum (the softmax normaliser).
DG_VECTOR_CLONES float exp_shifted(float * s, const float * mask, int64_t n_keys) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n_keys; ++j) {
        s[j] += mask != nullptr ? mask[j] : 0.0f;
        mx = std::max(mx, s[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < n_keys; ++j) {
        s[j] = exp_nonpositive(s[j] - mx);
        sum += s[j];
    }
    return sum;
}

#endif  // DG_ATTN_AVX512

}  // namespace

bool attention_cpu_applies(const KernelConfig & kernels, const ggml_tensor * q, const ggml_tensor * k,
                           const ggml_tensor * v) {
#ifdef DG_ATTN_AVX512
    if (!kernels.attention_op) {
        return false;
    }
    const bool f32 = q->type == GGML_TYPE_F32 && k->type == GGML_TYPE_F32 && v->type == GGML_TYPE_F32;
    const bool rows = q->nb[0] == sizeof(float) && k->nb[0] == sizeof(float) && v->nb[0] == sizeof(float);
    const bool shapes = k->ne[0] == q->ne[0] && v->ne[0] == q->ne[0] && k->ne[1] == v->ne[1] && k->ne[2] == v->ne[2] &&
                        k->ne[1] > 0 && q->ne[1] % k->ne[1] == 0 && q->ne[3] == 1 && k->ne[3] == 1 && v->ne[3] == 1;
    return f32 && rows && shapes;
#else
    (void) kernels;
    (void) q;
    (void) k;
    (void) v;
    return false;
#endif
}

void attention_cpu_kernel(ggml_tensor * dst, int ith, int nth, void *) {
#ifdef DG_ATTN_AVX512
    const ggml_tensor * q = dst->src[0];
    const ggml_tensor * k = dst->src[1];
    const ggml_tensor * v = dst->src[2];
    const ggml_tensor * mask = dst->src[3];
    const int64_t D = q->ne[0], H = q->ne[1], T = q->ne[2];
    const int64_t n_keys = k->ne[2];
    const int64_t n_pad = (n_keys + 31) / 32 * 32;
    const int64_t group = H / k->ne[1];
    const int64_t tiles_per_head = (T + kTask - 1) / kTask;

    // Scratch grows to the largest layer once per thread and is reused (no per-step allocation).
    thread_local std::vector<float> kt, s, qt, o;
    kt.resize(static_cast<size_t>(D * n_pad));
    s.resize(static_cast<size_t>(kQT * n_pad));
    qt.resize(static_cast<size_t>(kQT * D));
    o.resize(static_cast<size_t>(kQT * D));

    int64_t transposed_head = -1;
    for (int64_t task = ith; task < H * tiles_per_head; task += nth) {
        const int64_t h = task / tiles_per_head;
        const int64_t g = h / group;
        if (g != transposed_head) {
            transpose_keys(k, g, n_keys, n_pad, kt.data());
            transposed_head = g;
        }
        const int64_t t_end = std::min(T, (task % tiles_per_head + 1) * kTask);
        for (int64_t t0 = (task % tiles_per_head) * kTask; t0 < t_end; t0 += kQT) {
            const int n_rows = static_cast<int>(std::min<int64_t>(kQT, t_end - t0));
            for (int r = 0; r < kQT; ++r) {  // padding rows repeat the last query; their results are dropped
                const float * src = row_ptr(q, h, t0 + std::min(r, n_rows - 1));
                std::copy(src, src + D, qt.data() + r * D);
            }
            scores(qt.data(), kt.data(), D, n_pad, s.data());
            float inv_sum[kQT];
            for (int r = 0; r < kQT; ++r) {
                const int64_t t = t0 + std::min(r, n_rows - 1);
                const float * mrow = mask != nullptr ? row_ptr(mask, t, 0) : nullptr;
                inv_sum[r] = 1.0f / exp_shifted(s.data() + r * n_pad, mrow, n_keys);
            }
            weighted_values(s.data(), n_pad, v, g, n_keys, o.data());
            for (int r = 0; r < n_rows; ++r) {
                float * out = reinterpret_cast<float *>(static_cast<char *>(dst->data) + h * dst->nb[1] + (t0 + r) * dst->nb[2]);
                for (int64_t d = 0; d < D; ++d) {
                    out[d] = o[static_cast<size_t>(r * D + d)] * inv_sum[r];
                }
            }
        }
    }
#else
    (void) dst;
    (void) ith;
    (void) nth;
#endif
}

}  // namespace dg
