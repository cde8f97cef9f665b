// See cpu_ops.h. Compiled with -ffp-contract=off: a fused multiply-add would round differently from the
// separate ggml ops these kernels replace.
#include "kernels/cpu_ops.h"
#include "core/vec_math.h"

#include <cmath>
#include <cstdint>
#include <cstring>

namespace dg {

namespace {

// tanh(x) = sign(x) (1 - e) / (1 + e) with e = exp(-2|x|): branch-free, so loops over it vectorise (libm's
// tanhf is a scalar call of ~25 ns, which made tanh the largest element-wise cost of a step). The absolute
// error is a few 1e-8 (the exp is within 2 ulp; 1 - e loses relative, not absolute, precision for tiny x),
// far below what the logits or the gelu outputs resolve.
inline float tanh_fast(float x) {
    const float a = std::fabs(x);
    const float e = exp_nonpositive(-2.0f * a);
    const float t = (1.0f - e) / (1.0f + e);
    return x < 0.0f ? -t : t;
}

DG_VECTOR_CLONES
void geglu_row(const float * __restrict__ x, const float * __restrict__ y, float * __restrict__ out, int64_t n) {
    const float c = 0.7978845608028654f;  // sqrt(2/pi)
    for (int64_t i = 0; i < n; ++i) {
        const float v = x[i];
        const float v3 = (v * v) * v;
        const float inner = v + v3 * 0.044715f;
        const float t = tanh_fast(inner * c);
        out[i] = ((v * 0.5f) * (t * 1.0f + 1.0f)) * y[i];
    }
}

DG_VECTOR_CLONES
void softcap_row(const float * __restrict__ x, float * __restrict__ out, int64_t n, float inv_cap, float cap) {
    for (int64_t i = 0; i < n; ++i) {
        out[i] = tanh_fast(x[i] * inv_cap) * cap;
    }
}

}  // namespace

void geglu_tanh_kernel(ggml_tensor * dst, const ggml_tensor * a, const ggml_tensor * b, int ith, int nth, void *) {
    const int64_t n0 = a->ne[0];
    const int64_t n_rows = a->ne[1] * a->ne[2] * a->ne[3];
    const int64_t per = (n_rows + nth - 1) / nth;
    const int64_t end = n_rows < (ith + 1) * per ? n_rows : (ith + 1) * per;
    for (int64_t r = ith * per; r < end; ++r) {
        const int64_t i1 = r % a->ne[1];
        const int64_t i2 = (r / a->ne[1]) % a->ne[2];
        const int64_t i3 = r / (a->ne[1] * a->ne[2]);
        const auto * x = reinterpret_cast<const float *>(static_cast<const char *>(a->data) + i1 * a->nb[1] + i2 * a->nb[2] + i3 * a->nb[3]);
        const auto * y = reinterpret_cast<const float *>(static_cast<const char *>(b->data) + i1 * b->nb[1] + i2 * b->nb[2] + i3 * b->nb[3]);
        auto * out = reinterpret_cast<float *>(static_cast<char *>(dst->data) + i1 * dst->nb[1] + i2 * dst->nb[2] + i3 * dst->nb[3]);
        geglu_row(x, y, out, n0);
    }
}

void softcap_kernel(ggml_tensor * dst, const ggml_tensor * a, int ith, int nth, void * userdata) {
    const float cap = *static_cast<const float *>(userdata);
    const int64_t n0 = a->ne[0];
    const int64_t n_rows = ggml_nrows(a);
    const int64_t per = (n_rows + nth - 1) / nth;
    const int64_t end = n_rows < (ith + 1) * per ? n_rows : (ith + 1) * per;
    for (int64_t r = ith * per; r < end; ++r) {  // a and dst are contiguous
        softcap_row(static_cast<const float *>(a->data) + r * n0, static_cast<float *>(dst->data) + r * n0, n0, 1.0f / cap, cap);
    }
}

}  // namespace dg
