// diffgemma_timings: per-phase accounting of encoder, decoder and sampler work (see timing.h).
#include "timing.h"

#include "errors.h"
#include "model.h"
#include "tensor_dump.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace dg {

namespace {

// Profile key of a node: the op, and for matrix products the weight it multiplies ("MUL_MAT attn_q f32").
std::string op_key(const ggml_tensor * t) {
    std::string key = ggml_op_desc(t);
    if ((t->op == GGML_OP_MUL_MAT || t->op == GGML_OP_MUL_MAT_ID || t->op == GGML_OP_CUSTOM) && t->src[0] != nullptr) {
        const char * name = t->src[0]->name;
        std::string w = (std::strncmp(name, "blk.", 4) == 0 && std::strchr(name + 4, '.') != nullptr)
                            ? std::strchr(name + 4, '.') + 1 : name;
        key += " " + (w.empty() ? std::string("(activations)") : w) + " " + ggml_type_name(t->src[0]->type);
    }
    return key;
}

}  // namespace

bool Timings::eval_callback(ggml_tensor * t, bool ask, void * user_data) {
    auto * self = static_cast<Timings *>(user_data);
    if (self->per_op) {
        if (ask) {
            return true;
        }
        const auto now = Clock::now();
        auto & slot = self->op_ms[op_key(t)];
        slot.first += std::chrono::duration<double, std::milli>(now - self->last_node).count();
        slot.second += 1;
        self->last_node = now;
    }
    const bool sc = std::strcmp(t->name, kNodeScOut) == 0;
    const bool head = std::strcmp(t->name, kNodeHeadIn) == 0;
    if (ask) {
        return sc || head;  // stop the compute after these nodes only
    }
    if (sc) {
        self->sc_done = Clock::now();
        self->saw_sc = true;
    } else if (head) {
        self->backbone_done = Clock::now();
        self->saw_head = true;
    }
    return true;  // keep computing
}

void Timings::add_decoder_compute(double compute_ms) {
    totals.decoder_compute_ms += compute_ms;
    if (split_decoder && saw_sc && saw_head) {
        using ms = std::chrono::duration<double, std::milli>;
        const double sc = ms(sc_done - compute_begin).count();
        const double backbone = ms(backbone_done - sc_done).count();
        totals.sc_ms += sc;
        totals.backbone_ms += backbone;
        totals.head_ms += compute_ms - sc - backbone;
        totals.n_split += 1;
    }
    saw_sc = saw_head = false;
}

}  // namespace dg

extern "C" {

int32_t diffgemma_timings_enable(diffgemma_context * ctx, int32_t mode) {
    if (ctx == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_timings_enable: ctx must not be NULL");
    }
    dg::BusyGuard guard(ctx);
    if (!guard.acquired()) {
        return dg::fail(DIFFGEMMA_ERR_BUSY, "the context is in use by another thread (one call at a time per context)");
    }
    if (mode < 0 || mode > 2) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_timings_enable: mode %d is not 0, 1 or 2", mode);
    }
    ctx->timing.split_decoder = mode != 0;
    ctx->timing.per_op = mode == 2;
    dg::update_eval_callback(ctx);
    return DIFFGEMMA_OK;
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
