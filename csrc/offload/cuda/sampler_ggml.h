// The fused CUDA sampler applied to ggml tensors that live on a CUDA backend buffer (only compiled with
// -DDIFFGEMMA_CUDA=ON, which defines DIFFGEMMA_WITH_CUDA). Plain C++: the engine includes this header
// without CUDA's, and gets the per-position statistics of the decoder's logits without copying them to the
// host (only 16 bytes per canvas position come back).
//
//   dg::CudaSampler sampler;                        // one per context: it owns small device buffers
//   // after ggml_backend_sched_graph_compute() has returned (the logits are complete):
//   sampler.row_stats(logits, 1.0f / T, uniforms, stats);      // argmax, sampled, log_z, entropy per row
//   sampler.write_probs(logits, 1.0f / T, sc_probs);           // softmax as f16/bf16, for the next step's
//                                                              // self-conditioning mul_mat with E^T on the device
//
// Both return DIFFGEMMA_OK or a status whose reason is recorded (dg::fail): DIFFGEMMA_ERR_INVALID_ARGUMENT for
// a tensor of the wrong type/shape/placement, DIFFGEMMA_ERR_BACKEND for a CUDA failure. A position whose logits
// have no distribution (NaN / +inf / all -inf) is no failure here: its RowStats get argmax = sampled = -1 and
// NaN entropy (as from the host twin), its probabilities are written as zeros, and the caller reports it.
// The kernels run on the legacy default stream and are synchronised before returning, so the next ggml
// graph (which runs on ggml's own non-blocking streams) sees their results. Not thread-safe: one per context.
#pragma once

#include "kernels/sampler_math.h"

#include <cstddef>
#include <cstdint>

struct ggml_tensor;

namespace dg {

class CudaSampler {
public:
    CudaSampler() = default;
    ~CudaSampler();
    CudaSampler(const CudaSampler &) = delete;
    CudaSampler & operator=(const CudaSampler &) = delete;

    // logits: GGML_TYPE_F32, ne = [n_vocab, n_rows] (one row per canvas position, ggml order), elements of a
    // row contiguous, on a CUDA buffer. uniforms: n_rows host floats in [0,1). out: n_rows RowStats.
    int32_t row_stats(const ggml_tensor * logits, float inv_temp, const float * uniforms, RowStats * out);

    // probs: GGML_TYPE_F16 or GGML_TYPE_BF16, ne = [n_vocab, n_rows], on the same device. Needs row_stats on
    // the same logits and inv_temp first (it reuses that call's log Z, still on the device).
    // round_logits_to_bf16: the HF reference's numerics instead (logits cast to bf16 before the softmax, which
    // then has its own log Z; probs must be BF16; no row_stats needed).
    int32_t write_probs(const ggml_tensor * logits, float inv_temp, ggml_tensor * probs, bool round_logits_to_bf16 = false);

private:
    int32_t reserve(int device, int64_t n_rows);
    void release();

    int device_ = -1;          // CUDA device the buffers live on
    int64_t capacity_ = 0;     // rows the buffers hold
    void * block_ = nullptr;   // one device allocation: uniforms | entropy | log_z | argmax | sampled
    const void * stats_logits_ = nullptr;  // logits data and temperature of the last successful row_stats
    float stats_inv_temp_ = 0.0f;
    int64_t stats_rows_ = 0;
};

}  // namespace dg
