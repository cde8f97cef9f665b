// C API of the vision projector (issue 19). PLACEHOLDER until the tower lands: no model has vision yet.
#include "diffgemma.h"

#include "core/errors.h"
#include "runtime/model.h"

extern "C" int32_t diffgemma_model_has_vision(const diffgemma_model *) { return 0; }

extern "C" int32_t diffgemma_model_image_token(const diffgemma_model * model) {
    return model != nullptr ? model->hp.image_token_id : -1;
}

extern "C" int32_t diffgemma_image_n_tokens(const diffgemma_model *, int32_t, int32_t) {
    return dg::fail(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "no vision projector is loaded");
}

extern "C" int32_t diffgemma_image_embed(diffgemma_context *, const diffgemma_image *, float *, size_t, int32_t *) {
    return dg::fail(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "no vision projector is loaded");
}
