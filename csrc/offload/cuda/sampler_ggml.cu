// dg::CudaSampler: the fused sampler kernels (sampler.cu) on ggml tensors of a CUDA backend buffer.
#include "offload/cuda/sampler_ggml.h"

#include "core/errors.h"
#include "offload/cuda/sampler_cuda.h"

#include "ggml-backend.h"
#include "ggml.h"

#include <cuda_runtime_api.h>

#include <cstdlib>
#include <cstring>
#include <vector>

namespace dg {
namespace {

int32_t cuda_fail(const char * what, cudaError_t err) {
    return fail(DIFFGEMMA_ERR_BACKEND, "CUDA sampler: %s failed: %s (%s)", what, cudaGetErrorString(err), cudaGetErrorName(err));
}

// The CUDA device index of the buffer holding t, or -1 (with the reason recorded) when it is not on a CUDA device.
int cuda_device_of(const ggml_tensor * t, const char * what) {
    if (!t->buffer || ggml_backend_buffer_is_host(t->buffer)) {
        fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: %s '%s' is not in a device buffer", what, t->name);
        return -1;
    }
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(ggml_backend_buffer_get_type(t->buffer));
    const char * name = dev ? ggml_backend_dev_name(dev) : ggml_backend_buffer_name(t->buffer);
    if (!name || std::strncmp(name, "CUDA", 4) != 0) {
        fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: %s '%s' lives on %s, not on a CUDA device", what, t->name,
             name ? name : "an unknown device");
        return -1;
    }
    // The PCI bus id identifies the device for the runtime API; ggml names devices CUDA0, CUDA1, ... otherwise.
    if (dev) {
        ggml_backend_dev_props props;
        ggml_backend_dev_get_props(dev, &props);
        int index = -1;
        if (props.device_id && cudaDeviceGetByPCIBusId(&index, props.device_id) == cudaSuccess) return index;
    }
    char * end = nullptr;
    const long index = std::strtol(name + 4, &end, 10);
    if (end == name + 4 || index < 0) {
        fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: cannot tell the device index of %s", name);
        return -1;
    }
    return static_cast<int>(index);
}

int32_t check_logits(const ggml_tensor * logits) {
    if (!logits) return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: logits is NULL");
    if (logits->type != GGML_TYPE_F32 || logits->ne[2] != 1 || logits->ne[3] != 1 || logits->nb[0] != sizeof(float) ||
        logits->nb[1] % sizeof(float) != 0)
        return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT,
                    "CUDA sampler: logits '%s' must be F32 [n_vocab, n_rows] with contiguous rows (type %s, ne %lld x %lld x %lld)",
                    logits->name, ggml_type_name(logits->type), (long long)logits->ne[0], (long long)logits->ne[1],
                    (long long)logits->ne[2]);
    return DIFFGEMMA_OK;
}

// Byte offsets of the arrays inside the device block for `rows` rows.
struct Layout {
    size_t uniforms, entropy, log_z, argmax, sampled, total;
    explicit Layout(int64_t rows) {
        const size_t n = static_cast<size_t>(rows) * 4;
        uniforms = 0;
        entropy = n;
        log_z = 2 * n;
        argmax = 3 * n;
        sampled = 4 * n;
        total = 5 * n;
    }
};

}  // namespace

CudaSampler::~CudaSampler() { release(); }

void CudaSampler::release() {
    if (block_) {
        int current = -1;
        if (cudaGetDevice(&current) == cudaSuccess && current != device_) cudaSetDevice(device_);
        cudaFree(block_);
        if (current >= 0 && current != device_) cudaSetDevice(current);
    }
    block_ = nullptr;
    capacity_ = 0;
    device_ = -1;
    stats_logits_ = nullptr;
}

int32_t CudaSampler::reserve(int device, int64_t n_rows) {
    cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) return cuda_fail("cudaSetDevice", err);
    if (block_ && device == device_ && n_rows <= capacity_) return DIFFGEMMA_OK;
    release();
    err = cudaSetDevice(device);
    if (err != cudaSuccess) return cuda_fail("cudaSetDevice", err);
    err = cudaMalloc(&block_, Layout(n_rows).total);
    if (err != cudaSuccess) {
        block_ = nullptr;
        return err == cudaErrorMemoryAllocation
                   ? fail(DIFFGEMMA_ERR_OUT_OF_MEMORY, "CUDA sampler: cannot allocate %zu bytes on CUDA%d", Layout(n_rows).total, device)
                   : cuda_fail("cudaMalloc", err);
    }
    device_ = device;
    capacity_ = n_rows;
    return DIFFGEMMA_OK;
}

int32_t CudaSampler::row_stats(const ggml_tensor * logits, float inv_temp, const float * uniforms, RowStats * out) {
    stats_logits_ = nullptr;
    if (int32_t rc = check_logits(logits)) return rc;
    if (!uniforms || !out) return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: uniforms and out must not be NULL");
    const int64_t n_vocab = logits->ne[0], n_rows = logits->ne[1];
    if (n_rows == 0) return DIFFGEMMA_OK;
    const int device = cuda_device_of(logits, "logits");
    if (device < 0) return DIFFGEMMA_ERR_INVALID_ARGUMENT;
    if (int32_t rc = reserve(device, n_rows)) return rc;

    const Layout at(capacity_);
    char * base = static_cast<char *>(block_);
    cudaError_t err = cudaMemcpy(base + at.uniforms, uniforms, sizeof(float) * n_rows, cudaMemcpyHostToDevice);
    if (err != cudaSuccess) return cuda_fail("copying the uniforms", err);
    err = dg_cuda_sampler_row_stats(static_cast<const float *>(logits->data), n_rows, n_vocab,
                                    static_cast<int64_t>(logits->nb[1] / sizeof(float)), inv_temp,
                                    reinterpret_cast<const float *>(base + at.uniforms), reinterpret_cast<int32_t *>(base + at.argmax),
                                    reinterpret_cast<int32_t *>(base + at.sampled), reinterpret_cast<float *>(base + at.entropy),
                                    reinterpret_cast<float *>(base + at.log_z), nullptr);
    if (err == cudaErrorInvalidValue)
        return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: rejected n_vocab=%lld n_rows=%lld inv_temp=%g",
                    (long long)n_vocab, (long long)n_rows, inv_temp);
    if (err != cudaSuccess) return cuda_fail("launching the statistics kernel", err);

    // Copy back entropy, log_z, argmax, sampled (16 bytes a row; the first copy waits for the kernel).
    std::vector<float> entropy_logz(static_cast<size_t>(2 * n_rows));
    std::vector<int32_t> ids(static_cast<size_t>(2 * n_rows));
    err = cudaMemcpy(entropy_logz.data(), base + at.entropy, sizeof(float) * n_rows, cudaMemcpyDeviceToHost);
    if (err == cudaSuccess)
        err = cudaMemcpy(entropy_logz.data() + n_rows, base + at.log_z, sizeof(float) * n_rows, cudaMemcpyDeviceToHost);
    if (err == cudaSuccess) err = cudaMemcpy(ids.data(), base + at.argmax, sizeof(int32_t) * n_rows, cudaMemcpyDeviceToHost);
    if (err == cudaSuccess)
        err = cudaMemcpy(ids.data() + n_rows, base + at.sampled, sizeof(int32_t) * n_rows, cudaMemcpyDeviceToHost);
    if (err != cudaSuccess) return cuda_fail("running the statistics kernel", err);
    // A row without a distribution keeps argmax -1: the caller reports it (generate.cpp check_rows), with the
    // same status and hint as after the host sampler.
    for (int64_t r = 0; r < n_rows; ++r) {
        out[r].entropy = entropy_logz[static_cast<size_t>(r)];
        out[r].log_z = entropy_logz[static_cast<size_t>(n_rows + r)];
        out[r].argmax = ids[static_cast<size_t>(r)];
        out[r].sampled = ids[static_cast<size_t>(n_rows + r)];
    }
    stats_logits_ = logits->data;
    stats_inv_temp_ = inv_temp;
    stats_rows_ = n_rows;
    return DIFFGEMMA_OK;
}

int32_t CudaSampler::write_probs(const ggml_tensor * logits, float inv_temp, ggml_tensor * probs, bool round_logits_to_bf16) {
    if (int32_t rc = check_logits(logits)) return rc;
    if (!probs) return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: probs is NULL");
    if (round_logits_to_bf16 && probs->type != GGML_TYPE_BF16)
        return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: probabilities of bf16-rounded logits are written as BF16, not %s",
                    ggml_type_name(probs->type));
    if (!round_logits_to_bf16 && (logits->data != stats_logits_ || inv_temp != stats_inv_temp_ || logits->ne[1] != stats_rows_))
        return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT,
                    "CUDA sampler: write_probs needs a successful row_stats on the same logits and temperature first");
    if ((probs->type != GGML_TYPE_F16 && probs->type != GGML_TYPE_BF16) || probs->ne[0] != logits->ne[0] ||
        probs->ne[1] != logits->ne[1] || probs->ne[2] != 1 || probs->ne[3] != 1 || probs->nb[0] != 2 || probs->nb[1] % 2 != 0)
        return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT,
                    "CUDA sampler: probs '%s' must be F16 or BF16 [%lld, %lld] with contiguous rows (type %s, ne %lld x %lld)",
                    probs->name, (long long)logits->ne[0], (long long)logits->ne[1], ggml_type_name(probs->type),
                    (long long)probs->ne[0], (long long)probs->ne[1]);
    const int logits_device = cuda_device_of(logits, "logits");
    const int device = cuda_device_of(probs, "probs");
    if (device < 0 || logits_device < 0) return DIFFGEMMA_ERR_INVALID_ARGUMENT;
    if (device != logits_device)
        return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: probs is on CUDA%d, the logits on CUDA%d", device, logits_device);
    cudaError_t err = cudaSetDevice(device);
    if (err != cudaSuccess) return cuda_fail("cudaSetDevice", err);
    const float * log_z = nullptr;  // the kernel normalises bf16-rounded logits itself
    if (!round_logits_to_bf16) log_z = reinterpret_cast<const float *>(static_cast<char *>(block_) + Layout(capacity_).log_z);
    const dg_cuda_probs_type type = round_logits_to_bf16              ? DG_CUDA_PROBS_BF16_OF_BF16_LOGITS
                                    : probs->type == GGML_TYPE_F16 ? DG_CUDA_PROBS_F16
                                                                   : DG_CUDA_PROBS_BF16;
    err = dg_cuda_sampler_write_probs(static_cast<const float *>(logits->data), logits->ne[1], logits->ne[0],
                                      static_cast<int64_t>(logits->nb[1] / sizeof(float)), inv_temp, log_z, probs->data, type,
                                      static_cast<int64_t>(probs->nb[1] / 2), nullptr);
    if (err == cudaErrorInvalidValue)
        return fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "CUDA sampler: rejected probs for n_vocab=%lld n_rows=%lld",
                    (long long)logits->ne[0], (long long)logits->ne[1]);
    if (err != cudaSuccess) return cuda_fail("launching the probabilities kernel", err);
    // ggml's next graph runs on its own non-blocking stream: finish here so it reads complete probabilities.
    err = cudaStreamSynchronize(nullptr);
    if (err != cudaSuccess) return cuda_fail("running the probabilities kernel", err);
    return DIFFGEMMA_OK;
}

}  // namespace dg
