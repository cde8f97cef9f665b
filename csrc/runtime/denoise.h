// One canvas of block diffusion (spec 5, denoise.cpp): the sampler settings' checks and the denoiser that
// generation.cpp steps.
#pragma once

#include "diffgemma.h"

#include <cstdint>

namespace dg {

// The sampler settings' own checks (steps, temperatures, thresholds, max_new_tokens): DIFFGEMMA_ERR_INVALID_ARGUMENT.
void check_sampler_params(const diffgemma_sampler_params & p);

// Denoises one canvas at positions [n_past, n_past + C) (spec 5) and writes its committed (argmax) canvas;
// returns the steps used. `block` selects the replay draws and is passed to on_step.
int32_t denoise_canvas(diffgemma_context * c, const diffgemma_sampler_params & p, const diffgemma_replay * replay,
                       int32_t block, diffgemma_step_callback on_step, void * user_data, int32_t * out_canvas);

}  // namespace dg
