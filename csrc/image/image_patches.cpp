// HF's Gemma4ImageProcessor on 8-bit RGB: target size, resize, rescale, patches (image_patches.h).
#include "image/image_patches.h"

#include "core/errors.h"
#include "image/image_resize.h"

#include <cmath>
#include <cstddef>

namespace dg {
namespace {

// HF's _SUPPORTED_SOFT_TOKENS: the processor refuses any other max_soft_tokens.
constexpr int32_t kSoftTokenBudgets[] = {70, 140, 280, 560, 1120};

bool supported_budget(int32_t max_soft_tokens) {
    for (int32_t budget : kSoftTokenBudgets) {
        if (budget == max_soft_tokens) {
            return true;
        }
    }
    return false;
}

}  // namespace

void check_patch_settings(const PatchSettings & s) {
    if (s.patch_size < 1) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "image patch_size %d: must be at least 1", s.patch_size);
    }
    if (s.pooling < 1) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "image pooling %d: must be at least 1", s.pooling);
    }
    if (!supported_budget(s.max_soft_tokens)) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT,
              "image max_soft_tokens %d: HF's Gemma 4 processor accepts 70, 140, 280, 560 or 1120", s.max_soft_tokens);
    }
    // Each factor is bounded first so that the product cannot overflow int64.
    const int64_t max_side = int64_t{1} << 13;  // (2^13)^2 > 2^25 already
    const int64_t largest = s.patch_size >= max_side || s.pooling >= max_side
                                ? INT64_MAX
                                : int64_t{s.max_soft_tokens} * s.pooling * s.pooling * s.patch_size * s.patch_size;
    if (largest > DIFFGEMMA_IMAGE_MAX_PIXELS) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT,
              "image patch_size %d, pooling %d, max_soft_tokens %d: the resized image could reach %lld pixels, more "
              "than DIFFGEMMA_IMAGE_MAX_PIXELS (%d)",
              s.patch_size, s.pooling, s.max_soft_tokens, static_cast<long long>(largest), DIFFGEMMA_IMAGE_MAX_PIXELS);
    }
}

void check_image_size(int64_t width, int64_t height) {
    if (width < 1 || height < 1) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "image size %lld x %lld: both sides must be at least 1 pixel",
              static_cast<long long>(width), static_cast<long long>(height));
    }
    if (width * height > DIFFGEMMA_IMAGE_MAX_PIXELS) {  // both are int32 values: the product fits int64
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT,
              "image size %lld x %lld: %lld pixels, more than DIFFGEMMA_IMAGE_MAX_PIXELS (%d); scale it down first",
              static_cast<long long>(width), static_cast<long long>(height), static_cast<long long>(width * height),
              DIFFGEMMA_IMAGE_MAX_PIXELS);
    }
}

void check_image(const diffgemma_image * image) {
    if (image == nullptr) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "image is NULL");
    }
    if (image->rgb == nullptr) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "image rgb is NULL");
    }
    check_image_size(image->width, image->height);
}

PatchGrid patch_grid(int64_t width, int64_t height, const PatchSettings & s) {
    check_image_size(width, height);
    check_patch_settings(s);
    // HF's get_aspect_ratio_preserving_size, in its double arithmetic: the largest size with sides that are
    // multiples of patch_size * pooling and about max_patches patches, keeping the aspect ratio. (Python's int / int
    // is the double quotient here: every operand is below 2^53.)
    const int64_t side = int64_t{s.patch_size} * s.pooling;
    const int64_t max_patches = int64_t{s.max_soft_tokens} * s.pooling * s.pooling;
    const int64_t target_px = max_patches * s.patch_size * s.patch_size;
    const double factor = std::sqrt(static_cast<double>(target_px) / static_cast<double>(width * height));
    const double ideal_height = factor * static_cast<double>(height);
    const double ideal_width = factor * static_cast<double>(width);
    int64_t target_height = static_cast<int64_t>(std::floor(ideal_height / static_cast<double>(side))) * side;
    int64_t target_width = static_cast<int64_t>(std::floor(ideal_width / static_cast<double>(side))) * side;

    // Unreachable with the accepted budgets (the ideal area is at least 70 * side^2); kept as HF has it.
    if (target_height == 0 && target_width == 0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT,
              "image %lld x %lld would be resized to 0 x 0 (sides must be multiples of patch_size * pooling = %lld)",
              static_cast<long long>(width), static_cast<long long>(height), static_cast<long long>(side));
    }
    // A very long strip: its short side rounds to 0. HF gives it one row (or column) of side pixels and a long
    // side of floor(aspect ratio) * side, at most max_soft_tokens * side.
    const int64_t max_side_length = (max_patches / (int64_t{s.pooling} * s.pooling)) * side;
    if (target_height == 0) {
        target_height = side;
        target_width = std::min(
            static_cast<int64_t>(std::floor(static_cast<double>(width) / static_cast<double>(height))) * side,
            max_side_length);
    } else if (target_width == 0) {
        target_width = side;
        target_height = std::min(
            static_cast<int64_t>(std::floor(static_cast<double>(height) / static_cast<double>(width))) * side,
            max_side_length);
    }
    // Unreachable too (both sides are rounded down), and kept for the same reason.
    if (target_height * target_width > target_px) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "image %lld x %lld: resizing to %lld x %lld exceeds %lld patches of %d pixels",
              static_cast<long long>(width), static_cast<long long>(height), static_cast<long long>(target_width),
              static_cast<long long>(target_height), static_cast<long long>(max_patches), s.patch_size);
    }

    PatchGrid grid;
    grid.width = static_cast<int32_t>(target_width);  // at most target_px <= DIFFGEMMA_IMAGE_MAX_PIXELS
    grid.height = static_cast<int32_t>(target_height);
    grid.cols = grid.width / s.patch_size;
    grid.rows = grid.height / s.patch_size;
    grid.n_soft_tokens = grid.n_patches() / (s.pooling * s.pooling);
    return grid;
}

void write_patches(const diffgemma_image & image, const PatchGrid & grid, int32_t patch_size, float * pixels,
                   int32_t * positions) {
    if (positions != nullptr) {
        // HF: meshgrid(arange(cols), arange(rows), indexing="xy") stacked as (x, y), patches in row-major order.
        for (int32_t r = 0; r < grid.rows; ++r) {
            for (int32_t c = 0; c < grid.cols; ++c) {
                const size_t p = static_cast<size_t>(r) * grid.cols + c;
                positions[2 * p + 0] = c;
                positions[2 * p + 1] = r;
            }
        }
    }
    if (pixels == nullptr) {
        return;
    }
    std::vector<uint8_t> resized;
    const uint8_t * rgb = image.rgb;
    if (grid.width != image.width || grid.height != image.height) {
        resized = resize_rgb_bicubic_aa(image.rgb, image.width, image.height, grid.width, grid.height);
        rgb = resized.data();
    }
    // HF's rescale is `uint8 tensor * (1/255)`: torch multiplies in float32 by the float32 rounding of 1/255, which
    // differs from byte / 255.0f in the last bit for about half of the byte values.
    const float scale = static_cast<float>(1.0 / 255.0);
    // A patch row is patch_size pixels of one image row: (row, column, channel) order is the image's own layout
    // within a row, so each patch is patch_size contiguous runs of patch_size * 3 bytes.
    const size_t run = static_cast<size_t>(patch_size) * 3;
    const size_t image_row = static_cast<size_t>(grid.width) * 3;
    float * out = pixels;
    for (int32_t r = 0; r < grid.rows; ++r) {
        for (int32_t c = 0; c < grid.cols; ++c) {
            for (int32_t y = 0; y < patch_size; ++y) {
                const uint8_t * in = rgb + (static_cast<size_t>(r) * patch_size + y) * image_row + c * run;
                for (size_t k = 0; k < run; ++k) {
                    *out++ = static_cast<float>(in[k]) * scale;
                }
            }
        }
    }
}

ImagePatches preprocess_image(const diffgemma_image * image, const PatchSettings & settings) {
    check_image(image);
    ImagePatches result;
    result.grid = patch_grid(image->width, image->height, settings);
    const size_t n = static_cast<size_t>(result.grid.n_patches());
    result.pixels.resize(n * settings.patch_size * settings.patch_size * 3);
    result.positions.resize(n * 2);
    write_patches(*image, result.grid, settings.patch_size, result.pixels.data(), result.positions.data());
    return result;
}

}  // namespace dg
