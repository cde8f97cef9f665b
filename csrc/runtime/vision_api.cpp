// C API of the vision projector (issue 19). PLACEHOLDER until the tower lands: no model has vision yet.
#include "diffgemma.h"

#include "core/errors.h"

extern "C" int32_t diffgemma_model_has_vision(const diffgemma_model *) { return 0; }

extern "C" int32_t diffgemma_model_image_token(const diffgemma_model *) { return -1; }

extern "C" int32_t diffgemma_image_n_tokens(const diffgemma_model *, int32_t, int32_t) {
    return dg::fail(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "no vision projector is loaded");
}

extern "C" int32_t diffgemma_set_images(diffgemma_context *, const diffgemma_image *, int32_t n_images) {
    if (n_images == 0) {
        return DIFFGEMMA_OK;
    }
    return dg::fail(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "no vision projector is loaded");
}

extern "C" int32_t diffgemma_image_embed(diffgemma_context *, const diffgemma_image *, float *, size_t, int32_t *) {
    return dg::fail(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "no vision projector is loaded");
}
