// Tokens -> bytes, whole or streamed (see tokenizer.h): HF's Replace("▁", " ") + ByteFallback + Fuse decoder,
// but byte-exact (no U+FFFD substitution).
#include "tokenizer/tokenizer.h"

#include "core/errors.h"

namespace {

int hex_value(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// HF's ByteFallback decoder turns any token spelled "<0xNN>" into that byte, whatever its type.
int byte_token_value(const std::string & t) {
    if (t.size() != 6 || t[0] != '<' || t[1] != '0' || t[2] != 'x' || t[5] != '>') return -1;
    const int hi = hex_value(t[3]), lo = hex_value(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

}  // namespace

namespace dg {

void Vocab::append_piece(int32_t id, bool render_special, std::string & out) const {
    if (!valid_id(id)) {
        raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "token id %d is out of range (the vocab has %d tokens)", id,
              n_tokens());
    }
    const TokenType t = type(id);
    // HF's skip_special_tokens drops special added tokens; <unusedN> placeholders are special too.
    if (!render_special && (t == TokenType::Control || t == TokenType::Unknown || t == TokenType::Unused)) {
        return;
    }
    const std::string & s = text(id);
    const int byte = byte_token_value(s);
    if (byte >= 0) {
        out.push_back(static_cast<char>(byte));
        return;
    }
    // "▁" -> " ". Added tokens pass through the same decoder in HF, so this applies to every token.
    for (size_t i = 0; i < s.size();) {
        if (s.compare(i, 3, "\xE2\x96\x81") == 0) {
            out.push_back(' ');
            i += 3;
        } else {
            out.push_back(s[i]);
            ++i;
        }
    }
}

std::string Vocab::detokenize(const int32_t * ids, size_t n, bool render_special) const {
    std::string out;
    for (size_t i = 0; i < n; ++i) {
        append_piece(ids[i], render_special, out);
    }
    return out;
}

void Detokenizer::add(const int32_t * ids, size_t n) {
    for (size_t i = 0; i < n; ++i) {
        if (!vocab_.valid_id(ids[i])) {
            raise(DIFFGEMMA_ERR_INVALID_ARGUMENT, "token id %d is out of range (the vocab has %d tokens)", ids[i],
                  vocab_.n_tokens());
        }
    }
    for (size_t i = 0; i < n; ++i) {
        vocab_.append_piece(ids[i], render_special_, held_);
    }
}

size_t Detokenizer::ready() const {
    return held_.size() - utf8_incomplete_tail(held_.data(), held_.size());
}

void Detokenizer::take(std::string & out) {
    const size_t n = ready();
    out.append(held_, 0, n);
    held_.erase(0, n);
}

void Detokenizer::flush(std::string & out) {
    out += held_;
    held_.clear();
}

}  // namespace dg
