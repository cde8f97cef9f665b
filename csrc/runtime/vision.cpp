#include "runtime/vision.h"

#include "core/errors.h"
#include "graph/vision_graph.h"
#include "runtime/context.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace dg {

namespace {

// FNV-1a over the bytes, then the size: equal identities mean (almost surely) the same pixels.
uint64_t image_identity(const diffgemma_image & image) {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](const uint8_t * p, size_t n) {
        for (size_t i = 0; i < n; ++i) {
            h = (h ^ p[i]) * 1099511628211ull;
        }
    };
    mix(image.rgb, static_cast<size_t>(image.width) * static_cast<size_t>(image.height) * 3);
    const int32_t size[2] = {image.width, image.height};
    mix(reinterpret_cast<const uint8_t *>(size), sizeof(size));
    return h;
}

// The C API's preprocessing, whose failure (recorded as the thread's last error) is rethrown as is.
int32_t preprocess(const diffgemma_image & image, const VisionHParams & hp, float * pixels, int32_t * positions,
                   int32_t capacity, int32_t * width, int32_t * height) {
    const int32_t n = diffgemma_image_preprocess(&image, hp.patch_size, hp.pooling, hp.max_soft_tokens, pixels, positions,
                                                 capacity, width, height);
    if (n < 0) {
        raise(n, "%s", diffgemma_last_error());
    }
    return n;
}

// TODO(issue 19): the resize rule belongs to the image layer (csrc/image/image_patches.h, helper H1); this
// stand-in (HF get_aspect_ratio_preserving_size) goes when that lands.
struct ImageGrid {
    int32_t width = 0, height = 0;  // resized pixels
    int32_t n_tokens(int32_t pooling) const { return width / side_ * (height / side_) ; }
    int32_t side_ = 1;              // patch_size * pooling
};

ImageGrid image_grid(int32_t width, int32_t height, int32_t patch, int32_t pooling, int32_t max_soft_tokens) {
    const double max_patches = static_cast<double>(max_soft_tokens) * pooling * pooling;
    const double factor = std::sqrt(max_patches * patch * patch / (static_cast<double>(width) * height));
    const int32_t side = patch * pooling;
    ImageGrid g;
    g.side_ = side;
    g.height = static_cast<int32_t>(std::floor(factor * height / side)) * side;
    g.width = static_cast<int32_t>(std::floor(factor * width / side)) * side;
    const int32_t max_side = max_soft_tokens * side;
    if (g.height == 0 && g.width == 0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "an image of %d x %d pixels resizes to nothing", width, height);
    }
    if (g.height == 0) {
        g.height = side;
        g.width = std::min(static_cast<int32_t>(width / height) * side, max_side);
    } else if (g.width == 0) {
        g.width = side;
        g.height = std::min(static_cast<int32_t>(height / width) * side, max_side);
    }
    return g;
}

}  // namespace

int32_t image_n_tokens(const diffgemma_model & model, int32_t width, int32_t height) {
    if (model.vision == nullptr) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "%s", kNoProjector);
    }
    if (width <= 0 || height <= 0 || static_cast<int64_t>(width) * height > DIFFGEMMA_IMAGE_MAX_PIXELS) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "an image of %d x %d pixels: each side must be positive and the area at most "
              "DIFFGEMMA_IMAGE_MAX_PIXELS (%d)", width, height, DIFFGEMMA_IMAGE_MAX_PIXELS);
    }
    const VisionHParams & hp = model.vision->hp;
    const ImageGrid grid = image_grid(width, height, hp.patch_size, hp.pooling, hp.max_soft_tokens);
    return grid.n_tokens(hp.pooling);
}

PreparedImage prepare_image(const diffgemma_model & model, const diffgemma_image & image) {
    if (model.vision == nullptr) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "%s", kNoProjector);
    }
    if (image.rgb == nullptr || image.width <= 0 || image.height <= 0) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "an image needs pixels and a positive size (got %d x %d%s)", image.width,
              image.height, image.rgb == nullptr ? ", no pixels" : "");
    }
    if (static_cast<int64_t>(image.width) * image.height > DIFFGEMMA_IMAGE_MAX_PIXELS) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "an image of %d x %d pixels exceeds DIFFGEMMA_IMAGE_MAX_PIXELS (%d)",
              image.width, image.height, DIFFGEMMA_IMAGE_MAX_PIXELS);
    }
    const VisionHParams & hp = model.vision->hp;
    PreparedImage out;
    const int32_t n = preprocess(image, hp, nullptr, nullptr, 0, &out.width, &out.height);
    const size_t row = 3ull * hp.patch_size * hp.patch_size;
    out.patches.resize(static_cast<size_t>(n) * row);
    out.positions.resize(static_cast<size_t>(n) * 2);
    if (preprocess(image, hp, out.patches.data(), out.positions.data(), n, &out.width, &out.height) != n) {
        raise(DIFFGEMMA_ERR_INTERNAL, "the image preprocessing changed its patch count between two calls");
    }
    out.grid_w = out.width / hp.patch_size;
    out.grid_h = out.height / hp.patch_size;
    const int32_t k = hp.pooling;
    if (static_cast<int64_t>(out.grid_w) * out.grid_h != n || out.grid_w % k != 0 || out.grid_h % k != 0) {
        raise(DIFFGEMMA_ERR_INTERNAL, "the image preprocessing gave %d patches for %d x %d pixels (patch %d, pooling %d)", n,
              out.width, out.height, hp.patch_size, k);
    }
    // The tower pools by rows of the patch grid: the patches must come row-major, as HF's processor writes them.
    for (int32_t i = 0; i < n; ++i) {
        if (out.positions[2 * static_cast<size_t>(i)] != i % out.grid_w || out.positions[2 * static_cast<size_t>(i) + 1] != i / out.grid_w) {
            raise(DIFFGEMMA_ERR_INTERNAL, "the image preprocessing's patch %d is not at its row-major position", i);
        }
    }
    if (out.grid_w > hp.n_pos || out.grid_h > hp.n_pos) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "an image of %d x %d patches exceeds the projector's position table (%d)",
              out.grid_w, out.grid_h, hp.n_pos);
    }
    out.n_tokens = n / (k * k);
    out.identity = image_identity(image);
    return out;
}

std::vector<float> encode_image(diffgemma_context & ctx, const PreparedImage & image) {
    const diffgemma_model & model = *ctx.model;
    if (model.vision == nullptr) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "%s", kNoProjector);
    }
    const VisionModel & vm = *model.vision;
    const VisionHParams & hp = vm.hp;
    const int32_t p = hp.patch_size;
    const size_t row = 3ull * p * p;
    const size_t n = static_cast<size_t>(image.grid_w) * static_cast<size_t>(image.grid_h);
    if (image.patches.size() != n * row || image.positions.size() != 2 * n || n == 0) {
        raise(DIFFGEMMA_ERR_INTERNAL, "encode_image: a prepared image of %zu floats and %zu positions for %d x %d patches",
              image.patches.size(), image.positions.size(), image.grid_w, image.grid_h);
    }
    // HF's (row, column, channel) patch rows, mapped to [-1, 1] (Gemma4VisionPatchEmbedder: 2 (x - 0.5)), in the
    // conv kernel's (channel, row, column) order.
    std::vector<float> patches(n * row);
    std::vector<int32_t> pos_x(n), pos_y(n);
    for (size_t i = 0; i < n; ++i) {
        const float * src = image.patches.data() + i * row;
        float * dst = patches.data() + i * row;
        for (int32_t r = 0; r < p; ++r) {
            for (int32_t c = 0; c < p; ++c) {
                for (int32_t ch = 0; ch < 3; ++ch) {
                    dst[(static_cast<size_t>(ch) * p + r) * p + c] = 2.0f * (src[(static_cast<size_t>(r) * p + c) * 3 + ch] - 0.5f);
                }
            }
        }
        pos_x[i] = image.positions[2 * i];
        pos_y[i] = image.positions[2 * i + 1];
    }
    GraphScope g(&ctx);
    VisionGraphBuilder b{hp, vm.w, g.ctx, g.gf, ctx.kernels, &model.w, ctx.gpu_graph};
    const VisionGraphInputs in = b.build(image.grid_w, image.grid_h);
    ggml_backend_sched_reset(ctx.sched);
    allocate_graph(&ctx, g.gf, "vision");
    set_graph_input(in.patches, patches.data(), patches.size() * sizeof(float));
    set_graph_input(in.pos_x, pos_x.data(), pos_x.size() * sizeof(int32_t));
    set_graph_input(in.pos_y, pos_y.data(), pos_y.size() * sizeof(int32_t));
    compute_graph(&ctx, g.gf, "vision");
    std::vector<float> out(static_cast<size_t>(ggml_nelements(in.out)));
    if (out.size() != static_cast<size_t>(image.n_tokens) * static_cast<size_t>(hp.n_embd_out)) {
        raise(DIFFGEMMA_ERR_INTERNAL, "the vision graph gave %zu floats for %d tokens", out.size(), image.n_tokens);
    }
    ggml_backend_tensor_get(in.out, out.data(), 0, out.size() * sizeof(float));
    return out;
}

}  // namespace dg
