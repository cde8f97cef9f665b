// The Gemma-4 tokenizer (GGUF `tokenizer.ggml.model = "gemma4"`), equal to Hugging Face `tokenizers` on the
// tokenizer.json the GGUF was converted from.
//
// What HF's Gemma-4 tokenizer.json does, and therefore what we do:
//   1. added tokens: CONTROL / USER_DEFINED tokens are cut out of the raw text first, leftmost-longest, and
//      emitted whole (HF's AddedVocabulary; they are `normalized: false`). With parse_special = false only
//      USER_DEFINED tokens are cut out (llama.cpp's convention; HF's `split_special_tokens`).
//   2. normalizer: every U+0020 becomes U+2581 "▁" (no space prefix, nothing else changes).
//   3. pre-tokenizer: Split(" ") after that normalizer never fires, so each stretch between added tokens is
//      ONE BPE word, newlines included.
//   4. BPE model: one symbol per character; a character that is not a token becomes its <0xNN> byte tokens
//      (byte fallback), or <unk> (fused) if one is missing; then merges by rank, lowest first, leftmost on
//      ties, exactly in the order of HF's priority queue.
// Bytes that are not valid UTF-8 (which a Python str cannot hold) are treated as one-byte characters that are
// never tokens, i.e. they always become their <0xNN> token, so every byte string round-trips.
//
// Detokenizing is byte-exact: <0xNN> -> that byte, "▁" -> " ", everything else is its text. Unlike HF's
// ByteFallback decoder we never replace invalid UTF-8 with U+FFFD; the Python layer decides how to decode.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

struct gguf_context;

namespace dg {

// llama.cpp's token types, as stored in tokenizer.ggml.token_type.
enum class TokenType : int32_t {
    Undefined   = 0,
    Normal      = 1,
    Unknown     = 2,
    Control     = 3,
    UserDefined = 4,
    Unused      = 5,
    Byte        = 6,
};

// Number of bytes at the end of s[0..n) that form the start of a UTF-8 character still waiting for its
// continuation bytes (0..3). Bytes that can never become valid UTF-8 are not counted: they are complete
// (invalid) units as far as streaming is concerned.
size_t utf8_incomplete_tail(const char * s, size_t n);

// Length (1..4) of the well-formed UTF-8 character at s[0..n), or 0 if the bytes there are not one (n > 0).
size_t utf8_char_len(const char * s, size_t n);

class Vocab {
  public:
    // Reads the tokenizer.* keys of an open GGUF (the context stays owned by the caller and may be freed
    // afterwards). Throws dg::Error: DIFFGEMMA_ERR_BAD_FORMAT for a missing key, a wrong key type, inconsistent
    // array lengths, an id out of range or a merge naming an unknown token; DIFFGEMMA_ERR_UNSUPPORTED_MODEL for a
    // tokenizer model other than "gemma4". Messages name the key and the offending entry.
    explicit Vocab(const gguf_context * ctx);

    int32_t n_tokens() const { return static_cast<int32_t>(texts_.size()); }
    int32_t bos() const { return bos_; }    // -1 if the GGUF has none
    int32_t eos() const { return eos_; }    // -1 if none
    int32_t pad() const { return pad_; }    // -1 if none
    int32_t unk() const { return unk_; }    // -1 if none
    int32_t mask() const { return mask_; }  // -1 if none
    bool add_bos() const { return add_bos_; }
    // Tokens that end generation: tokenizer.ggml.eos_token_ids if present, else eos plus <turn|> and
    // <|tool_response>; always includes eos. Sorted, unique.
    const std::vector<int32_t> & eog_ids() const { return eog_; }
    bool is_eog(int32_t id) const;

    bool valid_id(int32_t id) const { return id >= 0 && id < n_tokens(); }
    TokenType type(int32_t id) const { return types_[static_cast<size_t>(id)]; }
    const std::string & text(int32_t id) const { return texts_[static_cast<size_t>(id)]; }
    // Id of the token whose text is exactly `text` (the first one, if the vocab repeats a string), or -1.
    int32_t find(std::string_view text) const;

    // Appends the tokens of `text` to `out` (BOS first when add_bos is set and the vocab has one).
    void tokenize(std::string_view text, bool add_bos, bool parse_special, std::vector<int32_t> & out) const;

    // Appends the bytes token `id` stands for. CONTROL / UNKNOWN tokens render as their text only when
    // render_special is set (HF's skip_special_tokens = !render_special); USER_DEFINED ones always do.
    // Throws DIFFGEMMA_ERR_INVALID_ARGUMENT for an id out of range.
    void append_piece(int32_t id, bool render_special, std::string & out) const;

    std::string detokenize(const int32_t * ids, size_t n, bool render_special) const;

  private:
    struct Merge {
        int32_t rank;
        int32_t result;
    };

    void load_tokens(const gguf_context * ctx);
    void load_merges(const gguf_context * ctx);
    void load_special_ids(const gguf_context * ctx);
    void build_added_token_trie();

    // One stretch of text between added tokens: normalize, split into characters, merge.
    void tokenize_word(std::string_view raw, std::vector<int32_t> & out) const;
    // Longest added token starting at text[pos] that parse_special allows; returns its id (length in *len) or -1.
    int32_t match_added(std::string_view text, size_t pos, bool parse_special, size_t * len) const;
    const Merge * find_merge(int32_t left, int32_t right) const;

    std::vector<std::string> texts_;
    std::vector<TokenType> types_;
    std::unordered_map<std::string_view, int32_t> ids_;          // views into texts_ (never resized after load)
    std::unordered_map<uint64_t, Merge> merges_;                 // (left << 32 | right) -> rank, result
    int32_t byte_ids_[256];                                      // <0xNN> token of each byte, or -1

    // Byte trie of the added tokens (CONTROL, USER_DEFINED, UNKNOWN) for leftmost-longest matching.
    struct TrieNode {
        std::unordered_map<uint8_t, int32_t> next;
        int32_t token = -1;
    };
    std::vector<TrieNode> trie_;

    int32_t bos_ = -1, eos_ = -1, pad_ = -1, unk_ = -1, mask_ = -1;
    bool add_bos_ = true;
    std::vector<int32_t> eog_;
};

// Streaming detokenizer: turns tokens into text chunk by chunk without ever splitting a UTF-8 character
// across chunks. Bytes of a character that is still incomplete are held back until the next push (or flush).
class Detokenizer {
  public:
    Detokenizer(const Vocab & vocab, bool render_special) : vocab_(vocab), render_special_(render_special) {}

    // Adds the text of `ids` (all ids are checked before anything is added).
    void add(const int32_t * ids, size_t n);
    // Bytes that form complete characters (or can never complete) and are ready to hand out.
    size_t ready() const;
    // Appends the ready bytes to `out` and drops them from the state.
    void take(std::string & out);
    // add() + take().
    void push(const int32_t * ids, size_t n, std::string & out) {
        add(ids, n);
        take(out);
    }
    // Appends whatever is held back (bytes that can no longer complete) and resets.
    void flush(std::string & out);
    size_t pending() const { return held_.size(); }

  private:
    const Vocab & vocab_;
    bool render_special_;
    std::string held_;
};

}  // namespace dg

// The public handles are the C++ classes themselves, so a model can hand out its vocab without a copy:
// the model loader keeps a `std::unique_ptr<diffgemma_vocab>` built from its open gguf_context.
struct diffgemma_vocab final : dg::Vocab {
    using dg::Vocab::Vocab;
};

struct diffgemma_detokenizer final : dg::Detokenizer {
    using dg::Detokenizer::Detokenizer;
};

namespace dg {

// Loads only the vocabulary of a GGUF file (no tensor data). Throws dg::Error (DIFFGEMMA_ERR_IO if the file
// cannot be opened, DIFFGEMMA_ERR_BAD_FORMAT if it is not a GGUF, or any Vocab error).
std::unique_ptr<diffgemma_vocab> load_vocab_file(const char * path);

}  // namespace dg
