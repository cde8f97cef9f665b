// A prompt's images at run time: the context's images (diffgemma_set_images) matched to the prompt's runs of
// image soft tokens, and their features from the projector, computed only for the spans that are encoded.
#pragma once

#include "runtime/context.h"
#include "runtime/prompt_images.h"

#include <vector>

namespace dg {

// The image spans of tokens to be placed at [base, base + n): the context's images, matched to the runs of the
// model's image token (none when the model has no projector). Features not computed yet.
std::vector<ImageSpan> prompt_image_spans(const diffgemma_context * ctx, const int32_t * tokens, int32_t n, int32_t base);

// Runs the projector for each span without features (an image is encoded once per span).
void compute_features(diffgemma_context & ctx, std::vector<ImageSpan> & spans);

}  // namespace dg
