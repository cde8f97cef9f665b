// The tokenizer section of the C API (diffgemma.h): argument checks, buffer contracts, no exceptions out.
#include "diffgemma.h"
#include "core/errors.h"
#include "tokenizer/tokenizer.h"

#include <cstring>

namespace {

int32_t null_argument(const char * fn, const char * what) {
    return dg::fail(DIFFGEMMA_ERR_INVALID_ARGUMENT, "%s: %s is NULL", fn, what);
}

// Copies `bytes` into (out, capacity) under the library's buffer contract.
int32_t copy_out(const char * fn, const std::string & bytes, char * out, size_t capacity, size_t * n_out) {
    *n_out = bytes.size();
    if (bytes.size() > capacity) {
        return dg::fail(DIFFGEMMA_ERR_BUFFER_TOO_SMALL, "%s: the output needs %zu bytes but the buffer holds %zu",
                        fn, bytes.size(), capacity);
    }
    if (!bytes.empty()) {
        std::memcpy(out, bytes.data(), bytes.size());
    }
    return DIFFGEMMA_OK;
}

}  // namespace

extern "C" {

int32_t diffgemma_vocab_load(const char * gguf_path, diffgemma_vocab ** out) {
    if (out == nullptr) return null_argument(__func__, "out");
    *out = nullptr;
    if (gguf_path == nullptr) return null_argument(__func__, "gguf_path");
    return dg::guard([&]() -> int32_t {
        *out = dg::load_vocab_file(gguf_path).release();
        return DIFFGEMMA_OK;
    });
}

void diffgemma_vocab_free(diffgemma_vocab * vocab) {
    delete vocab;
}

int32_t diffgemma_vocab_n_tokens(const diffgemma_vocab * vocab) { return vocab ? vocab->n_tokens() : 0; }
int32_t diffgemma_vocab_bos(const diffgemma_vocab * vocab) { return vocab ? vocab->bos() : -1; }
int32_t diffgemma_vocab_eos(const diffgemma_vocab * vocab) { return vocab ? vocab->eos() : -1; }
int32_t diffgemma_vocab_pad(const diffgemma_vocab * vocab) { return vocab ? vocab->pad() : -1; }
int32_t diffgemma_vocab_unk(const diffgemma_vocab * vocab) { return vocab ? vocab->unk() : -1; }
int32_t diffgemma_vocab_mask(const diffgemma_vocab * vocab) { return vocab ? vocab->mask() : -1; }
int32_t diffgemma_vocab_add_bos(const diffgemma_vocab * vocab) { return vocab && vocab->add_bos() ? 1 : 0; }

int32_t diffgemma_vocab_eog_ids(const diffgemma_vocab * vocab, int32_t * out, size_t capacity, size_t * n_out) {
    if (vocab == nullptr) return null_argument(__func__, "vocab");
    if (n_out == nullptr) return null_argument(__func__, "n_out");
    const auto & ids = vocab->eog_ids();
    *n_out = ids.size();
    if (ids.size() > capacity) {
        return dg::fail(DIFFGEMMA_ERR_BUFFER_TOO_SMALL, "%s: %zu ids do not fit a buffer of %zu", __func__,
                        ids.size(), capacity);
    }
    if (!ids.empty()) {
        if (out == nullptr) return null_argument(__func__, "out");
        std::memcpy(out, ids.data(), ids.size() * sizeof(int32_t));
    }
    return DIFFGEMMA_OK;
}

int32_t diffgemma_vocab_is_eog(const diffgemma_vocab * vocab, int32_t token) {
    return vocab && vocab->is_eog(token) ? 1 : 0;
}

int32_t diffgemma_vocab_token_type(const diffgemma_vocab * vocab, int32_t token) {
    return vocab && vocab->valid_id(token) ? static_cast<int32_t>(vocab->type(token)) : -1;
}

const char * diffgemma_vocab_token_text(const diffgemma_vocab * vocab, int32_t token) {
    return vocab && vocab->valid_id(token) ? vocab->text(token).c_str() : nullptr;
}

int32_t diffgemma_vocab_find(const diffgemma_vocab * vocab, const char * text, size_t text_len) {
    if (vocab == nullptr || (text == nullptr && text_len > 0)) return -1;
    return vocab->find(std::string_view(text ? text : "", text_len));
}

int32_t diffgemma_tokenize(const diffgemma_vocab * vocab, const char * text, size_t text_len, int32_t add_bos,
                           int32_t parse_special, int32_t * out, size_t out_capacity, size_t * n_out) {
    if (vocab == nullptr) return null_argument(__func__, "vocab");
    if (n_out == nullptr) return null_argument(__func__, "n_out");
    if (text == nullptr && text_len > 0) return null_argument(__func__, "text");
    *n_out = 0;
    return dg::guard([&]() -> int32_t {
        std::vector<int32_t> ids;
        vocab->tokenize(std::string_view(text ? text : "", text_len), add_bos != 0, parse_special != 0, ids);
        *n_out = ids.size();
        if (ids.size() > out_capacity) {
            return dg::fail(DIFFGEMMA_ERR_BUFFER_TOO_SMALL, "%s: %zu tokens do not fit a buffer of %zu", __func__,
                            ids.size(), out_capacity);
        }
        if (!ids.empty()) {
            if (out == nullptr) return null_argument(__func__, "out");
            std::memcpy(out, ids.data(), ids.size() * sizeof(int32_t));
        }
        return DIFFGEMMA_OK;
    });
}

int32_t diffgemma_token_to_piece(const diffgemma_vocab * vocab, int32_t token, int32_t render_special, char * out,
                                 size_t capacity, size_t * n_out) {
    return diffgemma_detokenize(vocab, &token, 1, render_special, out, capacity, n_out);
}

int32_t diffgemma_detokenize(const diffgemma_vocab * vocab, const int32_t * tokens, size_t n_tokens,
                             int32_t render_special, char * out, size_t capacity, size_t * n_out) {
    if (vocab == nullptr) return null_argument(__func__, "vocab");
    if (n_out == nullptr) return null_argument(__func__, "n_out");
    if (tokens == nullptr && n_tokens > 0) return null_argument(__func__, "tokens");
    if (out == nullptr && capacity > 0) return null_argument(__func__, "out");
    *n_out = 0;
    return dg::guard([&]() -> int32_t {
        return copy_out(__func__, vocab->detokenize(tokens, n_tokens, render_special != 0), out, capacity, n_out);
    });
}

int32_t diffgemma_detokenizer_new(const diffgemma_vocab * vocab, int32_t render_special,
                                  diffgemma_detokenizer ** out) {
    if (out == nullptr) return null_argument(__func__, "out");
    *out = nullptr;
    if (vocab == nullptr) return null_argument(__func__, "vocab");
    return dg::guard([&]() -> int32_t {
        *out = new diffgemma_detokenizer(*vocab, render_special != 0);
        return DIFFGEMMA_OK;
    });
}

void diffgemma_detokenizer_free(diffgemma_detokenizer * detok) {
    delete detok;
}

int32_t diffgemma_detokenizer_push(diffgemma_detokenizer * detok, const int32_t * tokens, size_t n_tokens,
                                   char * out, size_t capacity, size_t * n_out) {
    if (detok == nullptr) return null_argument(__func__, "detok");
    if (n_out == nullptr) return null_argument(__func__, "n_out");
    if (tokens == nullptr && n_tokens > 0) return null_argument(__func__, "tokens");
    if (out == nullptr && capacity > 0) return null_argument(__func__, "out");
    *n_out = 0;
    return dg::guard([&]() -> int32_t {
        detok->add(tokens, n_tokens);
        *n_out = detok->ready();
        if (*n_out > capacity) {
            return dg::fail(DIFFGEMMA_ERR_BUFFER_TOO_SMALL, "%s: %zu bytes are ready but the buffer holds %zu; "
                            "call again with n_tokens = 0", __func__, *n_out, capacity);
        }
        std::string text;
        detok->take(text);
        return copy_out(__func__, text, out, capacity, n_out);
    });
}

int32_t diffgemma_detokenizer_flush(diffgemma_detokenizer * detok, char * out, size_t capacity, size_t * n_out) {
    if (detok == nullptr) return null_argument(__func__, "detok");
    if (n_out == nullptr) return null_argument(__func__, "n_out");
    if (out == nullptr && capacity > 0) return null_argument(__func__, "out");
    *n_out = detok->pending();
    if (*n_out > capacity) {
        return dg::fail(DIFFGEMMA_ERR_BUFFER_TOO_SMALL, "%s: %zu bytes are held but the buffer holds %zu",
                        __func__, *n_out, capacity);
    }
    return dg::guard([&]() -> int32_t {
        std::string text;
        detok->flush(text);
        return copy_out(__func__, text, out, capacity, n_out);
    });
}

size_t diffgemma_utf8_incomplete_tail(const char * s, size_t n) {
    return s == nullptr ? 0 : dg::utf8_incomplete_tail(s, n);
}

}  // extern "C"
