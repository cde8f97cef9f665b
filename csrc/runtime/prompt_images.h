// Where a prompt's images go: its runs of image soft tokens, each matched to one of the context's images, and
// what the encoder needs of them (which positions, whose features, what the prefix cache may keep).
#pragma once

#include "runtime/prepared_image.h"

#include <cstdint>
#include <memory>
#include <vector>

namespace dg {

// One image's soft tokens at positions [begin, end) of the cache, and the projector's output for them once
// computed (kept with the cached span, so re-encoding it after a deep rewind does not run the tower again).
struct ImageSpan {
    int32_t begin = 0;
    int32_t end = 0;
    std::shared_ptr<const PreparedImage> image;
    std::shared_ptr<const std::vector<float>> features;  // n_tokens * n_embd, or null until computed
};

// The image spans of tokens[0..n) placed at positions [base, base + n): the i-th run of `image_token` is
// images[i]. Throws DIFFGEMMA_ERR_INVALID_ARGUMENT when the runs and the images disagree (count, a run's
// length) or a run does not fit one encoder chunk of n_batch. image_token < 0 (no vision): no spans.
std::vector<ImageSpan> find_image_spans(const int32_t * tokens, int32_t n, int32_t base, int32_t image_token,
                                        const std::vector<std::shared_ptr<const PreparedImage>> & images,
                                        int32_t n_batch);

// Per position of [0, n): the identity of the image whose soft token it is, 0 for text.
std::vector<uint64_t> image_identities(const std::vector<ImageSpan> & spans, int32_t n);

// The length of the next encoder chunk starting at `start` (< end): at most n_batch, and never through an
// image span (its tokens see each other, so a span is encoded in one chunk).
int32_t next_chunk_length(int32_t start, int32_t end, int32_t n_batch, const std::vector<ImageSpan> & spans);

}  // namespace dg
