// Fused denoising-sampler kernels: per-row argmax / log-sum-exp / entropy / inverse-CDF sample, and the
// softmax probabilities for the self-conditioning product. Semantics in sampler_cuda.h, the partial-reduction
// arithmetic in sampler_partial.h; the CPU twin is csrc/kernels/sampler_math.cpp and the two must stay in step.
//
// Layout of the statistics kernel: one block per row; each thread folds a strided slice of the row (float4
// loads when the row is 16-byte aligned and V % 4 == 0) into a Partial, then a warp butterfly and a
// cross-warp pass combine the partials. x is rounded to float before use (__fmul_rn, never contracted into
// an FMA), so both passes see the same x and the max element has x - m == 0 exactly.
#include "offload/cuda/sampler_cuda.h"
#include "offload/cuda/sampler_partial.h"

#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>

namespace {

using dg_cuda::Partial;
using dg_cuda::add_element;
using dg_cuda::combine;
using dg_cuda::empty_partial;

using dg_cuda::kStatsThreads;
using dg_cuda::kWalkPerThread;
using dg_cuda::walk_term;
static_assert(kWalkPerThread == 4, "the walk's fast path loads one float4 per thread and tile");
constexpr int kProbsThreads = 256;
constexpr int kProbsPerThread = 4;

__device__ __forceinline__ Partial shfl_xor(const Partial & p, int lane_mask) {
    Partial r;
    r.m = __shfl_xor_sync(0xffffffffu, p.m, lane_mask);
    r.s_rest = __shfl_xor_sync(0xffffffffu, p.s_rest, lane_mask);
    r.t = __shfl_xor_sync(0xffffffffu, p.t, lane_mask);
    r.idx = __shfl_xor_sync(0xffffffffu, p.idx, lane_mask);
    return r;
}

__device__ __forceinline__ Partial warp_reduce(Partial p) {
    for (int mask = 16; mask > 0; mask >>= 1) p = combine(p, shfl_xor(p, mask));
    return p;
}

// Whole-block reduction; every thread gets the result.
__device__ Partial block_reduce(Partial p) {
    __shared__ Partial warp_parts[kStatsThreads / 32];
    __shared__ Partial result;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    p = warp_reduce(p);
    if (lane == 0) warp_parts[warp] = p;
    __syncthreads();
    if (warp == 0) {
        Partial q = lane < kStatsThreads / 32 ? warp_parts[lane] : empty_partial();
        q = warp_reduce(q);
        if (lane == 0) result = q;
    }
    __syncthreads();
    return result;
}

__device__ __forceinline__ bool row_is_vectorisable(const float * row, int n_vocab) {
    return (n_vocab % 4) == 0 && (reinterpret_cast<uintptr_t>(row) % 16) == 0;
}

__global__ void __launch_bounds__(kStatsThreads)
row_stats_kernel(const float * __restrict__ logits, int n_vocab, int64_t row_stride, float inv_temp,
                 const float * __restrict__ uniforms, int32_t * __restrict__ argmax_out,
                 int32_t * __restrict__ sampled_out, float * __restrict__ entropy_out, float * __restrict__ log_z_out) {
    const int64_t r = blockIdx.x;
    const float * row = logits + r * row_stride;
    const bool vec = row_is_vectorisable(row, n_vocab);

    // ---- pass 1: online max / sum-exp / sum p*x / first argmax --------------------------------------------
    Partial p = empty_partial();
    bool bad = false;
    if (vec) {
        const float4 * row4 = reinterpret_cast<const float4 *>(row);
        for (int j = threadIdx.x; j < n_vocab / 4; j += kStatsThreads) {
            const float4 v = __ldg(row4 + j);
            add_element(p, __fmul_rn(v.x, inv_temp), 4 * j + 0, bad);
            add_element(p, __fmul_rn(v.y, inv_temp), 4 * j + 1, bad);
            add_element(p, __fmul_rn(v.z, inv_temp), 4 * j + 2, bad);
            add_element(p, __fmul_rn(v.w, inv_temp), 4 * j + 3, bad);
        }
    } else {
        for (int i = threadIdx.x; i < n_vocab; i += kStatsThreads) add_element(p, __fmul_rn(__ldg(row + i), inv_temp), i, bad);
    }
    const bool row_bad = __syncthreads_or(bad ? 1 : 0) != 0;
    const Partial total = block_reduce(p);

    if (row_bad || total.m == -INFINITY) {
        if (threadIdx.x == 0) {
            argmax_out[r] = -1;
            if (sampled_out) sampled_out[r] = -1;
            entropy_out[r] = NAN;
            if (log_z_out) log_z_out[r] = NAN;
        }
        return;
    }
    const float z_rel = 1.0f + total.s_rest;  // Z / exp(m)
    if (threadIdx.x == 0) {
        argmax_out[r] = total.idx;
        entropy_out[r] = dg_cuda::partial_entropy(total);
        if (log_z_out) log_z_out[r] = dg_cuda::partial_log_z(total);
    }
    if (!sampled_out) return;

    // ---- pass 2: inverse CDF, tile by tile, stopping at the tile that holds the sample ------------------------
    using BlockScan = cub::BlockScan<float, kStatsThreads>;
    __shared__ typename BlockScan::TempStorage scan_storage;
    __shared__ int found;
    __shared__ int last_positive;
    if (threadIdx.x == 0) { found = INT_MAX; last_positive = -1; }
    __syncthreads();

    const float m = total.m;
    const float target = uniforms[r] * z_rel;
    constexpr int kTile = kStatsThreads * kWalkPerThread;
    float running = 0.0f;  // identical in every thread: the same float additions in the same order
    int my_last_positive = -1;
    for (int tile = 0; tile < n_vocab; tile += kTile) {
        const int first = tile + threadIdx.x * kWalkPerThread;
        float e[kWalkPerThread];
        float local = 0.0f;
        if (vec && first + kWalkPerThread <= n_vocab) {
            const float4 v = __ldg(reinterpret_cast<const float4 *>(row + first));
            const float xs[4] = {v.x, v.y, v.z, v.w};
            for (int k = 0; k < kWalkPerThread; ++k) e[k] = walk_term(__fmul_rn(xs[k], inv_temp) - m);
        } else {
            for (int k = 0; k < kWalkPerThread; ++k)
                e[k] = first + k < n_vocab ? walk_term(__fmul_rn(__ldg(row + first + k), inv_temp) - m) : 0.0f;
        }
        for (int k = 0; k < kWalkPerThread; ++k) {
            local += e[k];
            if (e[k] > 0.0f) my_last_positive = first + k;
        }
        float prefix, tile_sum;
        BlockScan(scan_storage).ExclusiveSum(local, prefix, tile_sum);
        if (running + tile_sum > target) {
            float cum = running + prefix;
            for (int k = 0; k < kWalkPerThread; ++k) {
                cum += e[k];
                if (e[k] > 0.0f && cum > target) { atomicMin(&found, first + k); break; }
            }
        }
        __syncthreads();  // publishes `found` and frees scan_storage for the next tile
        if (found != INT_MAX) break;
        running += tile_sum;
    }
    if (found == INT_MAX) {  // rounding left the total at or below u*Z: clamp to the last positive p
        if (my_last_positive >= 0) atomicMax(&last_positive, my_last_positive);
        __syncthreads();
    }
    if (threadIdx.x == 0) sampled_out[r] = found != INT_MAX ? found : last_positive;
}

template <typename T> __device__ __forceinline__ T to_probs_type(float v);
template <> __device__ __forceinline__ __half to_probs_type<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 to_probs_type<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T>
__global__ void __launch_bounds__(kProbsThreads)
write_probs_kernel(const float * __restrict__ logits, int n_vocab, int64_t row_stride, float inv_temp,
                   const float * __restrict__ log_z, T * __restrict__ probs, int64_t probs_row_stride) {
    const int64_t r = blockIdx.y;
    const float * row = logits + r * row_stride;
    T * out = probs + r * probs_row_stride;
    const float lz = log_z[r];
    const bool valid = isfinite(lz);
    const int base = blockIdx.x * (kProbsThreads * kProbsPerThread) + threadIdx.x;
    for (int k = 0; k < kProbsPerThread; ++k) {
        const int i = base + k * kProbsThreads;  // consecutive threads touch consecutive elements
        if (i >= n_vocab) break;
        const float v = valid ? expf(__fmul_rn(__ldg(row + i), inv_temp) - lz) : 0.0f;
        out[i] = to_probs_type<T>(v);
    }
}

// The HF reference's self-conditioning numerics: the processed logits are cast to bf16 BEFORE the softmax
// and the probabilities to bf16 after it. Its log Z is that of the rounded logits, so this kernel normalises
// each row itself (one block per row: a reduction pass, then a writing pass).
__global__ void __launch_bounds__(kStatsThreads)
write_probs_of_bf16_logits_kernel(const float * __restrict__ logits, int n_vocab, int64_t row_stride, float inv_temp,
                                  __nv_bfloat16 * __restrict__ probs, int64_t probs_row_stride) {
    const int64_t r = blockIdx.x;
    const float * row = logits + r * row_stride;
    __nv_bfloat16 * out = probs + r * probs_row_stride;
    Partial p = empty_partial();
    bool bad = false;
    for (int i = threadIdx.x; i < n_vocab; i += kStatsThreads)
        add_element(p, __bfloat162float(__float2bfloat16_rn(__fmul_rn(__ldg(row + i), inv_temp))), i, bad);
    const bool row_bad = __syncthreads_or(bad ? 1 : 0) != 0;
    const Partial total = block_reduce(p);
    const bool valid = !row_bad && total.m != -INFINITY;
    const float lz = valid ? dg_cuda::partial_log_z(total) : 0.0f;
    for (int i = threadIdx.x; i < n_vocab; i += kStatsThreads) {
        const float x = __bfloat162float(__float2bfloat16_rn(__fmul_rn(__ldg(row + i), inv_temp)));
        out[i] = __float2bfloat16_rn(valid ? expf(x - lz) : 0.0f);
    }
}

bool inv_temp_ok(float inv_temp) { return std::isfinite(inv_temp) && inv_temp > 0.0f; }

// Index arithmetic in the kernels is int; 2^30 leaves room for a tile past the end of the row.
constexpr int64_t kMaxVocab = int64_t(1) << 30;

}  // namespace

extern "C" cudaError_t dg_cuda_sampler_row_stats(const float * logits, int64_t n_rows, int64_t n_vocab, int64_t row_stride,
                                                 float inv_temp, const float * uniforms,
                                                 int32_t * argmax, int32_t * sampled, float * entropy, float * log_z,
                                                 cudaStream_t stream) {
    if (n_rows < 0 || n_vocab <= 0 || n_vocab > kMaxVocab || row_stride < n_vocab || !inv_temp_ok(inv_temp))
        return cudaErrorInvalidValue;
    if (n_rows > INT_MAX) return cudaErrorInvalidValue;  // gridDim.x limit is 2^31-1
    if (n_rows == 0) return cudaSuccess;
    if (!logits || !argmax || !entropy || (sampled && !uniforms)) return cudaErrorInvalidValue;
    row_stats_kernel<<<static_cast<unsigned>(n_rows), kStatsThreads, 0, stream>>>(
        logits, static_cast<int>(n_vocab), row_stride, inv_temp, uniforms, argmax, sampled, entropy, log_z);
    return cudaGetLastError();
}

extern "C" cudaError_t dg_cuda_sampler_write_probs(const float * logits, int64_t n_rows, int64_t n_vocab, int64_t row_stride,
                                                   float inv_temp, const float * log_z,
                                                   void * probs, dg_cuda_probs_type probs_type, int64_t probs_row_stride,
                                                   cudaStream_t stream) {
    if (n_rows < 0 || n_rows > 65535 || n_vocab <= 0 || n_vocab > kMaxVocab || row_stride < n_vocab ||
        probs_row_stride < n_vocab || !inv_temp_ok(inv_temp))
        return cudaErrorInvalidValue;
    if (n_rows == 0) return cudaSuccess;
    if (!logits || !probs) return cudaErrorInvalidValue;
    if (probs_type == DG_CUDA_PROBS_BF16_OF_BF16_LOGITS) {
        write_probs_of_bf16_logits_kernel<<<static_cast<unsigned>(n_rows), kStatsThreads, 0, stream>>>(
            logits, static_cast<int>(n_vocab), row_stride, inv_temp, static_cast<__nv_bfloat16 *>(probs), probs_row_stride);
        return cudaGetLastError();
    }
    if (!log_z) return cudaErrorInvalidValue;
    constexpr int64_t kPerBlock = kProbsThreads * kProbsPerThread;
    const dim3 grid(static_cast<unsigned>((n_vocab + kPerBlock - 1) / kPerBlock), static_cast<unsigned>(n_rows));
    switch (probs_type) {
        case DG_CUDA_PROBS_F16:
            write_probs_kernel<__half><<<grid, kProbsThreads, 0, stream>>>(
                logits, static_cast<int>(n_vocab), row_stride, inv_temp, log_z, static_cast<__half *>(probs), probs_row_stride);
            break;
        case DG_CUDA_PROBS_BF16:
            write_probs_kernel<__nv_bfloat16><<<grid, kProbsThreads, 0, stream>>>(
                logits, static_cast<int>(n_vocab), row_stride, inv_temp, log_z, static_cast<__nv_bfloat16 *>(probs),
                probs_row_stride);
            break;
        default:
            return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}
