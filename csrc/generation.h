// The generation a context runs between diffgemma_generate_begin and its last canvas (generation.cpp), and the
// canvas denoiser it steps (generate.cpp).
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

// The sampler settings' own checks (steps, temperatures, thresholds, max_new_tokens): DIFFGEMMA_ERR_INVALID_ARGUMENT.
void check_sampler_params(const diffgemma_sampler_params & p);

// Denoises one canvas at positions [n_past, n_past + C) (spec 5) and writes its committed (argmax) canvas;
// returns the steps used. `block` selects the replay draws and is passed to on_step.
int32_t denoise_canvas(diffgemma_context * c, const diffgemma_sampler_params & p, const diffgemma_replay * replay,
                       int32_t block, diffgemma_step_callback on_step, void * user_data, int32_t * out_canvas);

}  // namespace dg
