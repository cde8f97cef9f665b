// C API of the image processor (issue 19). PLACEHOLDER until the preprocessing lands: refuses every call.
#include "diffgemma.h"

#include "core/errors.h"

extern "C" int32_t diffgemma_image_preprocess(const diffgemma_image *, int32_t, int32_t, int32_t, float *, int32_t *,
                                              int32_t, int32_t *, int32_t *) {
    return dg::fail(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "image preprocessing is not built yet");
}
