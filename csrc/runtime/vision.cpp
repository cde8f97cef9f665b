// PLACEHOLDER until the tower lands (helper branch h-vis replaces this file).
#include "runtime/vision.h"
#include "core/errors.h"

namespace dg {

PreparedImage prepare_image(const diffgemma_model &, const diffgemma_image &) {
    raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "no vision projector is loaded");
}

std::vector<float> encode_image(diffgemma_context &, const PreparedImage &) {
    raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "no vision projector is loaded");
}

}  // namespace dg
