// Quantization through ggml's own routines, exported so the Python converter writes exactly the bytes
// ggml (and llama.cpp's quantizer) would write.
#include "core/errors.h"

#include "ggml.h"

#include <cmath>

extern "C" {

const char * diffgemma_type_name(int32_t ggml_type) {
    if (ggml_type < 0 || ggml_type >= GGML_TYPE_COUNT) {
        return nullptr;
    }
    const char * name = ggml_type_name(static_cast<enum ggml_type>(ggml_type));
    // Removed types keep a slot in the enum but have no block size.
    if (name == nullptr || ggml_blck_size(static_cast<enum ggml_type>(ggml_type)) == 0) {
        return nullptr;
    }
    return name;
}

size_t diffgemma_type_row_size(int32_t ggml_type, int64_t n_per_row) {
    if (diffgemma_type_name(ggml_type) == nullptr || n_per_row <= 0) {
        return 0;
    }
    const auto type = static_cast<enum ggml_type>(ggml_type);
    if (n_per_row % ggml_blck_size(type) != 0) {
        return 0;
    }
    return ggml_row_size(type, n_per_row);
}

int32_t diffgemma_quantize_rows(int32_t ggml_type, const float * src, void * dst, int64_t n_rows,
                                int64_t n_per_row, size_t dst_capacity, size_t * out_bytes) {
    if (src == nullptr || dst == nullptr || out_bytes == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_quantize_rows: src, dst and out_bytes must not be NULL");
    }
    *out_bytes = 0;
    const char * name = diffgemma_type_name(ggml_type);
    if (name == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_UNSUPPORTED_TYPE, "unknown ggml type id %d", ggml_type);
    }
    const auto type = static_cast<enum ggml_type>(ggml_type);
    if (n_rows <= 0 || n_per_row <= 0) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "quantize %s: n_rows (%lld) and n_per_row (%lld) must be positive",
                        name, (long long) n_rows, (long long) n_per_row);
    }
    if (n_per_row % ggml_blck_size(type) != 0) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT,
                        "quantize %s: row length %lld is not a multiple of the block size %lld "
                        "(hint: keep such tensors in f16/f32)",
                        name, (long long) n_per_row, (long long) ggml_blck_size(type));
    }
    if (ggml_quantize_requires_imatrix(type)) {
        return dg::fail(DIFFGEMMA_ERR_UNSUPPORTED_TYPE, "quantize %s: this type needs an importance matrix, which we do not support", name);
    }
    const bool plain = type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_BF16;
    if (!plain && !ggml_is_quantized(type)) {
        return dg::fail(DIFFGEMMA_ERR_UNSUPPORTED_TYPE, "quantize %s: not a quantization type", name);
    }
    const size_t row_bytes = ggml_row_size(type, n_per_row);
    if (static_cast<size_t>(n_rows) > SIZE_MAX / row_bytes) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "quantize %s: size overflow", name);
    }
    const size_t need = row_bytes * static_cast<size_t>(n_rows);
    if (dst_capacity < need) {
        *out_bytes = need;
        return dg::fail(DIFFGEMMA_ERR_BUFFER_TOO_SMALL, "quantize %s: destination holds %zu bytes, %zu needed",
                        name, dst_capacity, need);
    }
    // ggml's quantizers assert on non-finite input in places; reject it with a reason instead.
    const int64_t n = n_rows * n_per_row;
    for (int64_t i = 0; i < n; ++i) {
        if (!std::isfinite(src[i])) {
            return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "quantize %s: value %lld (row %lld) is not finite (%g)",
                            name, (long long) i, (long long) (i / n_per_row), (double) src[i]);
        }
    }
    *out_bytes = ggml_quantize_chunk(type, src, dst, 0, n_rows, n_per_row, nullptr);
    return DIFFGEMMA_OK;
}

}  // extern "C"
