// The step sampler for a head on a device without our CUDA kernels (an RPC server, Vulkan, a CUDA ggml in a
// build without DIFFGEMMA_CUDA): the same contract as GpuStepSampler (gpu_step_sampler.h), computed with ggml's
// own ops on the head's device, so only a few numbers per canvas position come back instead of V x C logits.
//
// Per step, one small graph on the head's backend turns the decoder's logits [V, C] into
//   lg = logits / T           a true division, as the host sampler's; kept on the device in `sc_logits` (f32),
//                             the next step's self-conditioning input (graph.h reads it like host sc_logits)
//   argmax, entropy           ggml_argmax; log(s) - t/s with s = sum exp(lg - max), t = sum exp(lg - max)(lg - max)
//   the sample for u          from cumsum(softmax(lg)): count(cdf > u - delta) and count(cdf > u + delta)
//   ties at the max           count(lg < max)
// and reads back argmax (4 bytes) and those four floats (16 bytes) per position.
//
// Equal to the host sampler (sampler_math.h) where it can be:
//   - lg is bit-identical on a device whose division is IEEE (ggml's CPU backend behind RPC), so the
//     self-conditioning input and the argmax are the host's;
//   - the sampled id is certified: the float cumsum differs from the host's exact CDF by at most
//     delta = (V + 64) * 2^-24 (sequential sum of V terms in [0, 1], plus the softmax's and the host's own
//     rounding), so when no CDF value lies within delta of u (both counts agree) the smallest i with cdf_i > u
//     is the host's id. Otherwise the sample is left unresolved, and resolve() reads back the rows the caller
//     accepted (V floats each) and samples them with the host's row_stats; rejected rows' samples are never
//     used. In a flat row (CDF steps ~1/V, below delta) every sample is unresolved, but such a step accepts
//     only one or a few positions; in a peaked one a sample is unresolved with probability ~2 delta (3% for
//     V = 262144). A row whose maximum is tied (ggml_argmax returns the last tied index, the host the first)
//     or that has no finite entropy is read back at once, so its statistics are exactly the host's;
//   - the entropy is float arithmetic in another order than the host's double sums: a few float ulps of log(s)
//     apart (|dH| ~ 1e-7 nats). It decides acceptance (sorted entropies, cumulative sum <= the bound) and the
//     stop (mean entropy < confidence), so those can differ from the host run only when a cumulative sum or
//     the mean lies within ~C * 1e-7 of its threshold or two entropies tie that closely at the cut.
#pragma once

#include "devices/gpu_devices.h"
#include "loader/hparams.h"
#include "kernels/sampler_math.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

#include <cstdint>
#include <vector>

namespace dg {

class GgmlStepSampler {
  public:
    // True when the head's device runs every op of the step (checked on a backend made for the question); a
    // device that lacks one is named in a warning, and the host samples instead.
    static bool runs_on(const Gpu & head);

    // Allocates lg [V, C] f32 on the head's device and creates a backend for it. Throws dg::Error (no backend,
    // out of memory).
    GgmlStepSampler(const HParams & hp, const Gpu & head);
    ~GgmlStepSampler();
    GgmlStepSampler(const GgmlStepSampler &) = delete;
    GgmlStepSampler & operator=(const GgmlStepSampler &) = delete;

    // The previous step's lg on the device (the decoder's self-conditioning input).
    ggml_tensor * sc_logits() const { return lg_; }

    // For logits [V, C] f32 on the head's device (the decoder graph has run): fills out[C] with the statistics
    // of logits / temperature (uniforms[C] in [0,1) pick the samples) and keeps logits / temperature in
    // sc_logits. A row without a distribution gets argmax -1; a device failure throws dg::Error.
    void step(const ggml_tensor * logits, float temperature, const float * uniforms, std::vector<RowStats> & out);

    // After the caller chose the accepted positions: the host's exact sample for each accepted row whose
    // sample the counts left unresolved (its V floats read back). Samples of rejected rows are never used.
    void resolve(const std::vector<bool> & accepted, const float * uniforms, std::vector<RowStats> & stats);

    // `sampled` of a row whose CDF lies within delta of u (step), until resolve().
    static constexpr int32_t kSampleUnresolved = -2;

    // Rows read back whole since construction (the unresolved samples and ties above).
    int64_t rows_read_back() const { return rows_read_back_; }

  private:
    void read_row_stats(int64_t j, float u, RowStats & r);

    ggml_backend_t backend_ = nullptr;
    ggml_context * lg_ctx_ = nullptr;
    ggml_backend_buffer_t lg_buf_ = nullptr;
    ggml_tensor * lg_ = nullptr;
    ggml_gallocr_t galloc_ = nullptr;
    std::vector<uint8_t> meta_;
    int64_t n_vocab_ = 0;
    int64_t rows_read_back_ = 0;
    std::vector<float> inputs_, stats_, row_;
    std::vector<int32_t> argmax_;
};

}  // namespace dg
