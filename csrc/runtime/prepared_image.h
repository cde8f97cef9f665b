// One image checked and preprocessed for the model's projector (runtime/vision.h makes it): what a prompt's
// image span holds until its features are needed.
#pragma once

#include <cstdint>
#include <vector>

namespace dg {

struct PreparedImage {
    int32_t width = 0, height = 0;    // resized
    int32_t grid_w = 0, grid_h = 0;   // patches
    std::vector<float> patches;       // n_patches rows of patch_size^2 * 3 floats in [0, 1], HF order (row, column, channel)
    std::vector<int32_t> positions;   // n_patches (x, y) pairs, row-major
    int32_t n_tokens = 0;             // soft tokens: n_patches / pooling^2
    uint64_t identity = 0;            // hash of the RGB bytes + size
};

}  // namespace dg
