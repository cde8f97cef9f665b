#include "runtime/image_prompt.h"
#include "core/errors.h"
#include "runtime/vision.h"

#include <memory>

namespace dg {

std::vector<ImageSpan> prompt_image_spans(const diffgemma_context * c, const int32_t * tokens, int32_t n, int32_t base) {
    const int32_t image_token = diffgemma_model_has_vision(c->model) ? c->model->hp.image_token_id : -1;
    return find_image_spans(tokens, n, base, image_token, c->images, c->n_batch);
}

void compute_features(diffgemma_context & ctx, std::vector<ImageSpan> & spans) {
    for (ImageSpan & s : spans) {
        if (s.features == nullptr) {
            s.features = std::make_shared<const std::vector<float>>(encode_image(ctx, *s.image));
        }
    }
}

}  // namespace dg

extern "C" {

int32_t diffgemma_encode(diffgemma_context * ctx, const int32_t * tokens, int32_t n_tokens) {
    if (ctx == nullptr || (tokens == nullptr && n_tokens > 0) || n_tokens < 0) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_encode: bad arguments");
    }
    return dg::exclusive_call(ctx, dg::CallKind::kTouchesCache, [&] {
    std::vector<dg::ImageSpan> spans = dg::prompt_image_spans(ctx, tokens, n_tokens, ctx->n_past);
    dg::compute_features(*ctx, spans);
    dg::encode_tokens(ctx, tokens, n_tokens, spans);
    });
}

int32_t diffgemma_set_images(diffgemma_context * ctx, const diffgemma_image * images, int32_t n_images) {
    if (ctx == nullptr || n_images < 0 || (images == nullptr && n_images > 0)) {
        return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "diffgemma_set_images: bad arguments (ctx NULL, n_images %d)", n_images);
    }
    return dg::exclusive_call(ctx, dg::CallKind::kTouchesCache, [&] {
    std::vector<std::shared_ptr<const dg::PreparedImage>> prepared;
    for (int32_t i = 0; i < n_images; ++i) {
        try {
            prepared.push_back(std::make_shared<const dg::PreparedImage>(dg::prepare_image(*ctx->model, images[i])));
        } catch (dg::Error & e) {
            e.message = dg::format("image %d: %s", i, e.message.c_str());
            throw;
        }
    }
    ctx->images = std::move(prepared);  // only when all of them are good
    });
}

}  // extern "C"
