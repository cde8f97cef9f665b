// The C API's timing calls over a context's dg::Timings (timing.h). Apart from timing.cpp so that the accounting
// itself does not depend on the context that owns it.
#include "core/errors.h"
#include "runtime/context.h"
#include "runtime/eval_callback.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

extern "C" {

int32_t diffgemma_timings_enable(diffgemma_context * ctx, int32_t mode) {
    if (ctx == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_timings_enable: ctx must not be NULL");
    }
    if (mode < 0 || mode > 2) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_timings_enable: mode %d is not 0, 1 or 2", mode);
    }
    return dg::exclusive_call(ctx, dg::CallKind::kDuringGeneration, [&] {
        ctx->timing.split_decoder = mode != 0;
        ctx->timing.per_op = mode == 2;
        dg::update_eval_callback(ctx);  // shared with the tensor dump (eval_callback.h)
    });
}

int32_t diffgemma_timings_get(const diffgemma_context * ctx, diffgemma_timings * out) {
    if (ctx == nullptr || out == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_timings_get: ctx and out must not be NULL");
    }
    *out = ctx->timing.totals;
    return DIFFGEMMA_OK;
}

int32_t diffgemma_timings_op_report(const diffgemma_context * ctx, char * out, size_t capacity, size_t * n_out) {
    if (ctx == nullptr || n_out == nullptr || (out == nullptr && capacity > 0)) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_timings_op_report: bad arguments");
    }
    std::vector<std::pair<std::string, std::pair<double, int64_t>>> rows(ctx->timing.op_ms.begin(), ctx->timing.op_ms.end());
    std::sort(rows.begin(), rows.end(), [](const auto & a, const auto & b) { return a.second.first > b.second.first; });
    std::string text;
    for (const auto & [key, v] : rows) {
        text += dg::format("%.3f\t%lld\t%s\n", v.first, static_cast<long long>(v.second), key.c_str());
    }
    *n_out = text.size();
    if (capacity < text.size()) {
        return dg::fail(DIFFGEMMA_ERR_BUFFER_TOO_SMALL, "the op report needs %zu bytes, the buffer holds %zu", text.size(), capacity);
    }
    std::memcpy(out, text.data(), text.size());
    return DIFFGEMMA_OK;
}

void diffgemma_timings_reset(diffgemma_context * ctx) {
    if (ctx != nullptr) {
        ctx->timing.reset();
    }
}

}  // extern "C"
