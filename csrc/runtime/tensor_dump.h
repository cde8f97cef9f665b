// The tensor dump of a context (diffgemma_set_tensor_callback): named intermediate tensors of each pass handed to
// the caller as float32, to bisect a mismatch against a reference layer by layer. It shares ggml's one scheduler
// eval callback with the timing split (eval_callback.h).
#pragma once

#include "diffgemma.h"

#include "ggml.h"

#include <string>
#include <vector>

namespace dg {

struct TensorDump {
    diffgemma_tensor_callback callback = nullptr;  // nullptr: off
    void * user_data = nullptr;
    std::vector<std::string> patterns;  // exact names, or prefixes ending in '*'

    bool wants(const char * name) const;
    // Copies t (on any backend) to the host as float32 and calls the callback; skips tensors that are not contiguous.
    void hand_over(const ggml_tensor * t) const;
};

}  // namespace dg
