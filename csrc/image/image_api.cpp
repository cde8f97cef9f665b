// C API of the image processor (issue 19): diffgemma_image_preprocess, HF's Gemma4ImageProcessor for any settings.
#include "diffgemma.h"

#include "core/errors.h"
#include "image/image_patches.h"

extern "C" int32_t diffgemma_image_preprocess(const diffgemma_image * image, int32_t patch_size, int32_t pooling,
                                              int32_t max_soft_tokens, float * pixels, int32_t * positions,
                                              int32_t capacity_patches, int32_t * out_width, int32_t * out_height) {
    return dg::guard([&]() -> int32_t {
        dg::check_image(image);
        const dg::PatchSettings settings{patch_size, pooling, max_soft_tokens};
        const dg::PatchGrid grid = dg::patch_grid(image->width, image->height, settings);
        if (out_width != nullptr) *out_width = grid.width;
        if (out_height != nullptr) *out_height = grid.height;
        const int32_t n_patches = grid.n_patches();
        if (pixels == nullptr && positions == nullptr) {
            return n_patches;  // the count only
        }
        if (capacity_patches < 0) {
            dg::raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "%s: capacity_patches %d is negative", __func__, capacity_patches);
        }
        if (capacity_patches < n_patches) {
            dg::raise(DIFFGEMMA_ERR_BUFFER_TOO_SMALL,
                      "%s: the %d x %d image becomes %d patches but the buffers hold %d (call with NULL buffers for "
                      "the count)",
                      __func__, image->width, image->height, n_patches, capacity_patches);
        }
        dg::write_patches(*image, grid, patch_size, pixels, positions);
        return n_patches;
    });
}
