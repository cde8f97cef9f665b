// Per-phase wall-clock accounting of a context (diffgemma_timings in the public header): cheap counters that
// are always on, plus an optional split of the decoder graph at the self-conditioning / backbone / head
// boundaries (ggml's scheduler eval callback stops after the two named boundary nodes).
#pragma once

#include "diffgemma.h"

#include "ggml-backend.h"

#include <chrono>
#include <map>
#include <string>

namespace dg {

// Names of the decoder's boundary nodes (set by the graph builder, found by the split callback).
inline constexpr const char * kNodeScOut = "sc_out";         // canvas input after self-conditioning
inline constexpr const char * kNodeHeadIn = "result_norm";   // the head's input: the last layer's output, normed

using Clock = std::chrono::steady_clock;

inline double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

struct Timings {
    diffgemma_timings totals{};  // what diffgemma_timings_get returns
    bool split_decoder = false;
    bool per_op = false;                         // mode 2: time every node (profiling; slower)
    Clock::time_point last_node;                 // end of the previous node (per-op mode)
    std::map<std::string, std::pair<double, int64_t>> op_ms;  // "op kind" -> (ms, nodes)
    // Boundary timestamps of the decoder pass being computed (split mode).
    Clock::time_point compute_begin, sc_done, backbone_done;
    bool saw_sc = false, saw_head = false;

    void reset() {
        totals = diffgemma_timings{};
        op_ms.clear();
    }
    // Called by ggml's scheduler for every node (split mode only).
    static bool eval_callback(ggml_tensor * t, bool ask, void * user_data);
    // Adds one decoder pass: compute_ms from compute start to end (split into the three parts when known).
    void add_decoder_compute(double compute_ms);
};

}  // namespace dg
