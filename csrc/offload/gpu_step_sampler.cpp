#include "offload/gpu_step_sampler.h"

#include "core/errors.h"
#include "core/kernel_config.h"

#ifdef DIFFGEMMA_WITH_CUDA
#include "offload/cuda/sampler_ggml.h"
#endif

#include <cmath>

namespace dg {

#ifndef DIFFGEMMA_WITH_CUDA
// Only declared in this build; the unique_ptr's deleter still needs a complete type.
class CudaSampler {};
#endif

bool GpuStepSampler::available(const Placement & pl, const KernelConfig & kernels) {
    if (pl.head_gpu().stand_in || runs_our_cuda_kernels(pl.head_gpu())) {
        return true;
    }
    return kernels.device_sampler && GgmlStepSampler::runs_on(pl.head_gpu());
}

GpuStepSampler::GpuStepSampler(const HParams & hp, const Placement & pl, ggml_type probs_type)
    : stand_in_(pl.head_gpu().stand_in), with_sc_(probs_type != GGML_TYPE_COUNT) {
#ifdef DIFFGEMMA_WITH_CUDA
    if (runs_our_cuda_kernels(pl.head_gpu())) {
        cuda_ = std::make_unique<CudaSampler>();
    }
#endif
    if (!stand_in_ && cuda_ == nullptr) {
        ggml_ = std::make_unique<GgmlStepSampler>(hp, pl.head_gpu());
        return;
    }
    if (stand_in_) {
        host_logits_.resize(static_cast<size_t>(hp.n_vocab) * static_cast<size_t>(hp.canvas_length));
        host_probs_.resize(static_cast<size_t>(hp.n_vocab));
    }
    if (probs_type == GGML_TYPE_COUNT) {
        return;
    }
    ggml_init_params params = {ggml_tensor_overhead(), nullptr, true};
    ctx_ = ggml_init(params);
    if (ctx_ == nullptr) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot create the sampler's context");
    }
    probs_ = ggml_new_tensor_2d(ctx_, probs_type, hp.n_vocab, hp.canvas_length);
    ggml_set_name(probs_, "sc_probs");
    {
        GgmlErrorCapture quiet_ggml;
        buf_ = ggml_backend_alloc_ctx_tensors_from_buft(ctx_, gpu_buffer_type(pl.head_gpu()));
    }
    if (buf_ == nullptr) {
        raise(DIFFGEMMA_ERR_OUT_OF_MEMORY, "cannot allocate %.1f MiB on %s for the self-conditioning probabilities",
              ggml_nbytes(probs_) / 1048576.0, pl.head_gpu().name.c_str());
    }
}

GpuStepSampler::~GpuStepSampler() {
    if (buf_ != nullptr) {
        ggml_backend_buffer_free(buf_);
    }
    if (ctx_ != nullptr) {
        ggml_free(ctx_);
    }
}

void GpuStepSampler::step(const ggml_tensor * logits, float temperature, const float * uniforms, std::vector<RowStats> & out) {
    if (ggml_ != nullptr) {
        ggml_->step(logits, temperature, uniforms, out);
        return;
    }
    const float inv_temp = 1.0f / temperature;
    const int64_t V = logits->ne[0];
    const int64_t C = logits->ne[1];
    out.assign(static_cast<size_t>(C), RowStats{});
    if (cuda_ != nullptr) {
#ifdef DIFFGEMMA_WITH_CUDA
        int32_t st = cuda_->row_stats(logits, inv_temp, uniforms, out.data());
        if (st == DIFFGEMMA_OK && probs_ != nullptr) {
            st = cuda_->write_probs(logits, inv_temp, probs_);
        }
        if (st != DIFFGEMMA_OK) {
            raise(st, "%s", diffgemma_last_error());
        }
#endif
    } else {
        // The stand-in: the same contract on the host (its buffers are host memory anyway).
        ggml_backend_tensor_get(logits, host_logits_.data(), 0, ggml_nbytes(logits));
        std::vector<uint16_t> row16(static_cast<size_t>(V));  // f16 or bf16 bits
        for (int64_t j = 0; j < C; ++j) {
            const float * row = host_logits_.data() + j * V;
            RowStats & s = out[static_cast<size_t>(j)];
            if (!row_stats(row, V, inv_temp, uniforms[j], &s)) {
                s.argmax = -1;
                continue;
            }
            if (probs_ == nullptr) {
                continue;
            }
            row_probs(row, V, inv_temp, s.log_z, host_probs_.data());
            if (probs_->type == GGML_TYPE_BF16) {
                ggml_fp32_to_bf16_row(host_probs_.data(), reinterpret_cast<ggml_bf16_t *>(row16.data()), V);
            } else {
                ggml_fp32_to_fp16_row(host_probs_.data(), reinterpret_cast<ggml_fp16_t *>(row16.data()), V);
            }
            ggml_backend_tensor_set(probs_, row16.data(), static_cast<size_t>(j) * probs_->nb[1], row16.size() * sizeof(uint16_t));
        }
    }
}

}  // namespace dg
