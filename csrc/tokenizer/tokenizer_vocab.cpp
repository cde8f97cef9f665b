// Loading and validating the Gemma-4 vocabulary from the tokenizer.* keys of a GGUF (see tokenizer.h).
#include "tokenizer/tokenizer.h"

#include "core/errors.h"
#include "gguf.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace {

// Key names come from the one name table (csrc/core/gguf_names.def).
#define DG_ARCH(name)
#define DG_KEY(id, name) constexpr const char * KEY_##id = name;
#define DG_TENSOR(id, name)
#define DG_LAYER_TENSOR(id, name)
#include "core/gguf_names.def"
#undef DG_ARCH
#undef DG_KEY
#undef DG_TENSOR
#undef DG_LAYER_TENSOR

constexpr const char * kModelName = "gemma4";
constexpr const char * kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

const char * type_name(gguf_type t) {
    const char * name = gguf_type_name(t);
    return name != nullptr ? name : "?";
}

int64_t require_key(const gguf_context * ctx, const char * key) {
    const int64_t k = gguf_find_key(ctx, key);
    if (k < 0) {
        dg::raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF has no '%s' key (is this a vocab written by the diffgemma "
                  "converter or llama.cpp's convert_hf_to_gguf.py?)", key);
    }
    return k;
}

// Checks that key `k` is an array of `elem` and returns its length.
size_t require_array(const gguf_context * ctx, int64_t k, const char * key, gguf_type elem) {
    const gguf_type t = gguf_get_kv_type(ctx, k);
    if (t != GGUF_TYPE_ARRAY) {
        dg::raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' must be an array of %s, but it is a %s", key,
                  type_name(elem), type_name(t));
    }
    const gguf_type at = gguf_get_arr_type(ctx, k);
    if (at != elem) {
        dg::raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' must be an array of %s, but it is an array of %s",
                  key, type_name(elem), type_name(at));
    }
    return gguf_get_arr_n(ctx, k);
}

bool is_integer_type(gguf_type t) {
    switch (t) {
        case GGUF_TYPE_UINT8: case GGUF_TYPE_INT8: case GGUF_TYPE_UINT16: case GGUF_TYPE_INT16:
        case GGUF_TYPE_UINT32: case GGUF_TYPE_INT32: case GGUF_TYPE_UINT64: case GGUF_TYPE_INT64:
            return true;
        default:
            return false;
    }
}

int64_t integer_value(const gguf_context * ctx, int64_t k) {
    switch (gguf_get_kv_type(ctx, k)) {
        case GGUF_TYPE_UINT8:  return gguf_get_val_u8(ctx, k);
        case GGUF_TYPE_INT8:   return gguf_get_val_i8(ctx, k);
        case GGUF_TYPE_UINT16: return gguf_get_val_u16(ctx, k);
        case GGUF_TYPE_INT16:  return gguf_get_val_i16(ctx, k);
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(ctx, k);
        case GGUF_TYPE_INT32:  return gguf_get_val_i32(ctx, k);
        case GGUF_TYPE_UINT64: return static_cast<int64_t>(std::min<uint64_t>(gguf_get_val_u64(ctx, k), INT64_MAX));
        case GGUF_TYPE_INT64:  return gguf_get_val_i64(ctx, k);
        default:               return -1;
    }
}

// An optional token-id key: -1 if absent; an error if it is not an integer or not a valid id.
int32_t optional_token_id(const gguf_context * ctx, const char * key, int32_t n_tokens) {
    const int64_t k = gguf_find_key(ctx, key);
    if (k < 0) {
        return -1;
    }
    const gguf_type t = gguf_get_kv_type(ctx, k);
    if (!is_integer_type(t)) {
        dg::raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' must be an integer token id, but it is a %s", key,
                  type_name(t));
    }
    const int64_t v = integer_value(ctx, k);
    if (v < 0 || v >= n_tokens) {
        dg::raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' = %lld is not a token id (the vocab has %d tokens)",
                  key, static_cast<long long>(v), n_tokens);
    }
    return static_cast<int32_t>(v);
}

bool optional_bool(const gguf_context * ctx, const char * key, bool fallback) {
    const int64_t k = gguf_find_key(ctx, key);
    if (k < 0) {
        return fallback;
    }
    const gguf_type t = gguf_get_kv_type(ctx, k);
    if (t != GGUF_TYPE_BOOL) {
        dg::raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' must be a bool, but it is a %s", key, type_name(t));
    }
    return gguf_get_val_bool(ctx, k);
}

// Quotes a token for an error message (control bytes escaped, long tokens cut).
std::string quoted(std::string_view s) {
    std::string out = "'";
    for (size_t i = 0; i < s.size() && i < 48; ++i) {
        const unsigned char c = static_cast<unsigned char>(s[i]);
        if (c < 0x20 || c == 0x7f) {
            out += dg::format("\\x%02x", c);
        } else {
            out += static_cast<char>(c);
        }
    }
    if (s.size() > 48) {
        out += "...";
    }
    return out + "'";
}

}  // namespace

namespace dg {

Vocab::Vocab(const gguf_context * ctx) {
    if (ctx == nullptr) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "Vocab: gguf_context is NULL");
    }
    const int64_t km = require_key(ctx, KEY_TOKENIZER_MODEL);
    if (gguf_get_kv_type(ctx, km) != GGUF_TYPE_STRING) {
        raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' must be a string, but it is a %s", KEY_TOKENIZER_MODEL,
              type_name(gguf_get_kv_type(ctx, km)));
    }
    const char * model = gguf_get_val_str(ctx, km);
    if (std::strcmp(model, kModelName) != 0) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "tokenizer model '%s' is not supported (%s must be '%s', the "
              "Gemma-4 BPE vocab of DiffusionGemma)", model, KEY_TOKENIZER_MODEL, kModelName);
    }
    load_tokens(ctx);
    load_merges(ctx);
    load_special_ids(ctx);
    build_added_token_trie();
}

void Vocab::load_tokens(const gguf_context * ctx) {
    const int64_t kt = require_key(ctx, KEY_TOKENIZER_TOKENS);
    const size_t n = require_array(ctx, kt, KEY_TOKENIZER_TOKENS, GGUF_TYPE_STRING);
    if (n == 0 || n > static_cast<size_t>(INT32_MAX)) {
        raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' has %zu tokens; expected 1 .. 2^31-1",
              KEY_TOKENIZER_TOKENS, n);
    }
    texts_.resize(n);
    for (size_t i = 0; i < n; ++i) {
        texts_[i] = gguf_get_arr_str(ctx, kt, i);
    }

    // token_type is what tells added tokens (matched whole) from BPE pieces, so it is required.
    const int64_t ky = require_key(ctx, KEY_TOKENIZER_TOKEN_TYPE);
    const size_t ny = require_array(ctx, ky, KEY_TOKENIZER_TOKEN_TYPE, GGUF_TYPE_INT32);
    if (ny != n) {
        raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' has %zu entries but '%s' has %zu tokens",
              KEY_TOKENIZER_TOKEN_TYPE, ny, KEY_TOKENIZER_TOKENS, n);
    }
    const int32_t * ty = static_cast<const int32_t *>(gguf_get_arr_data(ctx, ky));
    types_.resize(n);
    for (size_t i = 0; i < n; ++i) {
        if (ty[i] < static_cast<int32_t>(TokenType::Undefined) || ty[i] > static_cast<int32_t>(TokenType::Byte)) {
            raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s': token %zu %s has type %d; valid types are 0..6",
                  KEY_TOKENIZER_TOKEN_TYPE, i, quoted(texts_[i]).c_str(), ty[i]);
        }
        types_[i] = static_cast<TokenType>(ty[i]);
    }

    // Scores are unused by BPE but a present, inconsistent array means a broken file.
    const int64_t ks = gguf_find_key(ctx, KEY_TOKENIZER_SCORES);
    if (ks >= 0) {
        const size_t ns = require_array(ctx, ks, KEY_TOKENIZER_SCORES, GGUF_TYPE_FLOAT32);
        if (ns != n) {
            raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' has %zu entries but '%s' has %zu tokens",
                  KEY_TOKENIZER_SCORES, ns, KEY_TOKENIZER_TOKENS, n);
        }
    }

    // First occurrence wins if a string repeats (HF's vocab is a map, so a converted file has no repeats).
    ids_.reserve(n * 2);
    for (size_t i = 0; i < n; ++i) {
        ids_.emplace(std::string_view(texts_[i]), static_cast<int32_t>(i));
    }
    for (int b = 0; b < 256; ++b) {
        char name[8];
        std::snprintf(name, sizeof name, "<0x%02X>", b);
        byte_ids_[b] = find(name);
    }
}

void Vocab::load_merges(const gguf_context * ctx) {
    const int64_t k = require_key(ctx, KEY_TOKENIZER_MERGES);
    const size_t n = require_array(ctx, k, KEY_TOKENIZER_MERGES, GGUF_TYPE_STRING);
    merges_.reserve(n * 2);
    std::string joined;
    for (size_t r = 0; r < n; ++r) {
        const std::string_view m = gguf_get_arr_str(ctx, k, r);
        // "left right". Gemma pieces hold no U+0020 (spaces are "▁"), so there is normally exactly one
        // separator; should a piece contain one, take the only split whose halves and join are all tokens.
        const size_t first = m.find(' ');
        if (first == std::string_view::npos) {
            raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s': merge %zu %s has no ' ' between its two tokens",
                  KEY_TOKENIZER_MERGES, r, quoted(m).c_str());
        }
        int32_t left = -1, right = -1, result = -1;
        if (m.find(' ', first + 1) == std::string_view::npos) {
            const std::string_view a = m.substr(0, first), b = m.substr(first + 1);
            left = find(a);
            right = find(b);
            if (left < 0 || right < 0) {
                raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s': merge %zu %s refers to %s, which is not a token",
                      KEY_TOKENIZER_MERGES, r, quoted(m).c_str(), quoted(left < 0 ? a : b).c_str());
            }
            joined.assign(a.data(), a.size()).append(b.data(), b.size());  // one buffer reused for every merge
            result = find(joined);
            if (result < 0) {
                raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s': merge %zu %s makes %s, which is not a token",
                      KEY_TOKENIZER_MERGES, r, quoted(m).c_str(), quoted(std::string(a) + std::string(b)).c_str());
            }
        } else {
            int n_valid = 0;
            for (size_t pos = first; pos != std::string_view::npos; pos = m.find(' ', pos + 1)) {
                const int32_t l = find(m.substr(0, pos)), rr = find(m.substr(pos + 1));
                const int32_t res = (l < 0 || rr < 0) ? -1 : find(texts_[l] + texts_[rr]);
                if (res >= 0) {
                    left = l, right = rr, result = res;
                    ++n_valid;
                }
            }
            if (n_valid != 1) {
                raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s': merge %zu %s has %s split into two tokens whose "
                      "join is a token", KEY_TOKENIZER_MERGES, r, quoted(m).c_str(),
                      n_valid == 0 ? "no" : "more than one");
            }
        }
        // A repeated pair keeps its last rank, as HF's merge map does.
        const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
        merges_[key] = Merge{static_cast<int32_t>(r), result};
    }
}

void Vocab::load_special_ids(const gguf_context * ctx) {
    const int32_t n = n_tokens();
    bos_ = optional_token_id(ctx, KEY_TOKENIZER_BOS_ID, n);
    eos_ = optional_token_id(ctx, KEY_TOKENIZER_EOS_ID, n);
    unk_ = optional_token_id(ctx, KEY_TOKENIZER_UNK_ID, n);
    pad_ = optional_token_id(ctx, KEY_TOKENIZER_PAD_ID, n);
    mask_ = optional_token_id(ctx, KEY_TOKENIZER_MASK_ID, n);
    add_bos_ = optional_bool(ctx, KEY_TOKENIZER_ADD_BOS, true);
    if (optional_bool(ctx, KEY_TOKENIZER_ADD_SPACE_PREFIX, false)) {
        raise(DIFFGEMMA_ERR_UNSUPPORTED_MODEL, "GGUF key '%s' is true, but the Gemma-4 tokenizer never adds a "
              "space prefix", KEY_TOKENIZER_ADD_SPACE_PREFIX);
    }

    const int64_t ke = gguf_find_key(ctx, KEY_TOKENIZER_EOS_IDS);
    if (ke >= 0) {
        if (gguf_get_kv_type(ctx, ke) != GGUF_TYPE_ARRAY || !is_integer_type(gguf_get_arr_type(ctx, ke)) ||
            (gguf_get_arr_type(ctx, ke) != GGUF_TYPE_INT32 && gguf_get_arr_type(ctx, ke) != GGUF_TYPE_UINT32)) {
            raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s' must be an array of int32 or uint32 token ids",
                  KEY_TOKENIZER_EOS_IDS);
        }
        const size_t ne = gguf_get_arr_n(ctx, ke);
        const void * data = gguf_get_arr_data(ctx, ke);
        for (size_t i = 0; i < ne; ++i) {
            const int64_t v = gguf_get_arr_type(ctx, ke) == GGUF_TYPE_INT32
                                  ? static_cast<const int32_t *>(data)[i]
                                  : static_cast<int64_t>(static_cast<const uint32_t *>(data)[i]);
            if (v < 0 || v >= n) {
                raise(DIFFGEMMA_ERR_BAD_FORMAT, "GGUF key '%s': entry %zu = %lld is not a token id (the vocab "
                      "has %d tokens)", KEY_TOKENIZER_EOS_IDS, i, static_cast<long long>(v), n);
            }
            eog_.push_back(static_cast<int32_t>(v));
        }
    } else {
        // Gemma 4's generation config ends on <eos>, <turn|> and <|tool_response>.
        for (const char * name : {"<turn|>", "<|tool_response>"}) {
            const int32_t id = find(name);
            if (id >= 0) {
                eog_.push_back(id);
            }
        }
    }
    if (eos_ >= 0) {
        eog_.push_back(eos_);
    }
    std::sort(eog_.begin(), eog_.end());
    eog_.erase(std::unique(eog_.begin(), eog_.end()), eog_.end());
}

void Vocab::build_added_token_trie() {
    trie_.clear();
    trie_.emplace_back();
    for (int32_t id = 0; id < n_tokens(); ++id) {
        const TokenType t = types_[static_cast<size_t>(id)];
        if ((t != TokenType::Control && t != TokenType::UserDefined && t != TokenType::Unknown) ||
            texts_[static_cast<size_t>(id)].empty()) {
            continue;
        }
        int32_t node = 0;
        for (const char ch : texts_[static_cast<size_t>(id)]) {
            const uint8_t c = static_cast<uint8_t>(ch);
            auto it = trie_[static_cast<size_t>(node)].next.find(c);
            if (it == trie_[static_cast<size_t>(node)].next.end()) {
                const int32_t child = static_cast<int32_t>(trie_.size());
                trie_[static_cast<size_t>(node)].next.emplace(c, child);
                trie_.emplace_back();
                node = child;
            } else {
                node = it->second;
            }
        }
        if (trie_[static_cast<size_t>(node)].token < 0) {
            trie_[static_cast<size_t>(node)].token = id;
        }
    }
}

int32_t Vocab::find(std::string_view text) const {
    const auto it = ids_.find(text);
    return it == ids_.end() ? -1 : it->second;
}

bool Vocab::is_eog(int32_t id) const {
    return std::binary_search(eog_.begin(), eog_.end(), id);
}

std::unique_ptr<diffgemma_vocab> load_vocab_file(const char * path) {
    if (path == nullptr) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "vocab path is NULL");
    }
    // gguf_init_from_file gives NULL both for a missing file and for a corrupt one; tell them apart first.
    FILE * f = std::fopen(path, "rb");
    if (f == nullptr) {
        raise(DIFFGEMMA_ERR_IO, "cannot open '%s': %s", path, std::strerror(errno));
    }
    std::fclose(f);
    gguf_init_params params = {/*no_alloc =*/true, /*ctx =*/nullptr};
    gguf_context * ctx = gguf_init_from_file(path, params);
    if (ctx == nullptr) {
        raise(DIFFGEMMA_ERR_BAD_FORMAT, "'%s' is not a readable GGUF file (bad magic, version or truncated "
              "metadata)", path);
    }
    struct Closer {
        gguf_context * c;
        ~Closer() { gguf_free(c); }
    } closer{ctx};
    return std::make_unique<diffgemma_vocab>(ctx);
}

}  // namespace dg
