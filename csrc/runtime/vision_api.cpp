// C API of the vision projector (issue 19): has_vision, image_token, image_n_tokens, image_embed.
// diffgemma_set_images is the encoder integration's (context.cpp).
#include "diffgemma.h"

#include "core/errors.h"
#include "runtime/context.h"
#include "runtime/model.h"
#include "runtime/vision.h"

#include <cstring>

extern "C" int32_t diffgemma_model_has_vision(const diffgemma_model * model) {
    return model != nullptr && model->vision != nullptr ? 1 : 0;
}

extern "C" int32_t diffgemma_model_image_token(const diffgemma_model * model) {
    return model != nullptr ? model->hp.image_token_id : -1;  // resolved once at load (model.cpp)
}

extern "C" int32_t diffgemma_image_n_tokens(const diffgemma_model * model, int32_t width, int32_t height) {
    if (model == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_image_n_tokens: model must not be NULL");
    }
    return dg::guard([&]() -> int32_t { return dg::image_n_tokens(*model, width, height); });  // checks the projector
}

extern "C" int32_t diffgemma_image_embed(diffgemma_context * ctx, const diffgemma_image * image, float * out,
                                         size_t capacity, int32_t * n_tokens) {
    if (ctx == nullptr || image == nullptr) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_image_embed: ctx and image must not be NULL");
    }
    if (n_tokens != nullptr) {
        *n_tokens = 0;
    }
    // Runs a graph on the context's scheduler, whose buffers the cache's passes share: not during a generation.
    return dg::exclusive_call(ctx, dg::CallKind::kTouchesCache, [&] {
        const dg::PreparedImage prepared = dg::prepare_image(*ctx->model, *image);
        if (n_tokens != nullptr) {
            *n_tokens = prepared.n_tokens;
        }
        const size_t need = static_cast<size_t>(prepared.n_tokens) * static_cast<size_t>(ctx->model->hp.n_embd);
        if (out == nullptr || capacity < need) {
            dg::raise(DIFFGEMMA_ERR_BUFFER_TOO_SMALL, "diffgemma_image_embed needs %zu floats (%d tokens x %d), capacity is %zu",
                      need, prepared.n_tokens, ctx->model->hp.n_embd, out == nullptr ? 0 : capacity);
        }
        const std::vector<float> features = dg::encode_image(*ctx, prepared);
        std::memcpy(out, features.data(), need * sizeof(float));
    });
}
