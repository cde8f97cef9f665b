#include "runtime/prompt_images.h"
#include "core/errors.h"

#include <algorithm>

namespace dg {

std::vector<ImageSpan> find_image_spans(const int32_t * tokens, int32_t n, int32_t base, int32_t image_token,
                                        const std::vector<std::shared_ptr<const PreparedImage>> & images,
                                        int32_t n_batch) {
    std::vector<ImageSpan> spans;
    if (image_token < 0) {
        return spans;
    }
    for (int32_t i = 0; i < n;) {
        if (tokens[i] != image_token) {
            ++i;
            continue;
        }
        int32_t j = i;
        while (j < n && tokens[j] == image_token) {
            ++j;
        }
        spans.push_back(ImageSpan{base + i, base + j, nullptr});
        i = j;
    }
    if (spans.size() != images.size()) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "the prompt has %zu run(s) of image soft tokens (id %d) but %zu image(s) "
              "were given (diffgemma_set_images; one image per run, in order)", spans.size(), image_token, images.size());
    }
    for (size_t k = 0; k < spans.size(); ++k) {
        ImageSpan & s = spans[k];
        s.image = images[k];
        const int32_t length = s.end - s.begin;
        if (length != s.image->n_tokens) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "image %zu (%dx%d) becomes %d soft tokens, but its run in the prompt "
                  "(at %d) has %d (diffgemma_image_n_tokens gives the count)", k, s.image->width, s.image->height,
                  s.image->n_tokens, s.begin - base, length);
        }
        if (length > n_batch) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "image %zu has %d soft tokens, more than one encoder chunk (n_batch = %d): "
                  "an image is encoded in one chunk, so n_batch must be at least %d", k, length, n_batch, length);
        }
    }
    return spans;
}

std::vector<uint64_t> image_identities(const std::vector<ImageSpan> & spans, int32_t n) {
    std::vector<uint64_t> ids(static_cast<size_t>(std::max(n, 0)), 0);
    for (const ImageSpan & s : spans) {
        // An identity of 0 would read as text; real hashes are never 0 in practice, but make sure.
        const uint64_t id = s.image->identity == 0 ? 1 : s.image->identity;
        for (int32_t p = std::max(s.begin, 0); p < std::min(s.end, n); ++p) {
            ids[static_cast<size_t>(p)] = id;
        }
    }
    return ids;
}

int32_t next_chunk_length(int32_t start, int32_t end, int32_t n_batch, const std::vector<ImageSpan> & spans) {
    int32_t stop = std::min(end, start + n_batch);
    for (const ImageSpan & s : spans) {
        if (s.begin < stop && s.end > stop) {  // the chunk would cut this span
            stop = s.begin > start ? s.begin : s.end;  // end before it, or (starting at it) take it whole
        }
    }
    return stop - start;
}

}  // namespace dg
