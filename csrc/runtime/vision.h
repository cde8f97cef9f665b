// One image through the projector: the checks and HF's preprocessing (prepare_image), then the vision tower and
// its projection on the context's scheduler and threads (encode_image). The encoder integration (set_images) and
// diffgemma_image_embed (vision_api.cpp) call these.
#pragma once

#include "diffgemma.h"
#include "runtime/prepared_image.h"

#include <cstdint>
#include <vector>

namespace dg {


// The soft-token message every vision call gives without a projector.
inline constexpr const char * kNoProjector = "no vision projector loaded (pass mmproj_path / Model(..., mmproj=...))";

// Checks the image (pixels, size, the pixel cap) and preprocesses it for the model's projector. Throws dg::Error
// (DIFFGEMMA_ERR_UNSUPPORTED_MODEL without a projector, DIFFGEMMA_ERR_INVALID_ARGUMENT for a bad image).
PreparedImage prepare_image(const diffgemma_model & model, const diffgemma_image & image);

// Soft tokens an image of width x height becomes with the model's projector (> 0). Throws dg::Error.
int32_t image_n_tokens(const diffgemma_model & model, int32_t width, int32_t height);

// The projector's output for a prepared image: n_tokens * n_embd floats (n_embd of the text model), token-major.
// Runs on ctx's scheduler; the scheduler's buffers then belong to this graph. Throws dg::Error.
std::vector<float> encode_image(diffgemma_context & ctx, const PreparedImage & image);

}  // namespace dg
