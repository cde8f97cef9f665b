// See tensor_dump.h.
#include "tensor_dump.h"

#include "errors.h"
#include "model.h"

#include "ggml-backend.h"

#include <cstring>

namespace dg {

bool TensorDump::wants(const char * name) const {
    for (const std::string & p : patterns) {
        if (!p.empty() && p.back() == '*' ? std::strncmp(name, p.data(), p.size() - 1) == 0 : p == name) {
            return true;
        }
    }
    return false;
}

void TensorDump::hand_over(const ggml_tensor * t) const {
    if (!ggml_is_contiguous(t)) {
        return;
    }
    const int64_t n = ggml_nelements(t);
    std::vector<float> values(static_cast<size_t>(n));
    if (t->type == GGML_TYPE_F32) {
        ggml_backend_tensor_get(t, values.data(), 0, ggml_nbytes(t));
    } else {
        std::vector<char> raw(ggml_nbytes(t));
        ggml_backend_tensor_get(t, raw.data(), 0, raw.size());
        if (t->type == GGML_TYPE_I32) {  // expert ids and the like
            const int32_t * ids = reinterpret_cast<const int32_t *>(raw.data());
            for (int64_t i = 0; i < n; ++i) {
                values[static_cast<size_t>(i)] = static_cast<float>(ids[i]);
            }
        } else if (const ggml_type_traits * tt = ggml_get_type_traits(t->type); tt->to_float != nullptr) {
            tt->to_float(raw.data(), values.data(), n);
        } else {
            return;
        }
    }
    callback(t->name, ggml_n_dims(t), t->ne, values.data(), user_data);
}

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
    dg::BusyGuard guard(ctx);
    if (!guard.acquired()) {
        return dg::fail(DIFFGEMMA_ERR_BUSY, "the context is in use by another thread (one call at a time per context)");
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
    ctx->dump = std::move(dump);
    dg::update_eval_callback(ctx);
    return DIFFGEMMA_OK;
}

}  // extern "C"
