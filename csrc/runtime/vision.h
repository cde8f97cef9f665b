// The vision projector at run time: an image checked and preprocessed for the model's projector, and the
// tower + projection run on a context's scheduler. (Interface shared with the encoder integration.)
#pragma once

#include "diffgemma.h"

#include <cstdint>
#include <vector>

namespace dg {

struct PreparedImage {
    int32_t width = 0, height = 0;    // resized
    int32_t grid_w = 0, grid_h = 0;   // patches
    std::vector<float> patches;       // n_patches rows, HF order
    std::vector<int32_t> positions;   // (x, y) pairs
    int32_t n_tokens = 0;             // soft tokens
    uint64_t identity = 0;            // hash of the RGB bytes and size: the same pixels, the same K/V
};

// Checks the image against the model's projector and preprocesses it (throws dg::Error).
PreparedImage prepare_image(const diffgemma_model & model, const diffgemma_image & image);

// The projector's output for one image: n_tokens * n_embd floats (throws dg::Error).
std::vector<float> encode_image(diffgemma_context & ctx, const PreparedImage & image);

}  // namespace dg
