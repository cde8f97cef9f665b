// HF's Gemma4ImageProcessor (transformers 5.23.0, torchvision backend) on 8-bit RGB: the aspect-preserving target
// size, the resize (image_resize.h), the rescale to [0, 1] and the cut into patches with their (x, y) positions.
// Errors are raised as dg::Error with DIFFGEMMA_ERR_INVALID_ARGUMENT; the C API (image_api.cpp) and the runtime
// turn them into statuses.
#pragma once

#include "diffgemma.h"

#include <cstdint>
#include <vector>

namespace dg {

// The projector's patch settings (HF: patch_size, pooling_kernel_size, max_soft_tokens).
struct PatchSettings {
    int32_t patch_size = 16;
    int32_t pooling = 3;            // pooling x pooling patches become one soft token
    int32_t max_soft_tokens = 280;  // one of HF's {70, 140, 280, 560, 1120}
};

// Raises unless patch_size >= 1, pooling >= 1, max_soft_tokens is one HF accepts, and the largest resized image
// (max_soft_tokens * pooling^2 patches of patch_size^2 pixels) stays within DIFFGEMMA_IMAGE_MAX_PIXELS.
void check_patch_settings(const PatchSettings & settings);

// Raises unless width, height >= 1 and width * height <= DIFFGEMMA_IMAGE_MAX_PIXELS.
void check_image_size(int64_t width, int64_t height);

// Raises on a NULL image or pixel pointer and on a bad size (check_image_size).
void check_image(const diffgemma_image * image);

// What an image of a given size becomes.
struct PatchGrid {
    int32_t width = 0;   // the resized image (a multiple of patch_size * pooling)
    int32_t height = 0;
    int32_t cols = 0;    // patches per row: width / patch_size
    int32_t rows = 0;    // patch rows: height / patch_size
    int32_t n_patches() const { return cols * rows; }
    int32_t n_soft_tokens = 0;  // n_patches / pooling^2: the image's run of soft tokens in a prompt
};

// HF's get_aspect_ratio_preserving_size and patch counts for a width x height image (checks both arguments).
PatchGrid patch_grid(int64_t width, int64_t height, const PatchSettings & settings);

// Resizes `image` to grid.width x grid.height (skipped when the size is unchanged, as HF does) and writes its
// patches: n_patches rows of patch_size^2 * 3 floats, (row, column, channel) within a patch, patches in row-major
// order, each value byte * (float)(1/255) (torch multiplies the uint8 tensor by the Python float 1/255). Writes
// (x, y) = (column, row) per patch to `positions`. Either output may be NULL (no resize without `pixels`).
void write_patches(const diffgemma_image & image, const PatchGrid & grid, int32_t patch_size, float * pixels,
                   int32_t * positions);

// The whole processor for one image: its grid, pixels (n_patches * patch_size^2 * 3) and positions
// (n_patches * 2). HF pads both to max_soft_tokens * pooling^2 rows (pixels 0, positions -1); we keep only the
// real patches. Checks the image and the settings.
struct ImagePatches {
    PatchGrid grid;
    std::vector<float> pixels;
    std::vector<int32_t> positions;
};
ImagePatches preprocess_image(const diffgemma_image * image, const PatchSettings & settings);

}  // namespace dg
