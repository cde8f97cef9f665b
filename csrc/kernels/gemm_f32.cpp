// See gemm_f32.h.
#include "kernels/gemm_f32.h"

#include "kernels/dequant_avx512.h"
#include "kernels/gemm_bf16.h"
#include "kernels/simd_avx512.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DG_GEMM_AVX512 1
#endif

namespace dg {

namespace {

constexpr int kNR = 32;   // output features per panel: two 16-float registers
constexpr int kTR = 6;    // tokens per register tile: 12 accumulators + 2 weight registers + 1 broadcast
constexpr int kKC = 256;  // K block: a packed panel is 32 KiB, resident in L1 while all tokens stream past

#ifdef DG_GEMM_AVX512

// The common f32 case of pack_panel (32 full rows, kc a multiple of 16) as 16 x 16 in-register transposes:
// the scalar scatter below costs as much as the products when an expert sees only ~32 tokens.
__attribute__((target("avx512f"))) void pack_panel_f32_full(const ggml_tensor * w, int64_t n0, int64_t k0, int kc,
                                                            float * wp) {
    for (int j0 = 0; j0 < kNR; j0 += 16) {
        for (int k = 0; k < kc; k += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; ++i) {
                const char * row = static_cast<const char *>(w->data) + (n0 + j0 + i) * w->nb[1];
                r[i] = _mm512_castps_si512(_mm512_loadu_ps(reinterpret_cast<const float *>(row) + k0 + k));
            }
            transpose16(r);
            for (int i = 0; i < 16; ++i) {
                _mm512_storeu_ps(wp + (k + i) * kNR + j0, _mm512_castsi512_ps(r[i]));
            }
        }
    }
}

// Packs rows [n0, n0 + n_valid) x columns [k0, k0 + kc) of w transposed: wp[k * 32 + j] = w[n0 + j][k0 + k],
// zero for j >= n_valid. Quantized / half-precision weights are dequantized here (ggml's to_float), so
// every weight type runs the same f32 register tile and the activations are never quantized.
void pack_panel(const ggml_tensor * w, int64_t n0, int n_valid, int64_t k0, int kc, float * wp, bool avx512) {
    if (w->type == GGML_TYPE_F32 && n_valid == kNR && kc % 16 == 0 && avx512) {
        pack_panel_f32_full(w, n0, k0, kc, wp);
        return;
    }
    thread_local float dequant[kKC];
    const bool is_f32 = w->type == GGML_TYPE_F32;
    const ggml_to_float_t to_float = is_f32 ? nullptr : fast_to_float(w->type);
    const size_t k0_bytes = is_f32 ? k0 * sizeof(float) : k0 / ggml_blck_size(w->type) * ggml_type_size(w->type);
    for (int j = 0; j < kNR; ++j) {
        if (j < n_valid) {
            const char * src = static_cast<const char *>(w->data) + (n0 + j) * w->nb[1] + k0_bytes;
            const float * row = reinterpret_cast<const float *>(src);
            if (!is_f32) {
                to_float(src, dequant, kc);
                row = dequant;
            }
            for (int k = 0; k < kc; ++k) {
                wp[k * kNR + j] = row[k];
            }
        } else {
            for (int k = 0; k < kc; ++k) {
                wp[k * kNR + j] = 0.0f;
            }
        }
    }
}

// c[r][0..32) (+)= sum_k x[r][k] * wp[k][0..32) for R tokens (row pointers already at the K block);
// masks select the valid output features.
template <int R>
__attribute__((target("avx512f"))) void micro_tile(const float * wp, const float * const * xr, int kc, float * const * c,
                                                   __mmask16 m0, __mmask16 m1, bool accumulate) {
    __m512 acc0[R], acc1[R];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
        acc0[r] = _mm512_setzero_ps();
        acc1[r] = _mm512_setzero_ps();
    }
    for (int k = 0; k < kc; ++k) {
        const __m512 w0 = _mm512_load_ps(wp + k * kNR);
        const __m512 w1 = _mm512_load_ps(wp + k * kNR + 16);
#pragma GCC unroll 6
        for (int r = 0; r < R; ++r) {
            const __m512 xv = _mm512_set1_ps(xr[r][k]);
            acc0[r] = _mm512_fmadd_ps(xv, w0, acc0[r]);
            acc1[r] = _mm512_fmadd_ps(xv, w1, acc1[r]);
        }
    }
    store_tile<R>(acc0, acc1, c, m0, m1, accumulate);
}

using TileFn = void (*)(const float *, const float * const *, int, float * const *, __mmask16, __mmask16, bool);
constexpr TileFn kTiles[kTR + 1] = {nullptr, micro_tile<1>, micro_tile<2>, micro_tile<3>,
                                    micro_tile<4>, micro_tile<5>, micro_tile<6>};

// The AVX2 + FMA tier of micro_tile, on the same packed panel: 32 features are four 8-float registers, so R <= 3
// tokens (12 accumulators, 3 broadcasts, 1 weight register of the 16). Only the n_valid features are stored.
template <int R>
__attribute__((target("avx2,fma"))) void micro_tile_avx2(const float * wp, const float * const * xr, int kc,
                                                          float * const * c, int n_valid, bool accumulate) {
    __m256 acc[R][4];
    for (int r = 0; r < R; ++r) {
        for (int j = 0; j < 4; ++j) {
            acc[r][j] = _mm256_setzero_ps();
        }
    }
    for (int k = 0; k < kc; ++k) {
        __m256 xv[R];
        for (int r = 0; r < R; ++r) {
            xv[r] = _mm256_broadcast_ss(xr[r] + k);
        }
        for (int j = 0; j < 4; ++j) {
            const __m256 wv = _mm256_load_ps(wp + k * kNR + 8 * j);
            for (int r = 0; r < R; ++r) {
                acc[r][j] = _mm256_fmadd_ps(xv[r], wv, acc[r][j]);
            }
        }
    }
    for (int r = 0; r < R; ++r) {
        alignas(32) float out[kNR];
        for (int j = 0; j < 4; ++j) {
            _mm256_store_ps(out + 8 * j, acc[r][j]);
        }
        for (int j = 0; j < n_valid; ++j) {
            c[r][j] = accumulate ? c[r][j] + out[j] : out[j];
        }
    }
}

using TileAvx2Fn = void (*)(const float *, const float * const *, int, float * const *, int, bool);
constexpr int kTR2 = 3;
constexpr TileAvx2Fn kTilesAvx2[kTR2 + 1] = {nullptr, micro_tile_avx2<1>, micro_tile_avx2<2>, micro_tile_avx2<3>};

// One weight panel (rows [n0, n0 + 32) of w) times the rows x_rows[i], results into c_rows[i] + n0, i < n;
// `avx512` picks the register tile (else the AVX2 one).
void panel_product(const ggml_tensor * w, int64_t n0, const float * const * x_rows, float * const * c_rows, int64_t n,
                   float * wp, bool avx512) {
    const int64_t K = w->ne[0];
    const int n_valid = static_cast<int>(std::min<int64_t>(kNR, w->ne[1] - n0));
    const __mmask16 m0 = static_cast<__mmask16>(n_valid >= 16 ? 0xFFFF : (1u << n_valid) - 1);
    const __mmask16 m1 = static_cast<__mmask16>(n_valid >= 32 ? 0xFFFF : n_valid <= 16 ? 0 : (1u << (n_valid - 16)) - 1);
    const float * xr[kTR];
    float * cr[kTR];
    for (int64_t k0 = 0; k0 < K; k0 += kKC) {
        const int kc = static_cast<int>(std::min<int64_t>(kKC, K - k0));
        pack_panel(w, n0, n_valid, k0, kc, wp, avx512);
        if (!avx512) {
            for (int64_t t0 = 0; t0 < n; t0 += kTR2) {
                const int rows = static_cast<int>(std::min<int64_t>(kTR2, n - t0));
                for (int r = 0; r < rows; ++r) {
                    xr[r] = x_rows[t0 + r] + k0;
                    cr[r] = c_rows[t0 + r] + n0;
                }
                kTilesAvx2[rows](wp, xr, kc, cr, n_valid, k0 > 0);
            }
            continue;
        }
        for (int64_t t0 = 0; t0 < n; t0 += kTR) {
            const int rows = static_cast<int>(std::min<int64_t>(kTR, n - t0));
            for (int r = 0; r < rows; ++r) {
                xr[r] = x_rows[t0 + r] + k0;
                cr[r] = c_rows[t0 + r] + n0;
            }
            kTiles[rows](wp, xr, kc, cr, m0, m1, k0 > 0);
        }
    }
}

// A 64-byte aligned panel buffer per thread.
float * panel_buffer() {
    thread_local std::vector<float> storage(kNR * kKC + 16);
    return reinterpret_cast<float *>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t(63));
}

// Weight types the packer reads: f32, or any type ggml dequantizes whose blocks tile the K blocks.
bool packable(const ggml_tensor * w) {
    if (w->type == GGML_TYPE_F32) {
        return w->nb[0] == sizeof(float);
    }
    const ggml_type_traits * tt = ggml_get_type_traits(w->type);
    const int64_t blck = ggml_blck_size(w->type);
    return tt != nullptr && tt->to_float != nullptr && blck > 0 && kKC % blck == 0 && w->ne[0] % blck == 0 &&
           w->nb[1] == ggml_row_size(w->type, w->ne[0]);
}

// Whether our GEMM takes this weight type on this CPU: any packable type with AVX-512; with AVX2 the f32 / f16 /
// bf16 weights, whose ggml products are plain dot products, and NVFP4 (other quantized types keep ggml's fast
// int8 kernels, which round the activations to 8 bits). NVFP4 files come bit for bit from NVFP4 checkpoints,
// which are meant to be multiplied with unrounded activations: ggml's NVFP4 product (AVX2 too) rounds them to
// q8_0, while dequantizing its 64-wide blocks into our f32 panels keeps them exact
// (tests/test_quantized_engine.py measures both).
bool isa_takes(CpuIsa isa, const ggml_tensor * w) {
    switch (isa) {
        case CpuIsa::kAvx512:
            return true;
        case CpuIsa::kAvx2:
            return w->type == GGML_TYPE_F32 || w->type == GGML_TYPE_F16 || w->type == GGML_TYPE_BF16 ||
                   w->type == GGML_TYPE_NVFP4;
        default:
            return false;
    }
}

#endif  // DG_GEMM_AVX512

bool wants_bf16(const ggml_tensor * w, const GemmOp & op) {
    return op.activations != GemmActivations::kF32 &&
           gemm_bf16_wanted(op.kernels, w, op.activations == GemmActivations::kBf16);
}

}  // namespace

bool gemm_f32_applies(const KernelConfig & kernels, const ggml_tensor * w, const ggml_tensor * x) {
#ifdef DG_GEMM_AVX512
    return isa_takes(kernels.isa, w) && packable(w) && x->type == GGML_TYPE_F32 && w->ne[0] == x->ne[0] &&
           x->nb[0] == sizeof(float) && w->ne[2] == 1 && w->ne[3] == 1 &&
           x->ne[2] == 1 && x->ne[3] == 1 && x->ne[1] >= kTR;
#else
    (void) kernels;
    (void) w;
    (void) x;
    return false;
#endif
}

void gemm_f32_kernel(ggml_tensor * dst, int ith, int nth, void * userdata) {
#ifdef DG_GEMM_AVX512
    const GemmOp & op = *static_cast<const GemmOp *>(userdata);
    const ggml_tensor * w = dst->src[0];
    const ggml_tensor * x = dst->src[1];
    const int64_t N = w->ne[1];
    const int64_t T = x->ne[1];
    std::vector<const float *> x_rows(static_cast<size_t>(T));
    std::vector<float *> c_rows(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) {
        x_rows[t] = reinterpret_cast<const float *>(static_cast<const char *>(x->data) + t * x->nb[1]);
        c_rows[t] = reinterpret_cast<float *>(static_cast<char *>(dst->data) + t * dst->nb[1]);
    }
    const int64_t n_panels = (N + kNR - 1) / kNR;
    if (wants_bf16(w, op)) {
        gemm_bf16_panels(w, n_panels * ith / nth, 1, n_panels * (ith + 1) / nth, x_rows.data(), c_rows.data(), T);
        return;
    }
    float * wp = panel_buffer();
    const bool avx512 = op.kernels.isa == CpuIsa::kAvx512;
    for (int64_t p = n_panels * ith / nth; p < n_panels * (ith + 1) / nth; ++p) {
        panel_product(w, p * kNR, x_rows.data(), c_rows.data(), T, wp, avx512);
    }
#else
    (void) dst;
    (void) ith;
    (void) nth;
    (void) userdata;
#endif
}

bool gemm_f32_id_applies(const KernelConfig & kernels, const ggml_tensor * as, const ggml_tensor * b,
                         const ggml_tensor * ids) {
#ifdef DG_GEMM_AVX512
    return isa_takes(kernels.isa, as) && packable(as) && b->type == GGML_TYPE_F32 && ids->type == GGML_TYPE_I32 &&
           as->ne[0] == b->ne[0] && b->nb[0] == sizeof(float) && as->ne[3] == 1 &&
           b->ne[3] == 1 && ids->ne[1] == b->ne[2] && (b->ne[1] == 1 || b->ne[1] == ids->ne[0]);
#else
    (void) kernels;
    (void) as;
    (void) b;
    (void) ids;
    return false;
#endif
}

void gemm_f32_id_kernel(ggml_tensor * dst, int ith, int nth, void * userdata) {
#ifdef DG_GEMM_AVX512
    const GemmOp & op = *static_cast<const GemmOp *>(userdata);
    const ggml_tensor * as = dst->src[0];
    const ggml_tensor * b = dst->src[1];
    const ggml_tensor * ids = dst->src[2];
    const int64_t n_expert = as->ne[2];
    const int64_t n_used = ids->ne[0];
    const int64_t T = ids->ne[1];
    const int64_t n_panels = (as->ne[1] + kNR - 1) / kNR;
    // Work items (expert, panel) in a fixed order; thread ith takes every nth one.
    std::vector<const float *> x_rows;
    std::vector<float *> c_rows;
    float * wp = panel_buffer();
    const bool bf16 = wants_bf16(as, op);
    const int64_t row_tiles_max = bf16 && op.kernels.row_gemm ? gemm_bf16_rows_max_tokens() : 0;
    const bool avx512 = op.kernels.isa == CpuIsa::kAvx512;
    int64_t item = 0;
    for (int64_t e = 0; e < n_expert; ++e) {
        x_rows.clear();
        c_rows.clear();
        for (int64_t t = 0; t < T; ++t) {
            const int32_t * row_ids = reinterpret_cast<const int32_t *>(static_cast<const char *>(ids->data) + t * ids->nb[1]);
            for (int64_t j = 0; j < n_used; ++j) {
                if (row_ids[j] == e) {
                    const int64_t jb = b->ne[1] == 1 ? 0 : j;
                    x_rows.push_back(reinterpret_cast<const float *>(static_cast<const char *>(b->data) + jb * b->nb[1] + t * b->nb[2]));
                    c_rows.push_back(reinterpret_cast<float *>(static_cast<char *>(dst->data) + j * dst->nb[1] + t * dst->nb[2]));
                }
            }
        }
        if (x_rows.empty()) {
            continue;
        }
        // The expert's [K, N] matrix as a 2-D view for the panel packer.
        ggml_tensor w = *as;
        w.data = static_cast<char *>(as->data) + e * as->nb[2];
        w.ne[2] = 1;
        const int64_t n_rows = static_cast<int64_t>(x_rows.size());
        if (bf16) {
            // This thread's panels of the expert: items item .. item + n_panels - 1, every nth one.
            const int64_t p_first = ((ith - item) % nth + nth) % nth;
            if (n_rows <= row_tiles_max) {  // an expert's few tokens: no transposed panel
                gemm_bf16_rows(&w, p_first, nth, n_panels, x_rows.data(), c_rows.data(), n_rows);
            } else {
                gemm_bf16_panels(&w, p_first, nth, n_panels, x_rows.data(), c_rows.data(), n_rows);
            }
            item += n_panels;
            continue;
        }
        for (int64_t p = 0; p < n_panels; ++p, ++item) {
            if (item % nth == ith) {
                panel_product(&w, p * kNR, x_rows.data(), c_rows.data(), n_rows, wp, avx512);
            }
        }
    }
#else
    (void) dst;
    (void) ith;
    (void) nth;
    (void) userdata;
#endif
}

}  // namespace dg
