// The state of the generation a context runs between diffgemma_generate_begin and its last canvas (kept in
// diffgemma_context; driven by generation.cpp).
#pragma once

#include "diffgemma.h"

#include <cstdint>
#include <vector>

namespace dg {

struct Generation {
    bool open = false;
    diffgemma_sampler_params params{};
    const diffgemma_replay * replay = nullptr;  // the caller's draws (or nullptr); it keeps them alive until the end
    int32_t next_block = 0;                     // the canvas diffgemma_generate_next denoises next
    int32_t n_blocks = 0;                       // canvases max_new_tokens asks for
    std::vector<int32_t> to_encode;             // the last committed canvas, encoded when the next one begins
};

}  // namespace dg
