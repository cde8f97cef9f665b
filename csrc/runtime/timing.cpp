// diffgemma_timings: per-phase accounting of encoder, decoder and sampler work (see timing.h).
#include "runtime/timing.h"

#include "core/errors.h"
#include "graph/graph.h"

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
