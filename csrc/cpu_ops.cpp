// See cpu_ops.h. Compiled with -ffp-contract=off: a fused multiply-add would round differently from the
// separate ggml ops these kernels replace.
#include "cpu_ops.h"

#include <cmath>
#include <cstdint>

namespace dg {

void geglu_tanh_kernel(ggml_tensor * dst, const ggml_tensor * a, const ggml_tensor * b, int ith, int nth, void *) {
    const float c = 0.7978845608028654f;  // sqrt(2/pi)
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
        for (int64_t i = 0; i < n0; ++i) {
            const float v = x[i];
            const float v3 = (v * v) * v;
            const float inner = v + v3 * 0.044715f;
            const float t = std::tanh(inner * c);
            out[i] = ((v * 0.5f) * (t * 1.0f + 1.0f)) * y[i];
        }
    }
}

}  // namespace dg
