// Fused denoising-sampler reductions on the device (internal; only built with -DDIFFGEMMA_CUDA=ON).
//
// Per denoising step the decoder produces logits [n_rows = canvas 256, n_vocab = 262144] fp32 on the device
// (256 MiB). Copying them to the host every step would cost more than the step itself, so the per-position
// statistics the sampler needs are reduced here and only 4 numbers per position come back:
//
//   x_i      = logits[r][i] * inv_temp                 (float32 multiply, the same on host and device)
//   argmax   = smallest i with x_i == max(x)            (torch.argmax tie rule)
//   log_z    = max(x) + log(sum_i exp(x_i - max(x)))
//   entropy  = log_z - sum_i p_i x_i                   (entropy of softmax(x), in nats)
//   sampled  = smallest i with sum_{j<=i} p_j > u[r]    (inverse CDF from a host-drawn uniform u in [0,1);
//              if rounding leaves no such i, the last i with p_i > 0)
//
// These are exactly the semantics of the CPU reference dg::row_stats (csrc/kernels/sampler_math.h); both sides
// accumulate in a different order, so the sampled ids agree except when u*Z lies within float rounding of
// a CDF boundary. A 262k vocabulary has 262k boundaries: on flat rows about 0.4% of draws are such ties
// (measured with the emulated kernel, tests/test_sampler_math.py), and the two ids are then neighbours across
// that boundary. Like the host, the CDF walk counts terms more than 87 below the max (p < 1.6e-38) as 0, so
// both sample from the same ids; the statistics pass may keep some as denormals: entropies move by < 1e-30 nats.
//
// A row that contains NaN or +inf, or only -inf, has no distribution: argmax = sampled = -1 and
// entropy = log_z = NaN; the caller turns that into an error naming the position.
//
// Self-conditioning: the next step needs softmax(x) @ E (E = token embedding, [n_vocab, n_embd]).
// dg_cuda_sampler_write_probs() writes softmax(x) as f16 or bf16 [n_rows, n_vocab] on the device; the
// product itself runs as a ggml_mul_mat on the CUDA backend against a device copy of E stored transposed
// ([n_vocab contiguous] per embedding column, i.e. ggml ne = [n_vocab, n_embd]) in the same 16-bit type, so
// the contraction runs over the contiguous dimension of both operands. Nothing of size vocab x canvas
// crosses the PCIe bus.
//
// Every launcher validates its arguments, enqueues on `stream` and returns the launch status
// (cudaSuccess or an error such as cudaErrorInvalidValue); it never aborts. Kernel execution errors
// surface at the next synchronising call on the stream. The caller maps cudaError_t to DIFFGEMMA_ERR_*.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element type of the probabilities written for the self-conditioning product.
typedef enum {
    DG_CUDA_PROBS_F16  = 0,  // IEEE half: probabilities below ~6e-8 flush to 0 (tail mass is lost)
    DG_CUDA_PROBS_BF16 = 1,  // bfloat16: full float range, 8-bit mantissa
    // bfloat16 with the HF reference's numerics (model-spec 4.5): x is rounded to bf16 BEFORE the softmax,
    // so the row is normalised by the log Z of the rounded x, computed here (log_z is ignored, may be NULL).
    DG_CUDA_PROBS_BF16_OF_BF16_LOGITS = 2,
} dg_cuda_probs_type;

// Per-row sampler statistics, one block per row, one pass over the row for the statistics plus a
// partial second pass (it stops at the sampled id) for the inverse-CDF walk.
//   logits     device, n_rows rows of n_vocab floats, row r starts at logits + r*row_stride
//   uniforms   device, n_rows floats in [0,1) (host-drawn so CPU and GPU runs with one seed agree)
//   argmax     device, n_rows int32 (required)
//   sampled    device, n_rows int32 (may be NULL: the CDF walk is then skipped)
//   entropy    device, n_rows float (required)
//   log_z      device, n_rows float (may be NULL; dg_cuda_sampler_write_probs needs it)
// Requires 0 < n_vocab <= 2^30, n_rows >= 0, row_stride >= n_vocab, inv_temp finite and > 0. The uniforms
// must lie in [0,1) (the host reference rejects others; here u >= 1 gives the last id with p > 0).
cudaError_t dg_cuda_sampler_row_stats(const float * logits, int64_t n_rows, int64_t n_vocab, int64_t row_stride,
                                      float inv_temp, const float * uniforms,
                                      int32_t * argmax, int32_t * sampled, float * entropy, float * log_z,
                                      cudaStream_t stream);

// probs[r][i] = exp(logits[r][i]*inv_temp - log_z[r]) as f16/bf16, row r at probs + r*probs_row_stride
// elements. log_z comes from dg_cuda_sampler_row_stats with the same inv_temp (a NaN log_z, i.e. an
// invalid row, writes zeros). DG_CUDA_PROBS_BF16_OF_BF16_LOGITS: see the enum; an invalid row writes zeros. Requires probs_row_stride >= n_vocab and n_rows <= 65535 (grid y).
cudaError_t dg_cuda_sampler_write_probs(const float * logits, int64_t n_rows, int64_t n_vocab, int64_t row_stride,
                                        float inv_temp, const float * log_z,
                                        void * probs, dg_cuda_probs_type probs_type, int64_t probs_row_stride,
                                        cudaStream_t stream);

#ifdef __cplusplus
}
#endif
