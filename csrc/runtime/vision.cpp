#include "runtime/vision.h"

#include "core/errors.h"
#include "graph/vision_graph.h"
#include "image/image_patches.h"
#include "runtime/context.h"

#include <cstring>
#include <utility>

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

PatchSettings patch_settings(const VisionHParams & hp) {
    PatchSettings settings;
    settings.patch_size = hp.patch_size;
    settings.pooling = hp.pooling;
    settings.max_soft_tokens = hp.max_soft_tokens;
    return settings;
}

}  // namespace

int32_t image_n_tokens(const diffgemma_model & model, int32_t width, int32_t height) {
    if (model.vision == nullptr) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "%s", kNoProjector);
    }
    return patch_grid(width, height, patch_settings(model.vision->hp)).n_soft_tokens;
}

PreparedImage prepare_image(const diffgemma_model & model, const diffgemma_image & image) {
    if (model.vision == nullptr) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "%s", kNoProjector);
    }
    const VisionHParams & hp = model.vision->hp;
    ImagePatches patches = preprocess_image(&image, patch_settings(hp));  // checks the image and the settings
    const PatchGrid & grid = patches.grid;
    PreparedImage out;
    out.width = grid.width;
    out.height = grid.height;
    out.grid_w = grid.cols;
    out.grid_h = grid.rows;
    out.n_tokens = grid.n_soft_tokens;
    out.patches = std::move(patches.pixels);
    out.positions = std::move(patches.positions);
    // The tower pools by rows of the patch grid (row-major, as HF's processor writes them) and looks the
    // coordinates up in the position tables.
    const int32_t n = grid.n_patches();
    const int32_t k = hp.pooling;
    if (grid.cols % k != 0 || grid.rows % k != 0 || out.n_tokens * k * k != n ||
        out.positions.size() != 2 * static_cast<size_t>(n)) {
        raise(DIFFGEMMA_ERR_INTERNAL, "the image preprocessing gave %d x %d patches for pooling %d", grid.cols, grid.rows, k);
    }
    for (int32_t i = 0; i < n; ++i) {
        if (out.positions[2 * static_cast<size_t>(i)] != i % grid.cols ||
            out.positions[2 * static_cast<size_t>(i) + 1] != i / grid.cols) {
            raise(DIFFGEMMA_ERR_INTERNAL, "the image preprocessing's patch %d is not at its row-major position", i);
        }
    }
    if (grid.cols > hp.n_pos || grid.rows > hp.n_pos) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "an image of %d x %d patches needs more positions than the projector's "
              "tables hold (%d)", grid.cols, grid.rows, hp.n_pos);
    }
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
