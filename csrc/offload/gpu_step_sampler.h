// The sampler of a context whose head is offloaded (issue 8): the decoder's logits ([V, C], 268 MB for the
// release model) never leave the GPU. After each decoder pass, per canvas position, the max, log Z, entropy,
// argmax and the sample from a host-drawn uniform are computed where the logits are, and so are the next
// step's self-conditioning probabilities, which stay on the GPU in `sc_probs` for the next decoder graph
// (graph.h, build_decoder). Only ids and entropies (16 bytes per position) come back.
//
// On CUDA this is dg::CudaSampler (csrc/offload/cuda/sampler_ggml.h). On any other device (an RPC server, Vulkan) it is
// dg::GgmlStepSampler (ggml_step_sampler.h): ggml's own ops, the self-conditioning input kept there as f32
// logits / T (sc_logits) instead of probabilities. On the test stand-in GPU (gpu_devices.h) the
// same contract runs on the host with the CPU twin of the kernel (sampler_math.h), so the whole flow (the
// probabilities tensor, the graph without sc_logits, the host-drawn uniforms) is exercised without a GPU.
#pragma once

#include "core/kernel_config.h"
#include "kernels/sampler_math.h"
#include "loader/hparams.h"
#include "offload/ggml_step_sampler.h"
#include "offload/placement.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <memory>
#include <vector>

namespace dg {

class CudaSampler;

class GpuStepSampler {
  public:
    // True when the placement's GPU can run it: the stand-in, a CUDA device in a build with our CUDA kernels,
    // or any device that runs the ggml ops of GgmlStepSampler, unless DIFFGEMMA_HOST_SAMPLER=1 asks for the
    // host sampler (the before/after figures of bench/rpc_bench.py). Otherwise an offloaded head reads its
    // logits back and the host samples (with a warning).
    static bool available(const Placement & pl, const KernelConfig & kernels);

    // Allocates the probabilities [V, C] on the placement's GPU in `probs_type`: bf16 against the bf16 embd_t
    // of an offloaded head, f16 for an F32 file (cast to f32 in the graph); GGML_TYPE_COUNT for a model
    // without self-conditioning (no probabilities). Throws dg::Error (out of memory).
    GpuStepSampler(const HParams & hp, const Placement & pl, ggml_type probs_type);
    ~GpuStepSampler();
    GpuStepSampler(const GpuStepSampler &) = delete;
    GpuStepSampler & operator=(const GpuStepSampler &) = delete;

    ggml_tensor * sc_probs() const { return probs_; }  // nullptr without self-conditioning or with GgmlStepSampler
    // GgmlStepSampler's previous logits / T (f32), the decoder's self-conditioning input; nullptr otherwise.
    ggml_tensor * sc_logits() const { return ggml_ != nullptr && with_sc_ ? ggml_->sc_logits() : nullptr; }

    // For logits [V, C] f32 on the GPU (complete: the graph has run): fills out[C] with the statistics of
    // logits at `temperature` (uniforms[C] in [0,1) pick the samples) and writes softmax(logits / temperature)
    // into sc_probs (when there is one; GgmlStepSampler keeps logits / temperature in sc_logits instead). A row
    // without a distribution gets argmax -1 on either device (the caller
    // reports it); a device failure throws dg::Error.
    void step(const ggml_tensor * logits, float temperature, const float * uniforms, std::vector<RowStats> & out);

    // After the caller chose the accepted positions: GgmlStepSampler's exact samples for accepted rows it left
    // unresolved (ggml_step_sampler.h); the other samplers resolve every row in step().
    void resolve(const std::vector<bool> & accepted, const float * uniforms, std::vector<RowStats> & stats) {
        if (ggml_ != nullptr) {
            ggml_->resolve(accepted, uniforms, stats);
        }
    }

  private:
    ggml_context * ctx_ = nullptr;
    ggml_backend_buffer_t buf_ = nullptr;
    ggml_tensor * probs_ = nullptr;
    bool stand_in_ = false;
    std::unique_ptr<CudaSampler> cuda_;
    std::unique_ptr<GgmlStepSampler> ggml_;
    bool with_sc_ = false;
    std::vector<float> host_logits_, host_probs_;  // the stand-in's host copies
};

}  // namespace dg
