// The one eval callback of a context's scheduler, shared by the timing split (timing.h) and the tensor dump
// (tensor_dump.h), and diffgemma_set_tensor_callback.
#include "runtime/eval_callback.h"
#include "core/errors.h"
#include "runtime/context.h"

#include "ggml-backend.h"

#include <cstring>

namespace dg {

namespace {

// ggml_backend_sched_eval_callback: asked about each node first (ask = true: "stop after this one?"), then called
// again once a wanted node is computed.
bool context_eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * c = static_cast<diffgemma_context *>(user_data);
    const bool timing = c->timing.split_decoder;
    const bool dump = c->dump.callback != nullptr && c->dump.wants(t->name);
    if (ask) {
        const bool timing_wants = timing && Timings::eval_callback(t, true, &c->timing);
        return timing_wants || dump;
    }
    if (timing) {
        Timings::eval_callback(t, false, &c->timing);
    }
    if (dump) {
        c->dump.hand_over(t);
    }
    return true;  // keep computing
}

}  // namespace

void update_eval_callback(diffgemma_context * ctx) {
    const bool on = ctx->timing.split_decoder || ctx->dump.callback != nullptr;
    ggml_backend_sched_set_eval_callback(ctx->sched, on ? context_eval_callback : nullptr, on ? ctx : nullptr);
}

}  // namespace dg

extern "C" {

int32_t diffgemma_set_tensor_callback(diffgemma_context * ctx, const char * names, diffgemma_tensor_callback callback,
                                      void * user_data) {
    if (ctx == nullptr || (callback != nullptr && names == nullptr)) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_set_tensor_callback: ctx must not be NULL, nor names "
                        "with a callback");
    }
    dg::TensorDump dump;
    if (callback != nullptr) {
        dump.callback = callback;
        dump.user_data = user_data;
        for (const char * p = names; *p != '\0';) {
            const char * end = std::strchr(p, ',');
            const size_t len = end != nullptr ? static_cast<size_t>(end - p) : std::strlen(p);
            if (len == 0 || len >= GGML_MAX_NAME) {
                return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_set_tensor_callback: names \"%s\" holds an "
                                "empty name or one longer than %d characters", names, GGML_MAX_NAME - 1);
            }
            dump.patterns.emplace_back(p, len);
            p += len + (end != nullptr ? 1 : 0);
        }
        if (dump.patterns.empty()) {
            return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_set_tensor_callback: names is empty");
        }
    }
    return dg::exclusive_call(ctx, dg::CallKind::kDuringGeneration, [&] {
        ctx->dump = std::move(dump);
        dg::update_eval_callback(ctx);
    });
}

}  // extern "C"
